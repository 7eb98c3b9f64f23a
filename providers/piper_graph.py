"""Cutting a Piper (VITS) voice's ONNX graph before its decoder.

A Piper voice is one graph: the text encoder, the duration predictor and the flow turn the
phoneme ids of a sentence into latent frames (one per ``hop`` output samples, 256 for Piper's
voices), and the decoder (HiFi-GAN: convolutions and transposed convolutions) turns the frames
into audio. The decoder is two thirds of the work and sees each output sample only through a
few frames on either side, so it can run on a window of frames with some context on each side
and give the same samples as the whole sentence's decode, window after window, while the front
(and with it the flow's noise, the durations, the prosody) runs once on the whole sentence.

:func:`split_before_decoder` finds the cut in any export of that shape, without relying on
node names: the decoder's input is the earliest tensor through which every path from the
graph's inputs to its audio output runs (a dominator of the output), such that everything after
it is a one-dimensional convolution, a transposed convolution (the upsampling) or an
element-wise operation with constants. Those facts also give the hop (the product of the
upsampling strides) and how many frames of context a window needs (the receptive field, summed
along the longest path). A graph of another shape raises :class:`NoDecoderSplit`, and the voice
runs whole.

:func:`split_before_flow` cuts the front once more, before the flow: the longest stretch at the
front's end whose every step maps a frame from the frames near it only (one-dimensional
convolutions that keep the frame grid, element-wise operations, operations across channels, and
zeros made to a tensor's shape). Its inputs (in a VITS voice the prior's mean and deviation, the
noise, the mask and a scale) are what the front then ends with; its receptive field, summed the
same way, is the context a window of latent frames needs. Which of those inputs are indexed by
frame the provider finds by running two sentences of different lengths.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import onnx
import onnx.numpy_helper
import onnx.shape_inference
import onnx.utils

#: Element-wise operations a decoder may apply between its convolutions (the other operand, if
#: any, a constant): they see each sample alone.
_POINTWISE = frozenset(
    {
        "Abs",
        "Add",
        "Div",
        "Elu",
        "Erf",
        "Exp",
        "Gelu",
        "HardSigmoid",
        "Identity",
        "LeakyRelu",
        "Mul",
        "Neg",
        "PRelu",
        "Relu",
        "Sigmoid",
        "Sin",
        "Softplus",
        "Sub",
        "Tanh",
    }
)
#: What may follow the decoder's last convolution without changing the order of the samples.
_RESHAPES = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"})


class NoDecoderSplit(ValueError):
    """The graph is not a front followed by a convolutional decoder this module understands."""


@dataclass(frozen=True)
class DecoderSplit:
    """The two halves of a voice's graph, serialized for ONNX Runtime."""

    front: bytes
    """The graph's inputs to the latent frames."""
    decoder: bytes
    """The latent frames to the audio."""
    latent: str
    """The tensor between them: ``[batch, channels, frames]``."""
    hop: int
    """Output samples per latent frame."""
    context: int
    """Frames of context a window needs on each side to decode as the whole does."""


@dataclass
class _Reach:
    """How a tensor is placed in time relative to the latent frames."""

    rate: int  # samples per latent frame
    left: Fraction  # frames before a sample's own position it depends on
    right: Fraction  # frames after it


def split_before_decoder(model: onnx.ModelProto, *, hop_length: int | None = None) -> DecoderSplit:
    """Cut ``model`` before its decoder; ``model`` itself becomes the front (most of the
    weights: they are not copied).

    ``hop_length``, when the voice's config states one, must agree with the graph's."""
    graph = model.graph
    if len(graph.output) < 1:
        raise NoDecoderSplit("the graph has no output")
    if graph.sparse_initializer or graph.quantization_annotation:
        raise NoDecoderSplit("the graph has sparse or quantized tensors")
    nodes = list(graph.node)
    constants = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in constants]
    audio = graph.output[0].name  # a second output (alignments) is not audio
    producer = _producers(nodes)
    chain = _dominator_chain(nodes, inputs, constants, audio)
    end = audio
    while end in producer and nodes[producer[end]].op_type in _RESHAPES:
        step = nodes[producer[end]].input[0]
        if step not in chain:
            break
        end = step
    kernels = {t.name: list(t.dims) for t in graph.initializer}
    latent, reach = _earliest_decoder_input(nodes, producer, chain, end, kernels)
    if hop_length is not None and hop_length != reach.rate:
        raise NoDecoderSplit(
            f"the decoder makes {reach.rate} samples per frame, the config says {hop_length}"
        )
    typed = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
    for name in (latent, end):
        if name not in typed:  # the extractor wants a type for each end of a cut
            typed[name] = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            graph.value_info.append(typed[name])
    try:
        decoder = onnx.utils.Extractor(model).extract_model([latent], [end])
    except ValueError as exc:
        raise NoDecoderSplit(f"the graph cannot be cut: {exc}") from None
    del nodes, producer
    _reduce_to(model, latent)
    return DecoderSplit(
        front=model.SerializeToString(),
        decoder=decoder.SerializeToString(),
        latent=latent,
        hop=reach.rate,
        context=math.ceil(max(reach.left, reach.right)),
    )


