#!/usr/bin/env python3
"""Build the sample ONNX models and data sets used by aimetcli's tests and docs.

Trains three small CNNs on Fashion-MNIST and exports them to ONNX (opset 13,
legacy TorchScript exporter, BatchNormalization kept in the graph):

* ``mobilenetv2_fmnist.onnx``  - MobileNetV2-style (inverted residuals, ReLU6)
* ``resnet_fmnist.onnx``       - ResNet-style (BasicBlocks, 1x1 downsample paths)
* ``shufflenetv2_fmnist.onnx`` - ShuffleNetV2-style (channel split / shuffle)

and writes the data sets

* ``calib.npz`` - ``input``: the first 1,000 training images (file order),
  ``label``: their labels
* ``eval.npz``  - ``input``: the first 2,000 test (t10k) images (file order),
  ``label``: their labels

Images are float32 [N, 1, 28, 28], normalised as (x/255 - 0.2860) / 0.3530;
labels are int64.

After export every model is evaluated with onnxruntime (CPU, graph
optimisations disabled) on eval.npz and on the full 10k test set; the results
are printed and written to ``<out>/metrics.json``.

Requirements: torch (optional extra; use the CPU wheel torch==2.13.0), onnx,
numpy, onnxruntime.

Run::

    python sample_models/build.py [--out sample_models]

Other options: ``--models resnet,shufflenetv2`` builds only some models
(metrics.json is merged, so two processes can train different models at the
same time), ``--data DIR`` points at the Fashion-MNIST IDX files,
``--epochs N`` overrides the per-model epoch count, ``--limit N`` trains on
the first N images only (smoke test).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

MEAN = 0.2860
STD = 0.3530
SEED = 0
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
MODEL_NAMES = ("mobilenetv2", "resnet", "shufflenetv2")


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
              0x0D: ">f4", 0x0E: ">f8"}
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    return arr.reshape(dims)


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 images [N,28,28], int64 labels [N]) for 'train' or 't10k'."""
    images = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    assert images.shape[0] == labels.shape[0]
    return images, labels


def normalise(images_u8: np.ndarray) -> np.ndarray:
    x = images_u8.astype(np.float32) / 255.0
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32)


# --------------------------------------------------------------------------
# models (torch imported lazily so that --help works without it)
# --------------------------------------------------------------------------

