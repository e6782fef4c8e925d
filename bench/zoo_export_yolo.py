"""Export ultralytics' YOLOv8n for the zoo (runs in the torch venv, .venv-zoo-torch, with ultralytics).

The network is built from the yaml that ships inside the ultralytics package
(``yolov8n.yaml``: random weights, nothing downloaded; ultralytics runs offline,
YOLO_OFFLINE=1), seeded. Its BatchNorm running statistics are then measured on real
photos as bench/zoo_export.py does for timm: momentum None (a cumulative average),
train-mode passes over 640 x 640 crops of scikit-image's calibration photos scaled to
[0, 1] (ultralytics' own preprocessing), then eval mode.

A fresh head scores every anchor near its class-bias prior, log(5 / 80 / (640 / stride)^2):
sigmoid scores of 1e-5 to 2e-4 on most photos, nothing like a trained detector's few boxes
above ultralytics' conf=0.25 over a background near 0. One constant is added to every
class bias (the three levels keep their relative priors) so that on the median BN photo
ANCHORS_ABOVE_CONF anchors score at least 0.25 (ultralytics' NMS merges them into fewer
boxes; the median, since a random network answers a few saturated photos, such as
scikit-image's colour wheel, with scores of 1 everywhere): scores then span [0, 1] as a
trained model's do (unshifted, an 8-bit grid over [0, 1] would round nearly all to 0).

Exported by ultralytics' own exporter (``format="onnx"``, dynamic=True: batch and
spatial dims, no onnxslim, opset of its choosing): input ``images`` [N, 3, H, W],
output ``output0`` [N, 84, anchors]: per anchor the box (cx, cy, w, h in input pixels)
and 80 sigmoid class scores, ending in the Concat of the two.

    .venv-zoo-torch/bin/python bench/zoo_export_yolo.py --arch yolov8n.yaml -o out.onnx
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics reads its settings

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402

import zoo_data  # noqa: E402

BN_BATCHES = 4
BN_BATCH = 8
CONF = 0.25  # ultralytics' predict default
ANCHORS_ABOVE_CONF = 30  # per image, of 8400 at 640 x 640


def with_photo_statistics(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """``model`` with every BatchNorm's running mean/var measured on the photo crops ``x``, in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(BN_BATCHES):
            model(x[i * BN_BATCH:(i + 1) * BN_BATCH])
    return model.eval()


def shift_class_bias(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Add one constant to every class bias of the Detect head so that ANCHORS_ABOVE_CONF anchors of
    the median image of ``x`` score >= CONF (best class per anchor); returns the constant."""
    head = model.model[-1]
    with torch.no_grad():
        scores = torch.cat([model(x[i:i + BN_BATCH])[0][:, 4:] for i in range(0, len(x), BN_BATCH)])
        best = torch.logit(scores.amax(1).double())  # [images, anchors]; saturated scores give +-inf: only ranks matter
        nth = torch.sort(best, 1, descending=True).values[:, ANCHORS_ABOVE_CONF - 1]
        shift = float(torch.logit(torch.tensor(CONF, dtype=torch.float64)) - nth.median())
        for branch in head.cv3:
            branch[-1].bias[:head.nc] += shift
    return shift


def export(yaml: str, out: Path) -> None:
    torch.manual_seed(0)
    yolo = YOLO(yaml)  # the yaml inside the package: a new network, random weights
    x = torch.from_numpy(zoo_data.photo_crops(BN_BATCHES * BN_BATCH, 7, zoo_data.CALIB_PHOTOS, zoo_data.YOLO_SIDE,
                                              (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    with_photo_statistics(yolo.model, x)
    print(f"class bias shifted by {shift_class_bias(yolo.model, x):+.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        # the exporter writes next to the model's file name: give it a temporary one
        yolo.model.pt_path = str(Path(tmp) / "yolov8n.pt")
        yolo.ckpt_path = yolo.model.pt_path
        written = Path(yolo.export(format="onnx", imgsz=zoo_data.YOLO_SIDE, dynamic=True, simplify=False,
                                   device="cpu"))
        tmp_out = out.with_suffix(".tmp.onnx")
        shutil.copyfile(written, tmp_out)
        os.replace(tmp_out, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="yolov8n.yaml", help="an ultralytics model yaml shipped with the package")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    export(args.arch, args.output.resolve())


if __name__ == "__main__":
    main()
