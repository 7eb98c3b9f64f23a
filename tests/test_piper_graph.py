"""Cutting a VITS-shaped ONNX graph before its decoder, on small graphs built here."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from providers.piper_graph import NoDecoderSplit, split_before_decoder, split_before_flow

CHANNELS = 4


def weight(name: str, *shape: int, seed: int) -> onnx.TensorProto:
    values = np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def vits_like(tail: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    """A speaker's embedding added after the first convolution, as in a multi-speaker VITS
    decoder (so the cut is after it), then x2 upsampling and a dilated convolution."""
    nodes = [
        # Front: the latent with noise drawn from the graph, scaled by scales[0].
        helper.make_node("Gather", ["scales", "zero"], ["noise_scale"], axis=0),
        helper.make_node("RandomNormalLike", ["x"], ["noise"]),
        helper.make_node("Mul", ["noise", "noise_scale"], ["scaled"]),
        helper.make_node("Add", ["x", "scaled"], ["z"]),
        helper.make_node("Conv", ["z", "pre_w", "pre_b"], ["pre"], kernel_shape=[3], pads=[1, 1]),
        helper.make_node("Gather", ["speakers", "sid"], ["g"], axis=0),  # [1, C]
        helper.make_node("Unsqueeze", ["g", "last"], ["g3"]),  # [1, C, 1]
        helper.make_node("Add", ["pre", "g3"], ["conditioned"]),
        # Decoder.
        helper.make_node("LeakyRelu", ["conditioned"], ["act"], alpha=0.1),
        helper.make_node(
            "ConvTranspose",
            ["act", "up_w", "up_b"],
            ["up"],
            kernel_shape=[4],
            strides=[2],
            pads=[1, 1],
        ),
        helper.make_node(
            "Conv", ["up", "post_w"], ["post"], kernel_shape=[3], dilations=[2], pads=[2, 2]
        ),
        helper.make_node("Div", ["post", "two"], ["halved"]),
        helper.make_node("Tanh", ["halved"], ["audio"]),
        *(tail or []),
        helper.make_node("Unsqueeze", ["audio" if not tail else "tail", "one"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vits-like",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, None]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("sid", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        initializer=[
            weight("pre_w", CHANNELS, CHANNELS, 3, seed=1),
            weight("pre_b", CHANNELS, seed=2),
            weight("speakers", 3, CHANNELS, seed=3),
            weight("up_w", CHANNELS, 2, 4, seed=4),
            weight("up_b", 2, seed=5),
            weight("post_w", 1, 2, 3, seed=6),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "last"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def session(model: bytes) -> Any:
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])


def decode(
    decoder: Any, name: str, latent: np.ndarray, start: int, stop: int, context: int, hop: int
) -> np.ndarray:
    low, high = max(0, start - context), min(latent.shape[-1], stop + context)
    run = decoder.run(None, {name: np.ascontiguousarray(latent[..., low:high])})
    audio = np.asarray(run[0]).reshape(-1)
    assert audio.size == (high - low) * hop
    return audio[(start - low) * hop : (stop - low) * hop]


def test_the_cut_follows_the_speaker_and_decodes_in_windows_as_whole() -> None:
    model = vits_like()
    whole = session(model.SerializeToString())
    cut = split_before_decoder(model)
    assert cut.latent == "conditioned"  # after the speaker's embedding joins
    assert cut.hop == 2
    # Receptive field, in latent frames: the transposed convolution 1 left / 0.5 right, the
    # dilated convolution at two samples per frame 1 / 1: 2 / 1.5, so two frames.
    assert cut.context == 2
    front, decoder = session(cut.front), session(cut.decoder)
    assert [i.name for i in front.get_inputs()] == ["x", "scales", "sid"]
    frames = 40
    inputs = {
        "x": np.random.default_rng(7).normal(size=(1, CHANNELS, frames)).astype(np.float32),
        "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
        "sid": np.array([2], dtype=np.int64),
    }
    (latent,) = front.run(None, inputs)
    assert latent.shape == (1, CHANNELS, frames)
    reference = whole.run(None, inputs)[0].reshape(-1)
    full = decode(decoder, cut.latent, latent, 0, frames, 0, 2)
    assert np.array_equal(full, reference)
    for size in (1, 3, 8):
        windows = [
            decode(decoder, cut.latent, latent, a, min(frames, a + size), cut.context, 2)
            for a in range(0, frames, size)
        ]
        assert float(np.max(np.abs(np.concatenate(windows) - reference))) < 1e-6
    # One frame of context less is not enough (the bound is tight).
    short = [
        decode(decoder, cut.latent, latent, a, a + 4, cut.context - 1, 2) for a in range(0, 40, 4)
    ]
    assert float(np.max(np.abs(np.concatenate(short) - reference))) > 1e-4


def test_the_front_is_cut_before_its_flow_which_runs_in_windows_as_whole() -> None:
    """Before the latent: the first convolution and the element-wise steps are local in time;
    the noise (drawn from the graph), its scale and the speaker's embedding are made before."""
    cut = split_before_decoder(vits_like())
    flow_cut = split_before_flow(cut.front, cut.latent)
    assert flow_cut.inputs == ("g3", "noise", "noise_scale", "x")
    assert flow_cut.context == 1  # one convolution of width 3
    head, flow = session(flow_cut.front), session(flow_cut.flow)
    assert [o.name for o in head.get_outputs()] == list(flow_cut.inputs)
    frames = 30
    inputs = {
        "x": np.random.default_rng(8).normal(size=(1, CHANNELS, frames)).astype(np.float32),
        "scales": np.array([0.5, 1.0, 0.0], dtype=np.float32),
        "sid": np.array([1], dtype=np.int64),
    }
    values = dict(zip(flow_cut.inputs, head.run(None, inputs), strict=True))
    (whole,) = flow.run(None, values)
    timed = {"x", "noise"}  # the scale and the embedding are broadcast over the frames

    def window(start: int, stop: int, context: int) -> np.ndarray:
        low, high = max(0, start - context), min(frames, stop + context)
        feed = {k: v[..., low:high] if k in timed else v for k, v in values.items()}
        return np.asarray(flow.run(None, feed)[0])[..., start - low : stop - low]

    for size in (1, 4, 7):
        parts = [window(a, min(frames, a + size), flow_cut.context) for a in range(0, frames, size)]
        assert float(np.max(np.abs(np.concatenate(parts, axis=-1) - whole))) < 1e-6
    short = [window(a, a + 5, 0) for a in range(0, frames, 5)]
    assert float(np.max(np.abs(np.concatenate(short, axis=-1) - whole))) > 1e-3


