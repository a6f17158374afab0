"""The Triton model repository: its config is valid against Triton's own model-config schema, and
the repository alone — its graph, state names, dims and initial-state files, driven the way the
sequence batcher drives it (implicit state, sequences batched along axis 0, each started from its
initial state) — gives every stream what the one-stream step graph gives it.

Triton itself is not run here: its onnxruntime backend ships only in NVIDIA's container, which
this machine cannot fetch."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from speechnorm.stream.backends import OnnxModel
from speechnorm.triton_repo import write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

MICS, MAX_BATCH = 3, 8


@pytest.fixture(scope="module")
def repository(tiny_export, tmp_path_factory):
    folder = write_repository(tiny_export[0], tmp_path_factory.mktemp("triton"), mics=MICS, max_batch=MAX_BATCH,
                              name="tiny")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return folder, config


def test_the_config_is_valid_for_triton_and_names_every_state_of_the_graph(repository, tiny_export):
    folder, config = repository
    assert (config.name, config.backend, config.max_batch_size) == ("tiny", "onnxruntime", MAX_BATCH)
    assert config.sequence_batching.oldest.max_candidate_sequences == MAX_BATCH
    graph = onnx.load(folder / "1" / "model.onnx").graph
    graph_inputs = {value.name for value in graph.input}
    graph_outputs = {value.name for value in graph.output}
    states = config.sequence_batching.state
    assert {s.input_name for s in states} | {i.name for i in config.input} == graph_inputs
    assert {s.output_name for s in states} | {o.name for o in config.output} == graph_outputs
    model = OnnxModel(tiny_export[0] / "model.onnx")
    for state, spec in zip(states, model.states):
        assert tuple(state.dims) == spec.shape_for(MICS) == tuple(state.initial_state[0].dims)
    assert list(config.input[0].dims) == [MICS, model.hop]


def test_a_schema_error_is_caught_by_the_parser(repository):
    folder, _ = repository
    broken = (folder / "config.pbtxt").read_text().replace("max_candidate_sequences", "max_candidate_seqs")
    with pytest.raises(text_format.ParseError, match="max_candidate_seqs"):
        text_format.Parse(broken, model_config_pb2.ModelConfig())


def initial_state(folder: Path, state) -> np.ndarray:
    (start,) = state.initial_state  # a repeated field in the schema: one entry here
    if start.zero_data:
        return np.zeros(tuple(start.dims), np.float32)
    return np.fromfile(folder / "initial_state" / start.data_file, "<f4").reshape(tuple(start.dims))


def test_the_repository_driven_like_the_sequence_batcher_gives_each_stream_its_own_result(repository, tiny_export):
    folder, config = repository
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = OnnxModel(tiny_export[0] / "model.onnx")
    rng = np.random.default_rng(0)
    hops, starts = 40, [0, 0, 5, 12]  # sequences start at different requests
    audio = [(0.1 * rng.standard_normal((hops, MICS, model.hop))).astype(np.float32) for _ in starts]
    states = config.sequence_batching.state
    kept: dict[int, dict] = {}  # Triton's per-sequence store of implicit state
    alone = [model.open(MICS) for _ in starts]
    worst = 0.0
    for t in range(hops + max(starts)):
        live = [k for k, start in enumerate(starts) if start <= t < start + hops]
        for k in live:
            if k not in kept:  # sequence_start: the initial state
                kept[k] = {s.input_name: initial_state(folder, s) for s in states}
        feeds = {config.input[0].name: np.stack([audio[k][t - starts[k]] for k in live])}
        for s in states:
            feeds[s.input_name] = np.stack([kept[k][s.input_name] for k in live])
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        for row, k in enumerate(live):
            for s in states:
                kept[k][s.input_name] = outputs[s.output_name][row]
            expected = alone[k].step(audio[k][t - starts[k]])
            worst = max(worst, float(np.abs(outputs[config.output[0].name][row] - expected).max()))
    assert worst <= 1e-6


def test_bad_requests_are_refused_with_what_to_do(tiny_export, tmp_path):
    import shutil

    with pytest.raises(ValueError, match="microphones"):
        write_repository(tiny_export[0], tmp_path / "a", mics=99)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_export[0] / "model.onnx", bare / "model.onnx")
    with pytest.raises(FileNotFoundError, match="model_batch.onnx"):
        write_repository(bare, tmp_path / "b")