def _reduce_to(model: onnx.ModelProto, output: str) -> None:
    """Keep only what computes ``output`` (which becomes the graph's one output), in place."""
    graph = model.graph
    nodes = list(graph.node)
    keep = _between(nodes, "", output, _producers(nodes), set())
    used = {name for index in keep for name in (*nodes[index].input, *nodes[index].output)}
    weights = {t.name for t in graph.initializer}
    latent = onnx.ValueInfoProto()
    latent.CopyFrom(next(v for v in (*graph.value_info, *graph.output) if v.name == output))
    del nodes
    for index in reversed(range(len(graph.node))):
        if index not in keep:
            del graph.node[index]
    for field in (graph.initializer, graph.value_info):
        for index in reversed(range(len(field))):
            if field[index].name not in used:
                del field[index]
    for index in reversed(range(len(graph.input))):  # older exports list weights as inputs
        name = graph.input[index].name
        if name in weights and name not in used:
            del graph.input[index]
    del graph.output[:]
    graph.output.append(latent)


def _producers(nodes: Sequence[onnx.NodeProto]) -> dict[str, int]:
    """Each tensor's producing node, by index."""
    return {out: index for index, node in enumerate(nodes) for out in node.output if out}


def _dominator_chain(
    nodes: Sequence[onnx.NodeProto], inputs: list[str], constants: set[str], output: str
) -> list[str]:
    """The tensors every path from the graph's inputs to ``output`` runs through, the earliest
    first, ``output`` last (dominators in the graph of tensors, the inputs joined at a root)."""
    root = ""
    parent: dict[str, str] = {root: root}
    depth: dict[str, int] = {root: 0}
    for name in inputs:
        parent[name], depth[name] = root, 1

    def meet(a: str, b: str) -> str:
        while a != b:
            if depth[a] >= depth[b]:
                a = parent[a]
            else:
                b = parent[b]
        return a

    defined = set(inputs) | constants
    for node in nodes:
        if any(
            attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for attr in node.attribute
        ):
            raise NoDecoderSplit(f"control flow ({node.op_type}) in the graph")
        live = []
        for name in node.input:
            if not name:
                continue
            if name not in defined:
                raise NoDecoderSplit("the graph's nodes are not in topological order")
            if name in parent:
                live.append(name)
        defined.update(o for o in node.output if o)
        if not live:
            continue  # a constant
        top = live[0]
        for name in live[1:]:
            top = meet(top, name)
        for out in node.output:
            if out:
                parent[out], depth[out] = top, depth[top] + 1
    if output not in parent:
        raise NoDecoderSplit("the audio output does not depend on the inputs")
    chain = []
    name = output
    while name != root:
        chain.append(name)
        name = parent[name]
    return chain[::-1]


def _earliest_decoder_input(
    nodes: Sequence[onnx.NodeProto],
    producer: Mapping[str, int],
    chain: list[str],
    end: str,
    kernels: Mapping[str, list[int]],
) -> tuple[str, _Reach]:
    """The earliest dominator before ``end`` after which the graph is a decoder, and where
    ``end`` then stands in time."""
    found: tuple[str, _Reach] | None = None
    for latent in reversed(chain[: chain.index(end)]):
        part = [nodes[index] for index in sorted(_between(nodes, latent, end, producer, kernels))]
        try:
            reach, upsamples = _reach(part, latent, end, kernels)
        except NoDecoderSplit:
            break  # an earlier cut would have the same node after it
        if upsamples:  # else not yet the whole decoder
            found = (latent, reach)
    if found is None:
        raise NoDecoderSplit("no convolutional decoder at the end of the graph")
    return found


def _between(
    nodes: Sequence[onnx.NodeProto],
    start: str,
    end: str,
    producer: Mapping[str, int],
    constants: Container[str],
) -> set[int]:
    """The nodes (indices) computing ``end`` from ``start`` (and constants, and the graph's
    inputs)."""
    seen: set[int] = set()
    stack = [end]
    while stack:
        name = stack.pop()
        if name == start or name in constants or name not in producer:
            continue
        index = producer[name]
        if index not in seen:
            seen.add(index)
            stack.extend(i for i in nodes[index].input if i)
    return seen


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return default


def _string(node: onnx.NodeProto, name: str) -> str:
    for attr in node.attribute:
        if attr.name == name:
            return str(attr.s.decode())
    return ""


