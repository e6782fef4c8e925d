#!/usr/bin/env bash
# Bench-only: AIMET-onnx 2.42 in its own venv OUTSIDE the repo, for bench/peers_aimet.py.
# Never a dependency of aimetcli; CI does not run this. Idempotent: a stamp file skips a finished install.
# torch comes from the local CPU wheel (torch==2.13.0); a plain `torch` would pull several GB of CUDA.
# aimet-onnx is installed with --no-deps and its Requires-Dist by hand, leaving out onnx2torch (it would pull
# a torch of its own choosing). Checked by importing every aimet_onnx module: only aimet_onnx.adascale (and
# its old alias experimental.adascale) needs onnx2torch; quantsim, fold, CLE, AdaRound, SeqMSE and the
# quant analyzer import and run without it.
set -euo pipefail
VENV="${AIMET_VENV:-/work/venv-aimet}"
WHEEL_DIR="${AIMET_WHEEL_DIR:-/tmp/aimetwheel}"
STAMP="$VENV/.aimet-peer-installed"
if [ -f "$STAMP" ]; then
    echo "AIMET peer venv ready: $VENV"
    exit 0
fi
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --quiet --upgrade pip
"$PIP" install --quiet torch==2.13.0
if ls "$WHEEL_DIR"/aimet_onnx-2.42.0-*.whl >/dev/null 2>&1; then
    "$PIP" install --quiet --no-deps "$WHEEL_DIR"/aimet_onnx-2.42.0-*.whl
else
    "$PIP" install --quiet --no-deps aimet-onnx==2.42.0
fi
# aimet-onnx 2.42.0's Requires-Dist (METADATA) without torch (above) and onnx2torch; none of these pulls torch.
# onnx/onnxruntime pinned to the versions of aimetcli's own venv so both sides run the same runtime.
"$PIP" install --quiet Jinja2 PyYAML 'bokeh>=3.3.0' 'hvplot>=0.10.0' jsonschema numpy \
    onnx==1.23.2 'onnx_ir>=0.1.16' onnxruntime==1.32.0 'onnxscript>=0.4.0' osqp pandas psutil pybind11 \
    scikit-learn scipy tqdm
"$VENV/bin/python" -c "import aimet_onnx, torch; from aimet_onnx.quantsim import QuantizationSimModel; print('aimet_onnx ok, torch', torch.__version__)"
touch "$STAMP"
