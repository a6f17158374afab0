"""ONNX export: the step graph and the offline graph compute what PyTorch computes, checked here
with plain onnxruntime calls (not the project's own backend), on other inputs than export used."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import save_checkpoint

from speechnorm.export import ExportError, export_model
from speechnorm.models.checkpoint import load_model


def ort_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def initial_state(session, mics):
    meta = json.loads(session.get_modelmeta().custom_metadata_map["speechnorm"])
    states = {}
    for spec in meta["states"]:
        import base64

        value = np.frombuffer(base64.b64decode(spec["initial_float32_base64"]), "<f4").reshape(spec["shape"])
        states[spec["name"]] = value if spec["mic_axis"] is None else np.repeat(value, mics, axis=spec["mic_axis"])
    return states


@pytest.mark.parametrize("name, config", [("tac_gru", dict(hidden=32, layers=2)), ("tac_crn", dict(channels=(8, 16), hidden=32))])
def test_step_and_offline_graphs_match_pytorch(tmp_path, name, config):
    checkpoint = save_checkpoint(tmp_path / "model.ckpt", name, **config)
    card = export_model(checkpoint, tmp_path / "out", max_mics=5)
    model, _ = load_model(checkpoint)
    step, offline = ort_session(tmp_path / "out" / "model.onnx"), ort_session(tmp_path / "out" / "model_offline.onnx")
    assert [i.name for i in step.get_inputs()][0] == "audio" and step.get_outputs()[0].name == "enhanced"
    # every state tensor is named after the layer that declares it, in and out
    for name in [i.name for i in step.get_inputs()][1:]:
        assert name.startswith("state.") and "next_" + name in [o.name for o in step.get_outputs()]
        module_path, entry = name.removeprefix("state.").rsplit(".", 1)
        assert entry in model.get_submodule(module_path).state_spec(), name
        assert card["onnx"]["step_graph"]["states"][name]["meaning"]
    assert card["onnx"]["hop_samples"] == model.hop and card["onnx"]["latency_ms"] == model.latency_ms
    rng = np.random.default_rng(0)
    for mics in (2, 5):  # neither is the mic count the graph was traced with
        audio = (0.1 * rng.standard_normal((mics, 25 * model.hop))).astype(np.float32)
        state, feeds = model.initial_state(1, mics=mics), initial_state(step, mics)
        names = [i.name for i in step.get_inputs()][1:]
        for t in range(25):
            hop = audio[:, t * model.hop : (t + 1) * model.hop]
            with torch.inference_mode():
                expected, state = model.step(torch.from_numpy(hop)[None], state)
            got, *new = step.run(None, {"audio": hop, **feeds})
            np.testing.assert_allclose(got, expected[0].numpy(), atol=1e-5)
            feeds = dict(zip(names, new))
        for samples in (7 * model.hop, 25 * model.hop):  # the time axis is dynamic
            with torch.inference_mode():
                whole = model(torch.from_numpy(audio[:, :samples])[None])[0].numpy()
            np.testing.assert_allclose(offline.run(None, {"audio": audio[:, :samples]})[0], whole, atol=1e-4)


def test_card_and_metadata(tiny_export):
    folder, _ = tiny_export
    card = json.loads((folder / "card.json").read_text())
    onnx_card = card["onnx"]
    assert onnx_card["mics"] == {"min": 1, "max": 6, "axis_name": "mics", "reference": 0}
    diffs = onnx_card["verification"]["max_abs_diff"]
    assert set(diffs) == {"1", "4", "6"} and max(max(d.values()) for d in diffs.values()) <= 1e-4
    graph = onnx.load(folder / "model.onnx")
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert inputs["audio"] == ["mics", 160]
    assert inputs == onnx_card["step_graph"]["inputs"]


def test_a_failed_verification_writes_nothing(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "model.ckpt", hidden=32, layers=1)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_model(checkpoint, tmp_path / "out", tolerance=1e-12)
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_are_refused(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        export_model(tmp_path / "junk.ckpt", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        export_model(tmp_path / "missing.ckpt", tmp_path / "out")
    torch.save({"state_dict": {}, "hyper_parameters": {"model": "nope"}}, tmp_path / "unknown.ckpt")
    with pytest.raises(ValueError, match="unknown model"):
        export_model(tmp_path / "unknown.ckpt", tmp_path / "out")
