"""A graph's constant part: the nodes that read only initializers, split off to be evaluated once.

A QDQ sim run without graph optimizations (runtime.SIMULATE, as it must be: docs/design.md,
"onnxruntime optimization levels and QDQ") recomputes in every run what depends on its
initializers alone: each weight's QuantizeLinear -> DequantizeLinear, the bias grid's
Div -> Round -> Clip -> Mul. Those values are the same in every run, and a transformer's weights
outweigh a run's activations (ViT-tiny: 5.5 M weights against 0.3 M activation values in a run of
8 samples), so the weights' fake quantization was half of a ViT sim's run time.

:func:`constant_nodes` finds that part (topological order; a node is constant when it has inputs
and every one of them is an initializer the caller cannot override, or the output of a constant
node), :func:`part_model` makes it a model of its own whose outputs are the values the rest of
the graph reads, and :func:`cut` removes it from the graph and declares those values graph inputs.
``runtime.Session`` evaluates the part once in onnxruntime without optimizations (the kernels
the whole graph's run uses, on the same inputs: the same values bit for bit) and feeds the
values with every run. A graph input is no constant to onnxruntime, so it is not prepacked: a
prepacked MatMul weight would sum in another order (ViT-tiny's logits then differ in the last
bits), where as an input every node downstream computes what it computed before, bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx

# not folded: a draw differs from run to run; subgraphs may read outer values
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_DEFAULT_DOMAINS = {"", "ai.onnx"}


def constant_nodes(graph: onnx.GraphProto) -> list[int]:
    """Indices (in ``graph.node``'s topological order) of the nodes whose value depends on
    initializers alone. Not constant: nodes without inputs (Constant, whose value is inline
    anyway), random draws, nodes of other domains or with subgraphs, nodes that read an
    initializer listed as a graph input (a feed may override it, before IR 4), and nodes that
    make a graph output (the graph must still produce it)."""
    overridable = {i.name for i in graph.input}
    known = {t.name for t in graph.initializer if t.name not in overridable}
    outputs = {o.name for o in graph.output}
    found = []
    for index, node in enumerate(graph.node):
        if (node.input and node.domain in _DEFAULT_DOMAINS and node.op_type not in _RANDOM
                and all(name and name in known for name in node.input)
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
                and not any(name in outputs for name in node.output)):
            found.append(index)
            known.update(name for name in node.output if name)
    return found


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names ``node`` reads, its subgraphs' reads of outer values included."""
    names = set(node.input)
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                    a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
            for inner in sub.node:
                names |= _reads(inner)
    return names


def read_by_rest(graph: onnx.GraphProto, nodes: list[int]) -> list[str]:
    """The constant nodes' outputs that the other nodes (or their subgraphs) read (sorted)."""
    chosen = set(nodes)
    made = {name for i in nodes for name in graph.node[i].output if name}
    return sorted({name for i, node in enumerate(graph.node) if i not in chosen for name in _reads(node) & made})


def part_model(model: onnx.ModelProto, nodes: list[int], outputs: list[str]) -> onnx.ModelProto:
    """The constant part as a model of its own: those nodes, the initializers they read (as they
    are: inline, or declared external with their arrays beside), and ``outputs`` as its outputs."""
    graph = model.graph
    read = {name for i in nodes for name in graph.node[i].input}
    part = onnx.ModelProto()
    part.ir_version = model.ir_version
    part.opset_import.extend(model.opset_import)
    part.graph.name = "constant_part"
    part.graph.node.extend(graph.node[i] for i in nodes)
    part.graph.initializer.extend(t for t in graph.initializer if t.name in read)
    part.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    return part


def cut(model: onnx.ModelProto, nodes: list[int], values: dict[str, np.ndarray]) -> None:
    """Remove the constant nodes from ``model`` (in place), and the initializers only they read;
    declare ``values`` (the outputs the rest reads) graph inputs of their dtype and shape."""
    graph = model.graph
    chosen = set(nodes)
    rest = [node for i, node in enumerate(graph.node) if i not in chosen]
    del graph.node[:]
    graph.node.extend(rest)
    read = {name for node in rest for name in _reads(node)} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for name, value in values.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        graph.input.append(onnx.helper.make_tensor_value_info(name, elem, value.shape))
