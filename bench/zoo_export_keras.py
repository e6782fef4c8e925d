"""Convert Keras' MobileNetV2 to ONNX with tf2onnx for the zoo (runs in .venv-zoo-tf: tensorflow-cpu, tf2onnx).

``keras.applications.MobileNetV2(weights=None)``: random weights (nothing downloaded),
seeded. Its BatchNormalization moving statistics are then measured on real photos:
training-mode passes over 224 x 224 crops of scikit-image's calibration photos scaled as
Keras' ``mobilenet_v2.preprocess_input`` does (x / 127.5 - 1), each layer's momentum set
to i / (i + 1) at pass i so that moving = the average of the passes' batch statistics
(Keras: moving = momentum * moving + (1 - momentum) * batch), as bench/zoo_export.py's
momentum None does in torch. Converted by ``tf2onnx.convert.from_function`` (from_keras
does not take Keras 3 models) at opset 17: input ``input`` [N, 224, 224, 3] (NHWC, as
Keras takes it; tf2onnx puts the Transposes in), output ``logits`` [N, 1000] (softmax
probabilities: Keras' classifier_activation).

    .venv-zoo-tf/bin/python bench/zoo_export_keras.py --arch MobileNetV2 -o out.onnx
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

import zoo_data  # noqa: E402
from zoo_models import HALF  # noqa: E402

BN_BATCHES = 8
BN_BATCH = 16
OPSET = 17


def with_photo_statistics(model: keras.Model, x: np.ndarray) -> keras.Model:
    """``model`` with every BatchNormalization's moving mean/var the average over the passes of ``x``."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for i in range(BN_BATCHES):
        for bn in bns:
            bn.momentum = i / (i + 1)
        model(x[i * BN_BATCH:(i + 1) * BN_BATCH], training=True)
    return model


def export(arch: str, out: Path) -> None:
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, arch)(weights=None)
    nchw = zoo_data.photo_crops(BN_BATCHES * BN_BATCH, 7, zoo_data.CALIB_PHOTOS, 224, HALF, HALF)
    with_photo_statistics(model, np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)))
    spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input"),)
    fn = tf.function(lambda x: {"logits": model(x, training=False)}, input_signature=spec)
    tmp = out.with_suffix(".tmp.onnx")
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET, output_path=str(tmp))
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="MobileNetV2", help="a keras.applications model")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    export(args.arch, args.output)


if __name__ == "__main__":
    main()
