"""The onnxruntime boundary: every session aimetcli runs is a :class:`Session` of this module.

Nothing else in the package imports onnxruntime (ruff's banned-api rule, pyproject.toml). A
Session owns what running a graph involves beside the graph: the session options, chosen by a
named :class:`Policy` rather than loose knobs; the big weights handed over as arrays beside the
protobuf, or fed as inputs with every run (:func:`_feed_matmul_weights`); the conversion of
float feeds to the float type each input takes; and onnxruntime's errors, turned into one line.
The rules for how many samples one run takes (:func:`reduction_run_size`,
:func:`histogram_run_size`, :func:`correction_run_size`) live here too, with the measurements
behind each knob.

Policies (what the session is for decides its options):

- MEASURE: the FP32 model, or graphs built on it for statistics (reductions, means, moments):
  every graph optimization, since only the numbers that leave the session matter.
- SIMULATE: a QDQ sim emulated in float, exactly as numpy computes it: no optimization
  (onnxruntime's QDQ rewrites are integer kernels, not the simulation; equivalence tests need it).
  What depends on initializers alone (the weights' QDQ, the bias grid) is computed once, by the
  same kernels, and fed with every run (aimetcli/constant_part.py): the same bits, less work.
- LOAD: the model exactly as written, no optimization: the check that what a command writes
  loads on stock onnxruntime (nothing run, so nothing cut off).
- FOLD_CONSTANTS: constant folding only (ORT_ENABLE_BASIC): QDQ pairs stay float emulation.
- DEPLOY: what a deployment runs, every optimization: QDQ pairs fuse into integer kernels.
- ADVISED: DEPLOY with the session options export tells a user of model_qdq.onnx to set
  (targets.onnxruntime_notes: :data:`MATMUL_NBITS_OPTION`); they change only what the notes name,
  so ptq's judge scores the model a user who follows them gets.
- SIMULATE_FUSED: the QDQ pairs stay float (session.disable_quant_qdq) while every other fusion
  runs, and no memory pattern, for the few big runs of bias correction's joint graph:
  onnxruntime records the memory pattern in the first run and allocates it as one new block in
  the second, so the second run pays again for first-touching all its memory (measured: bias
  correction of the full-size MobileNetV2 over 3 runs of 86 samples, 12-13 s -> 8.4 s, page
  faults 900k -> 580k).
- SWEEP: SIMULATE for many short runs of one sim in a row (analyze's configurations), its
  worker threads not spinning between parallel sections: onnxruntime's idle workers otherwise
  busy-wait for the next one (measured at load 12-14, one 64-sample configuration run of the
  MobileNetV2 sample: 69-97 ms of CPU spinning, 50-56 ms not; how much spinning costs depends on
  the machine's other jobs: docs/design.md, analyze).

:data:`LEVELS` maps the optimization level names (none, basic, all) to policies; :data:`JUDGED` adds
"advised" (ADVISED): the names evaluate's ``--ort-optimization`` and ptq's judge take.

Every session's working memory (its intermediate tensors) comes from one onnxruntime arena for
the whole process (:func:`_shared_arena`, ``session.use_env_allocators``), not an arena per
session: ptq makes dozens of sessions (a calibration and a scoring of every candidate sim), and
each new arena first-touches its pages again, which the kernel charges as page faults (2.5-3x
more of them; the measurements: docs/design.md, "One onnxruntime arena for the process"). The
price: the arena keeps its largest size until the process ends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from aimetcli import big_tensors, constant_part
from aimetcli import graph as g
from aimetcli.errors import AimetCliError, ErrorKind

Progress = Callable[[int], None]

_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class Policy:
    """Session options for one purpose (see the module docstring). ``optimization``: onnxruntime's
    graph optimization level ("none", "basic" or "all"); ``keep_qdq``: no QDQ rewrite even at
    "all"; ``mem_pattern``: onnxruntime's memory pattern (off for a few big runs); ``spinning``: idle
    intra-op workers busy-wait for work (off for sweeps); ``constant_part``: what depends on
    initializers alone is computed once and fed (aimetcli/constant_part.py; without optimizations
    onnxruntime would recompute it in every run); ``config``: session config entries (key, value)."""

    name: str
    optimization: str
    keep_qdq: bool = False
    mem_pattern: bool = True
    spinning: bool = True
    constant_part: bool = False
    config: tuple[tuple[str, str], ...] = ()


MEASURE = Policy("measure", "all")
SIMULATE = Policy("simulate", "none", constant_part=True)
FOLD_CONSTANTS = Policy("fold-constants", "basic")
DEPLOY = Policy("deploy", "all")
# onnxruntime (1.32) fuses a MatMul's <= 8-bit weight DequantizeLinear into MatMulNBits, whose default
# accuracy level (4) requantizes the MatMul's other input to 8 bits at run time; level 1 computes in float
MATMUL_NBITS_OPTION = "session.qdq_matmulnbits_accuracy_level"
ADVISED = Policy("deploy-advised", "all", config=((MATMUL_NBITS_OPTION, "1"),))
SIMULATE_FUSED = Policy("simulate-fused", "all", keep_qdq=True, mem_pattern=False)
SWEEP = Policy("sweep", "none", spinning=False, constant_part=True)
LOAD = Policy("load", "none")

# optimization level name -> the policy it runs a model with
LEVELS = {"none": SIMULATE, "basic": FOLD_CONSTANTS, "all": DEPLOY}
# what evaluate's --ort-optimization and ptq's judge run a model under: the levels, and "advised" (ADVISED)
JUDGED = {**LEVELS, "advised": ADVISED}

# Gemm/MatMul weights above this many bytes are neither prepacked nor handed over as initializers
# (see Session)
PREPACK_LIMIT = 64 << 20
# A constant part reading more initializer bytes than this is left in the graph (Session._constant_part)
CONSTANT_PART_LIMIT = 256 << 20


@functools.cache
def _shared_arena() -> None:
    """Register the process's one CPU arena with onnxruntime's environment (once: cached)."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # onnxruntime's defaults