def _reach(
    part: list[onnx.NodeProto], latent: str, end: str, kernels: Mapping[str, list[int]]
) -> tuple[_Reach, bool]:
    """Propagate each tensor's rate and receptive field from ``latent`` to ``end``; and whether
    the decoder upsamples. :class:`NoDecoderSplit` if a node depending on ``latent`` is not one
    a decoder is made of."""
    reach = {latent: _Reach(1, Fraction(0), Fraction(0))}
    upsamples = False
    for node in part:
        live = [reach[name] for name in node.input if name in reach]
        if not live:
            continue  # constants (weights computed once, shapes)
        if node.op_type in ("Conv", "ConvTranspose"):
            if node.input[0] not in reach or len(live) != 1:
                raise NoDecoderSplit(f"{node.op_type} {node.name!r} has computed weights")
            here = _convolution(node, live[0], kernels.get(node.input[1], []))
            upsamples = upsamples or node.op_type == "ConvTranspose"
        elif node.op_type not in _POINTWISE:
            raise NoDecoderSplit(f"{node.op_type} {node.name!r} in the decoder")
        else:
            if len({r.rate for r in live}) != 1:
                raise NoDecoderSplit(f"{node.op_type} {node.name!r} mixes time scales")
            here = _Reach(live[0].rate, max(r.left for r in live), max(r.right for r in live))
        for out in node.output:
            if out:
                reach[out] = here
    if end not in reach:
        raise NoDecoderSplit("the decoder's output does not depend on its input")
    return reach[end], upsamples


def _convolution(node: onnx.NodeProto, before: _Reach, weight_shape: list[int]) -> _Reach:
    """A one-dimensional convolution that keeps the frame grid: ``Conv`` with stride 1 and
    'same' padding, ``ConvTranspose`` giving exactly ``stride`` samples per input sample."""
    kernel = _ints(node, "kernel_shape", weight_shape[2:])
    strides = _ints(node, "strides", [1])
    dilations = _ints(node, "dilations", [1])
    pads = _ints(node, "pads", [0, 0])
    if len(kernel) != 1 or len(strides) != 1 or len(dilations) != 1 or len(pads) != 2:
        raise NoDecoderSplit(f"{node.op_type} {node.name!r} is not one-dimensional")
    if _string(node, "auto_pad") not in ("", "NOTSET") or _ints(node, "output_shape", []):
        raise NoDecoderSplit(f"{node.op_type} {node.name!r} pads implicitly")
    span = dilations[0] * (kernel[0] - 1)
    left_pad = pads[0]
    if node.op_type == "Conv":
        if strides[0] != 1 or sum(pads) != span:
            raise NoDecoderSplit(f"Conv {node.name!r} changes the length")
        return _Reach(
            before.rate,
            before.left + Fraction(left_pad, before.rate),
            before.right + Fraction(span - left_pad, before.rate),
        )
    stride = strides[0]
    extra = _ints(node, "output_padding", [0])
    if span + 1 - sum(pads) + sum(extra) != stride:
        raise NoDecoderSplit(f"ConvTranspose {node.name!r} is not a clean x{stride} upsampling")
    # Output sample o (at o / stride in input samples) gets input samples
    # (o + left_pad - span) / stride .. (o + left_pad) / stride.
    return _Reach(
        before.rate * stride,
        before.left + Fraction(span - left_pad, stride * before.rate),
        before.right + Fraction(left_pad, stride * before.rate),
    )


#: Operations that move data between channels and keep every frame where it is, when their axis
#: (a constant) is the channel axis, 1, of a ``[batch, channels, frames]`` tensor.
_CHANNEL_OPS = frozenset({"Slice", "Split", "Concat"})


@dataclass(frozen=True)
class FlowSplit:
    """A front cut once more, before its flow: the part of it that maps each frame from the
    frames near it only (in a VITS voice, the flow), serialized for ONNX Runtime."""

    front: bytes
    """The graph's inputs to the flow's inputs."""
    flow: bytes
    """The flow's inputs to the latent frames."""
    inputs: tuple[str, ...]
    """The flow's inputs, in the order of the front's outputs: frame-indexed tensors and others
    (a scale, say) alike; which are which is found by running it (two sentences' lengths)."""
    context: int
    """Frames of context a window of latent frames needs on each side."""