def test_a_front_with_nothing_local_in_time_before_its_latent_keeps_its_flow() -> None:
    """No convolution between the latent and what only the whole sentence gives: no flow."""
    model = vits_like()
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] == "pre":
            node.op_type, node.input[:] = "MatMul", ["z", "z_t"]  # all of time at once
            del node.attribute[:]
    model.graph.node.insert(0, helper.make_node("Transpose", ["x"], ["z_t"], perm=[0, 2, 1]))
    cut = split_before_decoder(model)
    with pytest.raises(NoDecoderSplit, match="no convolutional flow"):
        split_before_flow(cut.front, cut.latent)


def test_weights_listed_as_inputs_stay_with_their_half() -> None:
    """Older exports list every weight among the graph's inputs too."""
    model = vits_like()
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in model.graph.initializer
    )
    cut = split_before_decoder(model)
    front, decoder = session(cut.front), session(cut.decoder)
    assert [i.name for i in front.get_inputs()] == ["x", "scales", "sid"]
    assert [i.name for i in decoder.get_inputs()] == ["conditioned"]
    assert {t.name for t in onnx.load_from_string(cut.front).graph.initializer} == {
        "pre_w",
        "pre_b",
        "speakers",
        "zero",
        "last",
    }


def test_the_config_s_hop_length_must_agree_with_the_graph() -> None:
    with pytest.raises(NoDecoderSplit, match="2 samples per frame, the config says 256"):
        split_before_decoder(vits_like(), hop_length=256)


def test_a_decoder_that_mixes_all_of_time_is_not_cut() -> None:
    """A mean over time after the upsampling: no window decodes as the whole does."""
    tail = [
        helper.make_node("ReduceMean", ["audio"], ["mean"], axes=[2], keepdims=1),
        helper.make_node("Sub", ["audio", "mean"], ["tail"]),
    ]
    with pytest.raises(NoDecoderSplit, match="no convolutional decoder"):
        split_before_decoder(vits_like(tail))


def test_a_strided_convolution_in_the_decoder_is_not_cut() -> None:
    model = vits_like()
    for node in model.graph.node:
        if node.output[0] == "post":
            node.attribute.append(helper.make_attribute("strides", [2]))
    with pytest.raises(NoDecoderSplit):
        split_before_decoder(model)