class Session:
    """An onnxruntime CPU session of ``model`` under ``policy``.

    ``model``: an onnx-ir model (a model, or a graph built on a copy of one: graph_builder.py),
    serialized bytes or a path. An onnx-ir model is serialized here, once, as a
    :class:`~aimetcli.big_tensors.SplicedProto` (a protobuf without its big tensors' data, and
    those arrays beside it), so it reaches onnxruntime without its big tensors' bytes going
    through protobuf: they are handed over as arrays (VGG19's 548 MB, 1.7-5.7 s -> 0.7-1.1 s a
    session), which the session keeps referenced for its whole life.

    Where the model's Gemm/MatMul weights pass PREPACK_LIMIT, onnxruntime's prepacking (a packed
    copy of every such weight, made when the session starts) is off: our sessions run a few
    batches, and the copy costs more time and memory than it saves (VGG19 quantsim: 3.2 -> 2.2 s
    and 2.24 -> 1.96 GB with 2 samples, 5.8 -> 5.4 s with 32; the 2.25 GB Gemm chain: 25 -> 15 s,
    one weight copy less). Conv-heavy models keep it (MobileNetV2 is slower without it).
    Those big Gemm/MatMul weights also become graph inputs, fed with every run (:attr:`fed`):
    onnxruntime copies external initializers when the session starts (a 256 MB weight adds
    264 MB), but reads fed arrays where they are.

    A model onnxruntime cannot load raises AimetCliError (one line, ErrorKind.RUNTIME).
    """

    def __init__(self, model: ir.Model | bytes | str, policy: Policy):
        spliced = big_tensors.SplicedProto.of(model) if isinstance(model, ir.Model) else None
        so = ort.SessionOptions()
        so.graph_optimization_level = _LEVELS[policy.optimization]
        so.enable_mem_pattern = policy.mem_pattern
        if policy.keep_qdq:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        if not policy.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in policy.config:
            so.add_session_config_entry(key, value)
        so.log_severity_level = 4  # failures reach the user as one line of ours (Session.run), not as its log
        _shared_arena()
        so.add_session_config_entry("session.use_env_allocators", "1")  # see the module docstring
        self.policy = policy
        self.fed: dict[str, np.ndarray] = {}  # inputs added for big weights, fed with every run
        self._arrays: list[np.ndarray] = []  # onnxruntime reads them for the session's whole life
        try:
            source = self._set_arrays_aside(spliced, so) if spliced is not None else model
            self._session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        except AimetCliError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            raise AimetCliError(f"onnxruntime cannot load the model: {_first_line(exc)}", ErrorKind.RUNTIME) from exc
        self.input_names = [i.name for i in self._session.get_inputs()]
        self._floats = {i.name: _FLOAT_INPUTS[i.type] for i in self._session.get_inputs() if i.type in _FLOAT_INPUTS}

    def _set_arrays_aside(self, model: big_tensors.SplicedProto, so) -> bytes:
        """The serialized protobuf without its big tensors' data; the arrays go to ``so`` (or
        :attr:`fed`)."""
        proto, names, arrays = model.declared_external()
        big = dict(zip(names, arrays))
        if self.policy.constant_part:
            self.fed = self._constant_part(proto, big)
            left = {t.name for t in proto.graph.initializer}
            big = {n: a for n, a in big.items() if n in left}
        self._arrays = list(big.values())
        if big:
            readers = _readers(proto)
            matmul = {"Gemm", "MatMul"}
            if sum(a.nbytes for n, a in big.items() if readers.get(n, set()) & matmul) > PREPACK_LIMIT:
                so.add_session_config_entry("session.disable_prepacking", "1")
                self.fed.update(_feed_matmul_weights(proto, big, readers))
            kept = [(n, a) for n, a in big.items() if n not in self.fed]
            if kept:
                so.add_external_initializers([n for n, _ in kept],
                                             [ort.OrtValue.ortvalue_from_numpy(a) for _, a in kept])
        return proto.SerializeToString()

    @staticmethod
    def _constant_part(proto, big: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluate ``proto``'s constant part once (aimetcli/constant_part.py) and cut it off (in
        place); its values, fed with every run. Nothing is cut where the part reads more than
        CONSTANT_PART_LIMIT of initializers (its values would be a second copy of them held for the
        session's life)."""
        nodes = constant_part.constant_nodes(proto.graph)
        outputs = constant_part.read_by_rest(proto.graph, nodes)
        if not outputs:
            return {}
        part = constant_part.part_model(proto, nodes, outputs)
        if sum(big[t.name].nbytes if t.name in big else len(t.raw_data) for t in part.graph.initializer) \
                > CONSTANT_PART_LIMIT:
            return {}
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4  # failures reach the user as one line of ours (Session.run), not as its log
        external = [t.name for t in part.graph.initializer if t.name in big]
        if external:
            so.add_external_initializers(external, [ort.OrtValue.ortvalue_from_numpy(big[n]) for n in external])
        try:
            session = ort.InferenceSession(part.SerializeToString(), so, providers=["CPUExecutionProvider"])
            values = dict(zip(outputs, session.run(outputs, {})))
        except Exception:  # noqa: BLE001  (the whole graph then runs as it is; its own errors are reported)
            return {}
        constant_part.cut(proto, nodes, values)
        return values

    @property
    def prepacks(self) -> bool:
        """Whether onnxruntime prepacks Gemm/MatMul weights in this session (see the class docstring)."""
        try:
            return self._session.get_session_options().get_session_config_entry("session.disable_prepacking") != "1"
        except RuntimeError:  # onnxruntime: no such entry
            return True

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """``outputs`` (all the graph's when None) for ``feeds``. Feeds of another float type than
        a float input takes are converted (models compared on the same data need not agree on it:
        a float16 model and its float32 sim). A failure raises AimetCliError (one line)."""
        floats = self._floats
        if any(k in floats and v.dtype != floats[k] and v.dtype.kind == "f" for k, v in feeds.items()):
            feeds = {k: v.astype(floats[k]) if k in floats and v.dtype.kind == "f" else v for k, v in feeds.items()}
        if self.fed:
            feeds = {**feeds, **self.fed}
        try:
            return self._session.run(list(outputs) if outputs is not None else None, feeds)
        except Exception as exc:
            hint = self._one_sample_hint(feeds, outputs)
            raise AimetCliError(f"onnxruntime failed while running the model: {_first_line(exc)}{hint}",
                                ErrorKind.RUNTIME) from exc

    def _one_sample_hint(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None) -> str:
        """Where a run of several samples failed: whether the first sample alone runs, as with an
        export that fixes the batch size inside (a Reshape to [1, ...]) while its inputs leave it open."""
        from aimetcli.calibration.dataset import feed_rows

        rows = feed_rows(feeds)
        if rows < 2 or any(k not in self.fed and (v.ndim == 0 or v.shape[0] != rows) for k, v in feeds.items()):
            return ""
        try:
            self._session.run(list(outputs) if outputs is not None else None,
                              {k: v if k in self.fed else v[:1] for k, v in feeds.items()})
        except Exception:  # noqa: BLE001  (no hint: the model fails on one sample too)
            return ""
        return (f" (on a run of {rows} samples; one sample at a time runs: the model fixes its batch size inside "
                "though its inputs leave it open; rerun with --batch-size 1)")


def _readers(proto) -> dict[str, set[str]]:
    """Tensor name -> op types of the main graph's nodes that read it ("?" for other domains)."""
    readers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type if node.domain in ("", "ai.onnx") else "?")
    return readers


