"""Per-quantizer sensitivity of a sim: where the quantization error comes from.

For each quantizer q of a quantsim model (each weight's, each activation's), the scored output's
SQNR against FP32 with

- only q on (the error q alone causes), and
- every quantizer but q on (what keeping q's tensor float recovers),

as AIMET's QuantAnalyzer reports per layer. The sim is built once and run with every quantizer
switchable: each quantizer's chain (QuantizeLinear -> DequantizeLinear [-> grid Clip]) moves into
the then branch of ``If(on_q)``, whose else branch is ``Identity(x)``, with ``x`` the tensor it
quantizes and ``on_q`` a boolean scalar input of the graph; the readers read the If's output.
onnxruntime runs only the branch taken, so a quantizer switched off costs nothing (a
``Where(on_q, Q, x)`` computed both). One onnxruntime session (runtime.SWEEP) then runs every
configuration (2 N + 1 runs over the data for N quantizers), instead of N sims built, serialized
and loaded twice each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.calibration.data import DataSource
from aimetcli.calibration.samples import SamplesFirst
from aimetcli.graph_builder import insert_after_producer
from aimetcli.model_ops import ModelSource, as_model
from aimetcli.options import QuantOptions, RunOptions
from aimetcli.ptq_judge import layer_errors
from aimetcli.quantsim.insert import is_grid_node
from aimetcli.steps.evaluate import _joined, model_outputs, score_output, sqnr_db
from aimetcli.tensor_ranges import TensorRange

TOP = 3  # the ranking's check: these worst quantizers alone, and every other one
HISTOGRAMS = 8  # the report draws the histograms of this many worst quantizers' tensors


@dataclass
class Switch:
    """One quantizer of the sim: the tensor it quantizes and the graph input that turns it on."""

    tensor: str
    kind: str  # "weight" or "activation"
    node: str  # the layer that reads the weight, or the op that writes the activation
    op: str
    input: str


@dataclass
class QuantizerSensitivity:
    tensor: str
    kind: str
    node: str
    op: str
    only_sqnr_db: float  # only this quantizer on
    all_but_sqnr_db: float  # every quantizer on but this one

    def recovered_db(self, full_sqnr_db: float) -> float:
        """What keeping this tensor float gains over the full sim."""
        return self.all_but_sqnr_db - full_sqnr_db


@dataclass
class Analysis:
    full_sqnr_db: float  # every quantizer on: the sim
    output: str  # the output the SQNRs are of
    samples: int
    quantizers: list[QuantizerSensitivity] = field(default_factory=list)
    # the check of the ranking: the worst TOP quantizers (worst()) alone, and all the others
    top: list[str] = field(default_factory=list)
    top_only_sqnr_db: float | None = None
    top_float_sqnr_db: float | None = None
    # per layer output: its SQNR in the full sim against FP32 (ptq_judge.layer_errors)
    layers: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the sim's (quantsim's summary)
    # per quantizer's tensor: grid and data ranges, clipping, histogram (aimetcli/tensor_ranges.py)
    ranges: list[TensorRange] = field(default_factory=list)
    seconds: float = 0.0
    ranges_seconds: float = 0.0  # of which the ranges' run over the calibration data

    def to_json(self) -> dict:
        from dataclasses import asdict

        doc = asdict(self)
        for q, row in zip(self.quantizers, doc["quantizers"]):
            row["recovered_db"] = q.recovered_db(self.full_sqnr_db)
        drawn = {r.tensor for r in self.histogram_ranges()}
        doc["ranges"] = [{**r.to_json(), "histogram": r.histogram if r.tensor in drawn else None}
                         for r in self.ranges]
        return doc

    def histogram_ranges(self, n: int = HISTOGRAMS) -> list[TensorRange]:
        """The ranges of the ``n`` quantizers :meth:`worst` ranks first (the report draws their
        histograms), in that order."""
        by_name = {r.tensor: r for r in self.ranges if r.histogram}
        return [by_name[q.tensor] for q in self.worst(len(self.quantizers)) if q.tensor in by_name][:n]

    def worst(self, n: int = 10) -> list[QuantizerSensitivity]:
        """The quantizers whose float tensor would recover the most, most first."""
        return sorted(self.quantizers, key=lambda q: -q.recovered_db(self.full_sqnr_db))[:n]


def _quantized_end(q: ir.Node) -> ir.Value | None:
    """The value the readers of a quantizer see: its DequantizeLinear's output, after quantsim's
    narrow-grid Clip or Max/Min when there is one."""
    dq = g.sole_consumer(q.outputs[0])
    if dq is None or not g.is_op(dq, "DequantizeLinear"):
        return None
    end = dq.outputs[0]
    while True:
        nxt = g.sole_consumer(end)
        if nxt is None or not is_grid_node(nxt):
            return end
        end = nxt.outputs[0]


def _chain_nodes(q: ir.Node, last: ir.Node) -> list[ir.Node]:
    """The quantizer's nodes from its QuantizeLinear ``q`` to ``last`` (each the sole reader of the
    one before: :func:`_quantized_end`)."""
    chain = [q]
    while chain[-1] is not last:
        nxt = g.sole_consumer(chain[-1].outputs[0])
        assert nxt is not None
        chain.append(nxt)
    return chain


def _switch(graph: ir.Graph, names: g.Names, on: ir.Value, x: ir.Value, end: ir.Value, chain: list[ir.Node],
            x_name: str) -> ir.Node:
    """``If(on) then <chain> else Identity(x)``, in the graph where the chain was: the chain's nodes
    move into the then branch (their scales and zero points stay initializers of the graph, read
    from the outer scope), and onnxruntime runs only the branch taken."""
    for node in chain:
        graph.remove(node)
    ident = ir.Node("", "Identity", [x], name=names.new(f"{x_name}_as_float"))
    ident.outputs[0].name = names.new(f"{x_name}_float_branch_out")
    then = ir.Graph([], [end], nodes=chain, name=names.new(f"{x_name}_quantized_branch"))
    otherwise = ir.Graph([], [ident.outputs[0]], nodes=[ident], name=names.new(f"{x_name}_float_branch"))
    node = ir.Node("", "If", [on], attributes=[ir.AttrGraph("then_branch", then),
                                              ir.AttrGraph("else_branch", otherwise)],
                   name=names.new(f"{x_name}_switch"))
    out = node.outputs[0]
    out.name = names.new(f"{x_name}_switched")
    out.type, out.shape = end.type, end.shape
    insert_after_producer(graph, x, [node])
    return node


def switchable(sim: ir.Model) -> list[Switch]:
    """Make every quantizer of ``sim`` (modified in place) switchable (module docstring); the
    switches in graph order."""
    graph = sim.graph
    names = g.Names(sim)
    outputs = {v.name for v in graph.outputs}
    switches = []
    for q in [n for n in graph if g.is_op(n, "QuantizeLinear")]:
        x = q.inputs[0]
        end = _quantized_end(q)
        last = end.producer() if end is not None else None
        if x is None or end is None or last is None or x.name is None or end.name is None:
            continue
        x_name: str = x.name
        weight = g.constant(x) is not None
        reader = next((u.node for u in end.uses()), None)
        owner = reader if weight else x.producer()
        on_name = names.new(f"aimetcli_on/{x_name}")
        on = ir.Value(name=on_name, type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
        graph.inputs.append(on)
        uses = list(end.uses())
        idx = next((i for i, v in enumerate(graph.outputs) if v is end), None)
        if idx is not None:  # the then branch's output now
            graph.outputs.pop(idx)
        chain = _chain_nodes(q, last)
        switch = _switch(graph, names, on, x, end, chain, x_name)
        out = switch.outputs[0]
        for use in uses:
            use.node.replace_input_with(use.idx, out)
        if idx is not None:
            name = end.name
            end.name = names.new(f"{name}_quantized_value")
            out.name = name
            graph.outputs.insert(idx, out)
        base = x_name[: -len("_float")]
        # a graph output's float value (quantsim/insert.py): named as the user knows it
        tensor = base if x_name.endswith("_float") and base in outputs else x_name
        switches.append(Switch(tensor, "weight" if weight else "activation",
                               g.node_label(owner) if owner is not None else "(model input)",
                               owner.op_type if owner is not None else "input", on_name))
    return switches


def analyze(model: ModelSource, data: DataSource, options: QuantOptions | None = None, run: RunOptions | None = None,
            *, evaluation: DataSource | None = None, samples: int = 64) -> Analysis:
    """The facade step: quantsim of ``model`` with ``options`` calibrated on ``data`` (the model is
    left as it was), then :func:`analyze_sim` on the first ``samples`` of ``evaluation`` (default:
    ``data``; whole fixed batches), and every quantized tensor's ranges and clipping on ``data``
    (:func:`aimetcli.tensor_ranges.tensor_ranges`; histograms only of the HISTOGRAMS quantizers
    :meth:`Analysis.worst` ranks first, the ones the report draws). ``run.progress`` ticks once per calibration
    batch (twice: calibration, then the ranges) and once per configuration run."""
    from aimetcli.calibration.data import as_dataset
    from aimetcli.ptq_judge import _subset
    from aimetcli.steps.quantsim import quantsim
    from aimetcli.tensor_ranges import tensor_ranges

    fp32 = as_model(model, float32=True)
    options = options or QuantOptions()
    run = run or RunOptions()
    calib = as_dataset(data, fp32)
    scored = as_dataset(evaluation, fp32) if evaluation is not None else calib
    step = scored.fixed_batch or 1  # a model that fixes its batch size runs whole batches
    keep = max(step, samples // step * step)
    if scored.num_samples > keep:
        scored = _subset(scored, 0, keep, "analysis")
    sim, encodings, summary = quantsim(fp32, calib, options, run)
    result = analyze_sim(fp32, sim, scored, batch_size=run.batch_size, progress=run.progress)
    result.warnings = list(summary.warnings)
    start = time.perf_counter()
    quantized = set(encodings.activations) | set(encodings.params)
    drawn = [q.tensor for q in result.worst(len(result.quantizers)) if q.tensor in quantized][:HISTOGRAMS]
    result.ranges = tensor_ranges(fp32, encodings, calib, run.batch_size, run.progress, histograms=drawn)
    result.ranges_seconds = time.perf_counter() - start
    result.seconds += result.ranges_seconds
    return result


def analyze_sim(fp32: ir.Model, sim: ir.Model, data, *, batch_size: int = 32, progress=None) -> Analysis:
    """:class:`Analysis` of ``sim`` (a quantsim model of ``fp32``; modified in place) on ``data``.
    ``progress(n)`` is called after each configuration run over the data."""
    from aimetcli import runtime

    start = time.perf_counter()
    reference = model_outputs(fp32, data, batch_size=batch_size)
    k = score_output(reference)
    if k is None:
        raise ValueError("the model has no floating-point output to compare")
    output = fp32.graph.outputs[k].name or ""
    ref = reference[k]
    layers = layer_errors(fp32, sim, data, batch_size=batch_size)
    switches = switchable(sim)
    session, first = runtime.Session(sim, runtime.SWEEP), SamplesFirst(sim, [output])
    batches = list(data.batches(batch_size))

    def sqnr(on: set[int]) -> float:
        flags = {s.input: np.array(i in on) for i, s in enumerate(switches)}
        out = _joined([first(session.run({**feeds, **flags}, [output]), feeds)[0] for feeds in batches])
        if progress is not None:
            progress(1)
        return sqnr_db(ref, out)

    everything = set(range(len(switches)))
    result = Analysis(sqnr(everything), output, data.num_samples, layers=layers)
    for i, s in enumerate(switches):
        result.quantizers.append(QuantizerSensitivity(s.tensor, s.kind, s.node, s.op, sqnr({i}),
                                                      sqnr(everything - {i})))
    if len(switches) > TOP:
        worst = result.worst(TOP)
        result.top = [q.tensor for q in worst]
        top = {i for i, s in enumerate(switches) if s.tensor in result.top}
        result.top_only_sqnr_db, result.top_float_sqnr_db = sqnr(top), sqnr(everything - top)
    result.seconds = time.perf_counter() - start
    return result


def runs(quantizers: int) -> int:
    """Runs over the data :func:`analyze_sim` makes for a sim with this many quantizers."""
    return 2 * quantizers + 1 + (2 if quantizers > TOP else 0)


def planned_runs(model: ir.Model, options: QuantOptions) -> int:
    """:func:`runs` for the quantizers quantsim would place in ``model`` (before calibration,
    which may drop a few: a progress bar's total)."""
    from aimetcli.quantsim.placement import place_quantizers

    placement = place_quantizers(model, options.config, options)
    return runs(len(placement.activations) + sum(p.kind == "weight" for p in placement.params))