def split_before_flow(front: bytes, latent: str) -> FlowSplit:
    """Cut a front (:attr:`DecoderSplit.front`, whose one output is ``latent``) before the
    longest stretch at its end that is local in time: one-dimensional convolutions that keep
    the frame grid, element-wise operations and operations across channels only, and zeros
    made to a tensor's shape. Its inputs are the flow's inputs; :class:`NoDecoderSplit` when
    there is no such stretch with a convolution in it."""
    model = onnx.load_from_string(front)
    graph = model.graph
    nodes = list(graph.node)
    producer = _producers(nodes)
    values = _constant_values(graph)
    kernels = {t.name: list(t.dims) for t in graph.initializer}
    region: set[int] = set()
    inputs: list[str] = []
    stack = [latent]
    while stack:
        name = stack.pop()
        if name in values or name in inputs:
            continue
        index = producer.get(name)
        if index is None or not _time_local(nodes[index], values):
            inputs.append(name)  # a graph input, or made by the front proper
            continue
        if index not in region:
            region.add(index)
            stack.extend(i for i in nodes[index].input if i)
    part = [nodes[index] for index in sorted(region)]
    if not any(node.op_type == "Conv" for node in part):
        raise NoDecoderSplit("no convolutional flow before the decoder")
    reach = _flow_reach(part, inputs, latent, kernels)
    inferred = onnx.shape_inference.infer_shapes(_weightless(model))
    typed = {v.name: v for v in (*inferred.graph.value_info, *graph.input, *graph.output)}
    del inferred
    for name in inputs:
        if name not in typed:
            raise NoDecoderSplit(f"no type for the flow's input {name!r}")
        if not any(v.name == name for v in (*graph.value_info, *graph.input)):
            graph.value_info.append(typed[name])
    graph_inputs = [i.name for i in graph.input if i.name not in values]
    ordered = tuple(sorted(inputs))
    try:
        extractor = onnx.utils.Extractor(model)
        flow = extractor.extract_model(list(ordered), [latent])
        head = extractor.extract_model(graph_inputs, list(ordered))
    except ValueError as exc:
        raise NoDecoderSplit(f"the front cannot be cut before its flow: {exc}") from None
    return FlowSplit(
        front=head.SerializeToString(),
        flow=flow.SerializeToString(),
        inputs=ordered,
        context=math.ceil(max(reach.left, reach.right)),
    )


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its weights declared (type and shape) instead of held: enough to infer
    its tensors' types, without a copy of its tens of megabytes."""
    graph = model.graph
    declared = [
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in graph.initializer
    ]
    names = {t.name for t in graph.initializer}
    bare = onnx.helper.make_graph(
        list(graph.node),
        graph.name,
        [*[i for i in graph.input if i.name not in names], *declared],
        list(graph.output),
        value_info=list(graph.value_info),
    )
    return onnx.helper.make_model(
        bare, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )


def _constant_values(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The tensors known before the graph runs: its weights and its ``Constant`` nodes'."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    found[node.output[0]] = attr.t
    return found


def _axis_is_channels(node: onnx.NodeProto, values: Mapping[str, onnx.TensorProto]) -> bool:
    if node.op_type == "Slice":
        if len(node.input) < 4 or node.input[3] not in values:
            return False
        axes = onnx.numpy_helper.to_array(values[node.input[3]]).reshape(-1).tolist()
        # Starts, ends and steps may be computed (from a shape): they apply to channels only.
        return bool(axes) and all(axis in (1, -2) for axis in axes)
    axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 0)
    return axis in (1, -2)


def _time_local(node: onnx.NodeProto, values: Mapping[str, onnx.TensorProto]) -> bool:
    """Whether ``node`` maps each frame from frames near it only (see :func:`_flow_reach`)."""
    op = node.op_type
    if op in _POINTWISE or op in ("Cast", "Shape", "ConstantOfShape"):
        return True
    if op == "Conv":
        return len(node.input) >= 2 and node.input[1] in values
    return op in _CHANNEL_OPS and _axis_is_channels(node, values)


def _flow_reach(
    part: list[onnx.NodeProto], inputs: list[str], latent: str, kernels: Mapping[str, list[int]]
) -> _Reach:
    """Where ``latent`` stands in time relative to the flow's inputs (each frame-indexed at one
    sample per frame, or broadcast: a scale has no reach of its own). A shape is no frame's
    value: the zeros made to it reach nothing."""
    reach = {name: _Reach(1, Fraction(0), Fraction(0)) for name in inputs}
    for node in part:
        op = node.op_type
        if op == "Shape":
            continue
        if op == "ConstantOfShape":
            here = _Reach(1, Fraction(0), Fraction(0))
        elif op == "Conv":
            if node.input[0] not in reach:
                raise NoDecoderSplit(f"Conv {node.name!r} does not read the flow's frames")
            here = _convolution(node, reach[node.input[0]], kernels.get(node.input[1], []))
            if here.rate != 1:
                raise NoDecoderSplit(f"Conv {node.name!r} changes the frame rate")
        else:
            data = node.input[:1] if op == "Slice" else node.input
            live = [reach[name] for name in data if name in reach]
            if not live:
                continue  # constants, shapes
            here = _Reach(1, max(r.left for r in live), max(r.right for r in live))
        for out in node.output:
            if out:
                reach[out] = here
    if latent not in reach:
        raise NoDecoderSplit("the latent frames do not depend on the flow's inputs")
    return reach[latent]
