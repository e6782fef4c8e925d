"""Export one timm classifier to ONNX for the zoo (runs in the torch venv, .venv-zoo-torch).

Random weights (``pretrained=False``: no hub download), seeded; the BatchNorm running
statistics are then measured on real photos: BN momentum set to None (a cumulative
average), train-mode forward passes over random crops of scikit-image's calibration
photos (zoo_data.CALIB_PHOTOS; seed 7: other crops than the zoo's calibration and
evaluation ones), then eval mode. Exported
with ``torch.onnx.export``: ``--exporter torchscript`` is dynamo=False, opset 17,
do_constant_folding=False; ``--exporter dynamo`` is dynamo=True. Input ``x``
[N, 3, 224, 224] with a dynamic batch, output ``logits``.

    .venv-zoo-torch/bin/python bench/zoo_export.py --arch resnet18 --exporter dynamo -o out.onnx
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import timm
import torch

import zoo_data

BN_BATCHES = 8
BN_BATCH = 16


def with_photo_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every BatchNorm's running mean/var measured on photo crops, in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    if bns:
        model.train()
        x = torch.from_numpy(zoo_data.photo_crops(BN_BATCHES * BN_BATCH, 7, zoo_data.CALIB_PHOTOS))
        with torch.no_grad():
            for i in range(BN_BATCHES):
                model(x[i * BN_BATCH:(i + 1) * BN_BATCH])
    return model.eval()


def export(arch: str, exporter: str, out: Path) -> None:
    torch.manual_seed(0)
    model = with_photo_statistics(timm.create_model(arch, pretrained=False))
    x = torch.from_numpy(zoo_data.photo_crops(2, 3, zoo_data.CALIB_PHOTOS))
    tmp = out.with_suffix(".tmp.onnx")
    if exporter == "dynamo":
        batch = torch.export.Dim("N", min=1, max=1024)
        torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: batch}}, external_data=False)
    else:
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=17, do_constant_folding=False,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, help="timm model name")
    ap.add_argument("--exporter", choices=("torchscript", "dynamo"), required=True)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    export(args.arch, args.exporter, args.output)


if __name__ == "__main__":
    main()