def make_model(name: str, **kwargs):
    import torch
    import torch.nn as nn

    def conv_bn(cin, cout, k, s=1, groups=1):
        return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout)]

    # ---------------- MobileNetV2-style ----------------
    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            self.conv = nn.Sequential(
                *conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True),
                *conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                *conv_bn(hidden, cout, 1),
            )

        def forward(self, x):
            if self.use_res:
                return x + self.conv(x)
            return self.conv(x)

    class MobileNetV2(nn.Module):
        # (expand t, out channels c, repeats n, first stride s), input 28x28
        default_cfg = [(3, 24, 1, 2), (4, 24, 1, 1), (4, 32, 1, 2), (4, 32, 2, 1),
                       (4, 64, 2, 1)]

        def __init__(self, num_classes=10, stem=16, last=256, cfg=None):
            super().__init__()
            self.cfg = cfg or self.default_cfg
            layers = [*conv_bn(1, stem, 3), nn.ReLU6(inplace=True)]
            cin = stem
            for t, c, n, s in self.cfg:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers += [*conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(last, num_classes)

        def forward(self, x):
            x = self.pool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    # ---------------- ResNet-style ----------------
    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                # bn2.bias and downsample BN bias get identical gradients (they
                # are summed before the ReLU); if both start at 0 they stay
                # bit-identical and the legacy exporter de-duplicates them into
                # an Identity node.  A small fixed offset keeps them distinct.
                with torch.no_grad():
                    self.downsample[1].bias.fill_(0.01)
                    self.bn2.bias.fill_(-0.01)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, num_classes=10, widths=(16, 32, 64)):
            super().__init__()
            self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = BasicBlock(widths[0], widths[0], 1)   # 28x28
            self.layer2 = BasicBlock(widths[0], widths[1], 2)   # 14x14
            self.layer3 = BasicBlock(widths[1], widths[2], 2)   # 7x7
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(widths[2], num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    # ---------------- ShuffleNetV2-style ----------------
    # Channel counts and spatial sizes are Python ints fixed at construction
    # time (the models only take 28x28 input), so that the legacy exporter
    # writes constant Reshape shapes / Split sizes instead of Shape->Gather->Div
    # integer arithmetic (which x.shape / torch.chunk would produce).
    def channel_shuffle(x, groups, c, h, w):
        x = x.view(-1, groups, c // groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(-1, c, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride, out_hw):
            super().__init__()
            self.stride = stride
            self.cout, self.out_hw = cout, out_hw
            bf = cout // 2
            self.split_sizes = [bf, bf]
            if stride > 1:
                self.branch1 = nn.Sequential(
                    *conv_bn(cin, cin, 3, stride, groups=cin),
                    *conv_bn(cin, bf, 1), nn.ReLU(inplace=True))
                b2_in = cin
            else:
                assert cin == cout
                self.branch1 = None
                b2_in = bf
            self.branch2 = nn.Sequential(
                *conv_bn(b2_in, bf, 1), nn.ReLU(inplace=True),
                *conv_bn(bf, bf, 3, stride, groups=bf),
                *conv_bn(bf, bf, 1), nn.ReLU(inplace=True))

        def forward(self, x):
            if self.stride == 1:
                # == x.chunk(2, dim=1), but exports as a single Split node
                x1, x2 = torch.split(x, self.split_sizes, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return channel_shuffle(out, 2, self.cout, self.out_hw, self.out_hw)

    class ShuffleNetV2(nn.Module):
        def __init__(self, num_classes=10, stem=24, stages=(64, 128), repeats=(3, 3),
                     last=256):
            super().__init__()
            self.conv1 = nn.Sequential(*conv_bn(1, stem, 3), nn.ReLU(inplace=True))  # 28x28
            units = []
            cin, hw = stem, 28
            for cout, n in zip(stages, repeats):
                hw = (hw + 1) // 2
                units.append(ShuffleUnit(cin, cout, 2, hw))
                units += [ShuffleUnit(cout, cout, 1, hw) for _ in range(n - 1)]
                cin = cout
            self.stages = nn.Sequential(*units)                 # 14x14, 7x7
            self.conv5 = nn.Sequential(*conv_bn(cin, last, 1), nn.ReLU(inplace=True))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(last, num_classes)

        def forward(self, x):
            x = self.conv5(self.stages(self.conv1(x)))
            return self.fc(torch.flatten(self.pool(x), 1))

    ctor = {"mobilenetv2": MobileNetV2, "resnet": ResNet, "shufflenetv2": ShuffleNetV2}[name]
    return ctor(**kwargs)


# Per-model training settings (epochs, peak learning rate of OneCycle/AdamW).
TRAIN_CFG = {
    "mobilenetv2": {"epochs": 6, "lr": 4e-3},
    "resnet": {"epochs": 8, "lr": 4e-3},
    "shufflenetv2": {"epochs": 6, "lr": 4e-3},
}


def count_macs(model, torch) -> int:
    """Multiply-accumulates of Conv/Linear layers for one 1x28x28 image."""
    import torch.nn as nn
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            macs += out.numel() * k
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, 1, 28, 28))
    for h in hs:
        h.remove()
    return macs


def train(name, train_u8, train_y, test_x, test_y, epochs, lr, batch=128, log=print):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = make_model(name)
    n_params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, torch)
    log(f"[{name}] params={n_params} MACs/image={macs / 1e6:.2f}M epochs={epochs} lr={lr}")

    # Pad the raw images once (with 0 = black background) for random crops.
    pad = 2
    padded = np.pad(normalise(train_u8), ((0, 0), (0, 0), (pad, pad), (pad, pad)),
                    constant_values=np.float32((0.0 - MEAN) / STD))
    padded = torch.from_numpy(padded)
    labels = torch.from_numpy(train_y)
    n = padded.shape[0]
    steps_per_epoch = (n + batch - 1) // batch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25)
    ar = torch.arange(28)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(n))
        tot_loss, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            b = idx.numel()
            oy = torch.from_numpy(rng.integers(0, 2 * pad + 1, b))
            ox = torch.from_numpy(rng.integers(0, 2 * pad + 1, b))
            rows = (oy[:, None] + ar)[:, :, None]          # [b,28,1]
            cols = (ox[:, None] + ar)[:, None, :]          # [b,1,28]
            flip = torch.from_numpy(rng.random(b) < 0.5)
            cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
            xb = padded[idx[:, None, None], 0, rows, cols].unsqueeze(1)
            yb = labels[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * b
            correct += (out.argmax(1) == yb).sum().item()
            seen += b
            if (i + 1) % 100 == 0:
                log(f"[{name}] epoch {ep + 1}/{epochs} step {i + 1}/{steps_per_epoch} "
                    f"loss={tot_loss / seen:.4f} acc={correct / seen:.4f} "
                    f"t={time.time() - t0:.0f}s")
        acc = evaluate_torch(model, test_x, test_y)
        log(f"[{name}] epoch {ep + 1} done: train_loss={tot_loss / seen:.4f} "
            f"train_acc={correct / seen:.4f} test_acc={acc:.4f} t={time.time() - t0:.0f}s")
    train_time = time.time() - t0
    model.eval()
    return model, {"params": int(n_params), "macs_per_image": int(macs),
                   "epochs": epochs, "lr": lr, "batch": batch,
                   "train_seconds": round(train_time, 1)}


def evaluate_torch(model, x, y, batch=250):
    import torch
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(torch.from_numpy(x[i:i + batch]))
            correct += int((out.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / len(x)


def export(model, path: Path):
    import torch
    import warnings
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export" - intended here
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, x, str(path), dynamo=False, do_constant_folding=False,
                          opset_version=13, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def onnx_summary(path: Path) -> dict:
    import onnx
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = Counter(n.op_type for n in m.graph.node)
    n_init = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    return {"opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
            "op_counts": dict(sorted(ops.items())), "initializer_elements": n_init,
            "num_nodes": len(m.graph.node), "file_bytes": path.stat().st_size}


def evaluate_onnx(path: Path, x: np.ndarray, y: np.ndarray, batch=500) -> float:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(x), batch):
        (logits,) = sess.run(["logits"], {"input": x[i:i + batch]})
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


def save_npz(path: Path, **arrays) -> None:
    """np.savez_compressed, written atomically (parallel runs write the same file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent),
                    help="output folder (default: the folder of this script)")
    ap.add_argument("--data", default=os.environ.get("FMNIST_DIR", DEFAULT_DATA),
                    help="folder with the Fashion-MNIST *-ubyte.gz files")
    ap.add_argument("--models", default=",".join(MODEL_NAMES),
                    help="comma-separated subset of " + ",".join(MODEL_NAMES))
    ap.add_argument("--epochs", type=int, default=None, help="override epochs")
    ap.add_argument("--limit", type=int, default=None,
                    help="train on the first N training images only (smoke test)")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("build.py needs torch (CPU wheel torch==2.13.0)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    np.random.seed(SEED)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    for nm in names:
        if nm not in MODEL_NAMES:
            ap.error(f"unknown model {nm!r}")

    train_u8, train_y = load_split(data, "train")
    test_u8, test_y = load_split(data, "t10k")
    test_x = normalise(test_u8)
    print(f"train {train_u8.shape} test {test_u8.shape}", flush=True)

    calib_x, calib_y = normalise(train_u8[:1000]), train_y[:1000].copy()
    eval_x, eval_y = test_x[:2000].copy(), test_y[:2000].copy()
    save_npz(out / "calib.npz", input=calib_x, label=calib_y)
    save_npz(out / "eval.npz", input=eval_x, label=eval_y)
    print(f"wrote {out / 'calib.npz'} {calib_x.shape} and {out / 'eval.npz'} {eval_x.shape}",
          flush=True)

    if args.limit:
        train_u8, train_y = train_u8[:args.limit], train_y[:args.limit]

    def log(msg):
        print(msg, flush=True)

    metrics_path = out / "metrics.json"
    results = {}
    for name in names:
        cfg = TRAIN_CFG[name]
        epochs = args.epochs or cfg["epochs"]
        model, info = train(name, train_u8, train_y, test_x, test_y, epochs, cfg["lr"], log=log)
        info["torch_test_top1"] = evaluate_torch(model, test_x, test_y)
        path = out / f"{name}_fmnist.onnx"
        export(model, path)
        summ = onnx_summary(path)
        if summ["op_counts"].get("BatchNormalization", 0) == 0:
            raise RuntimeError(f"{path}: exporter folded all BatchNormalization nodes")
        if summ["op_counts"].get("Identity", 0):
            raise RuntimeError(f"{path}: exporter de-duplicated initializers into "
                               "Identity nodes")
        info.update(summ)
        info["onnx_eval_top1"] = evaluate_onnx(path, eval_x, eval_y)
        info["onnx_test10k_top1"] = evaluate_onnx(path, test_x, test_y)
        info["torch_version"] = torch.__version__
        log(f"[{name}] exported {path} ({summ['file_bytes']} bytes) ops={summ['op_counts']}")
        log(f"[{name}] onnxruntime top-1: eval.npz={info['onnx_eval_top1']:.4f} "
            f"test10k={info['onnx_test10k_top1']:.4f}")
        results[name] = info

        # Merge into metrics.json (other processes may be building other models).
        merged = {}
        if metrics_path.exists():
            try:
                merged = json.loads(metrics_path.read_text())
            except json.JSONDecodeError:
                merged = {}
        merged[name] = info
        tmp = metrics_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, metrics_path)

    for name, info in results.items():
        print(f"{name:14s} params={info['params']:>7d} eval.npz={info['onnx_eval_top1']:.4f} "
              f"test10k={info['onnx_test10k_top1']:.4f} train={info['train_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