def _feed_matmul_weights(proto, arrays: dict[str, np.ndarray], readers: dict[str, set[str]]) -> dict[str, np.ndarray]:
    """Turn the set-aside weights that only Gemm/MatMul nodes read into graph inputs (in place in
    ``proto``); returns them by name, for :meth:`Session.run` to feed."""
    outputs = {o.name for o in proto.graph.output}
    fed = {name: arr for name, arr in arrays.items()
           if readers.get(name) and readers[name] <= {"Gemm", "MatMul"} and name not in outputs
           and arr.dtype == np.float32 and arr.flags.c_contiguous}
    if fed:
        keep = [t for t in proto.graph.initializer if t.name not in fed]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
        listed = {i.name for i in proto.graph.input}  # models before IR 4 list initializers as inputs
        for name, arr in fed.items():
            if name not in listed:
                proto.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, arr.shape))
    return fed


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


_FLOAT_INPUTS = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
                 "tensor(double)": np.dtype(np.float64)}


@functools.cache
def u8s8_exact() -> bool:
    """Whether onnxruntime's u8s8 integer kernels (uint8 activations times int8 weights) are exact on
    this CPU: on x86 only with VNNI or AMX, whose instructions sum the products in 32 bits; without
    them the pairs of products are summed in saturating 16 bits (export.py's module docstring).
    False where the CPU's flags cannot be read: the u8u8 kernels are exact everywhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(line.split()))
    except OSError:
        pass
    return False


# ---------------------------------------------------------------------------- run sizes
def reduction_run_size(dataset) -> int:
    """Samples per onnxruntime calibration run.

    Min and max do not depend on how the data are split, and small runs keep every
    activation in the CPU caches while the reductions read it again. Measured on the
    full-size MobileNetV2, 64 samples 224x224: 2-4 samples a run take 0.52-0.54 s
    and 370-480 MB, 16 a run 0.87 s and 1.15 GB, 64 a run 1.5 s and 2.1 GB (onnxruntime
    keeps more of a graph's activations alive when they are also reduced). Small
    images do best with somewhat larger runs (Fashion-MNIST models: 8-16). Histogram
    schemes copy every activation out: small runs keep that to a few samples' worth
    (tf-enhanced, same model and data: 2.5 GB -> 0.42 GB at --batch-size 64). Their
    histograms grow their range run by run (as AIMET's do batch by batch), so results
    can differ in the last bits from runs of another size.
    """
    return 4 if dataset.sample_nbytes >= 64 << 10 else 16


# Activations (summed over a model's tensors) that one histogram run may copy out of onnxruntime
HISTOGRAM_RUN_BYTES = 16 << 20


def histogram_run_size(model: ir.Model, dataset) -> int:
    """Samples per onnxruntime run when activations leave the session (histograms, NaN checks).

    At least reduction_run_size, more (up to 64) while the model's activations for the run stay
    within HISTOGRAM_RUN_BYTES. The ResNet sample model (0.58 MB of activations a sample),
    tf-enhanced over 1,000 samples: runs of 16 samples 0.29 s, 32 0.23 s, 64 0.22 s; its
    process's peak memory grows with the run (1.4x the FP32 process's at 16 samples, 1.9x at
    55), hence the bound (27 samples there).
    """
    return max(reduction_run_size(dataset), min(64, HISTOGRAM_RUN_BYTES // max(g.activation_bytes(model), 1)))


# Activations one histogram run may copy out of onnxruntime, measured on its first samples, where the
# model's declared shapes cannot tell (histogram_run_size counts unknown sizes as 1): above it, the
# histograms' ranges are fixed by a reductions pass first and the runs are reduction_run_size
# samples (quantsim/calibrate._observe). det v5, 32 pages 384 x 384 in one run: 6 GB, 9 s of system
# time in page faults.
HISTOGRAM_RUN_LIMIT = 1 << 30


# Model input in one bias-correction joint run
CHUNK_BYTES = 64 << 20
# Bytes of all the model's activations (summed over its tensors, one copy) in one correction run.
# The run's peak memory was about 40% of that per copy: full-size MobileNetV2, 64 samples x 52 MB
# of activations -> 1.65 GB peak RSS; the MobileNetV2 sample, 1,000 x 1.7 MB -> 1.2 GB.
ACTIVATION_BUDGET = 4 << 30


def correction_run_size(model: ir.Model, dataset, batch_size: int) -> int:
    """Samples per bias-correction joint run: as many as fit CHUNK_BYTES of model input and
    ACTIVATION_BUDGET of the model's activations, and at least ``batch_size``. (Small inputs can
    have activations a hundred times their size: 10,000 Fashion-MNIST images fit 64 MB of input,
    and a run over them all would need some 12 GB.)

    The per-channel means are exact over each run; with more data than one run takes, the
    corrections of the runs are averaged (weighted by their samples). ``batch_size`` 1 (the fix
    :meth:`Session.run`'s error names for a model that runs one sample at a time): 1.
    """
    if batch_size == 1:  # one sample a run everywhere: an export that fixes the batch inside runs no other way
        return 1
    return max(batch_size, min(CHUNK_BYTES // dataset.sample_nbytes,
                               ACTIVATION_BUDGET // max(g.activation_bytes(model), 1)))
