"""The whole-utterance ONNX graph, built from the step graph: an ONNX ``Scan`` of the step.

    audio (M, N) float32, N a multiple of the hop  ->  enhanced (N,), delayed like the step's output

The loop body *is* the step graph (its inputs reordered: states first, then the hop), so the
offline graph and the streaming graph compute the same function by construction. The initial
state is stored in the graph: each state's one-mic value, tiled to the input's mic count. A
personalized model's speaker state is a graph input instead (``speaker``, the embedding).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph_io import AUDIO, ENHANCED, MIC_AXIS_NAME, SPEAKER, StateTensor, next_name

SAMPLES_AXIS_NAME = "samples"


def build_offline(step_bytes: bytes, specs: list[StateTensor], hop: int, speaker_state: str | None = None) -> onnx.ModelProto:
    step = onnx.load_from_string(step_bytes)
    graph = step.graph
    inputs = {value.name: value for value in graph.input}
    outputs = {value.name: value for value in graph.output}
    # Scan's body takes the loop-carried values first, then the scanned slice; likewise its outputs.
    # The body's hop names differ from the outer graph's ``audio``/``enhanced``: ONNX names are global.
    for node in graph.node:
        node.input[:] = ["hop_audio" if name == AUDIO else name for name in node.input]
        node.output[:] = ["hop_enhanced" if name == ENHANCED else name for name in node.output]
    hop_input = helper.make_tensor_value_info("hop_audio", TensorProto.FLOAT, [MIC_AXIS_NAME, hop])
    hop_output = helper.make_tensor_value_info("hop_enhanced", TensorProto.FLOAT, [hop])
    body_inputs = [inputs[spec.name] for spec in specs] + [hop_input]
    body_outputs = [outputs[next_name(spec.name)] for spec in specs] + [hop_output]
    body = helper.make_graph(list(graph.node), "step", body_inputs, body_outputs, list(graph.initializer))

    nodes, initializers = [], []

    def const(name: str, values) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    # (M, N) -> (M, T, hop): Scan walks axis 1, giving (M, hop) per step.
    nodes.append(helper.make_node("Reshape", [AUDIO, const("hops_shape", [0, -1, hop])], ["hops"]))
    nodes.append(helper.make_node("Shape", [AUDIO], ["audio_shape"]))
    nodes.append(helper.make_node("Slice", ["audio_shape", const("zero", [0]), const("one", [1])], ["mic_count"]))
    initial_names = []
    graph_inputs = [helper.make_tensor_value_info(AUDIO, TensorProto.FLOAT, [MIC_AXIS_NAME, SAMPLES_AXIS_NAME])]
    for spec in specs:
        if spec.name == speaker_state:  # the embedding comes in: one stream, no mic axis
            graph_inputs.append(helper.make_tensor_value_info(SPEAKER, TensorProto.FLOAT, list(spec.shape)))
            initial_names.append(SPEAKER)
            continue
        init = f"initial_{spec.name}"
        initializers.append(numpy_helper.from_array(spec.initial.astype(np.float32), init))
        if spec.mic_axis is None:
            initial_names.append(init)
            continue
        parts = []
        for axis in range(len(spec.shape)):
            parts.append("mic_count" if axis == spec.mic_axis else const(f"{spec.name}_one_{axis}", [1]))
        nodes.append(helper.make_node("Concat", parts, [f"{spec.name}_repeats"], axis=0))
        nodes.append(helper.make_node("Tile", [init, f"{spec.name}_repeats"], [f"{init}_tiled"]))
        initial_names.append(f"{init}_tiled")
    final_states = [f"final_{spec.name}" for spec in specs]
    nodes.append(helper.make_node("Scan", initial_names + ["hops"], final_states + ["enhanced_hops"],
                                  num_scan_inputs=1, scan_input_axes=[1], body=body))
    nodes.append(helper.make_node("Reshape", ["enhanced_hops", const("flat", [-1])], [ENHANCED]))
    if speaker_state is not None and SPEAKER not in initial_names:
        raise ValueError(f"no state {speaker_state!r} in the step graph to feed the speaker embedding into")
    graph_out = helper.make_graph(
        nodes, "offline", graph_inputs,
        [helper.make_tensor_value_info(ENHANCED, TensorProto.FLOAT, [SAMPLES_AXIS_NAME])], initializers,
    )
    model = helper.make_model(graph_out, opset_imports=list(step.opset_import), producer_name="speechnorm")
    model.ir_version = step.ir_version
    onnx.checker.check_model(model)
    return model
