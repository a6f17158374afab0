import os

import pytest
import torch

if not torch.cuda.is_available():
    # Run the Triton kernels in the interpreter on the CPU; must precede the kernels' import.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small corpus on disk: speech-like tones and noises, plus one bad file of each kind."""
    import numpy as np
    import soundfile as sf

    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clean_dir = _mk(root / "clean")
    for i in range(6):  # voiced, amplitude-modulated harmonic tones: speech-like enough for the pipeline
        f0 = 110 + 20 * i
        voiced = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        sf.write(clean_dir / f"utt{i}.wav", (0.3 * voiced / np.abs(voiced).max()).astype(np.float32), 16000, subtype="PCM_16")
    noise_dir = _mk(root / "noise")
    for i in range(3):
        sf.write(noise_dir / f"noise{i}.wav", (0.1 * rng.standard_normal(24000)).astype(np.float32), 22050)
    bad = _mk(root / "clean" / "bad")
    (bad / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage-not-audio" * 10)
    sf.write(bad / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(bad / "nan.wav", np.full(1000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(bad / "clipped.wav", np.sign(rng.standard_normal(16000)).astype(np.float32), 16000, subtype="FLOAT")
    sf.write(bad / "lowrate.wav", np.zeros(400, dtype=np.float32) + 0.1, 4000)
    return root


def _mk(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_checkpoint(path, name="tac_gru", norm="online", **config):
    """A checkpoint as training writes it (hyper-parameters + ``model.*`` weights) of an untrained
    model whose normalizer statistics are perturbed away from their initial values."""
    from speechnorm.models import build

    model = build(name, norm=norm, size="small", **config)
    with torch.no_grad():
        for key, buffer in model.named_buffers():
            if key.endswith("running_mean"):
                buffer.normal_(0, 0.5)
            elif key.endswith(("running_var", "running_moment")):
                buffer.uniform_(0.5, 2.0)
    from speechnorm.models.checkpoint import NORM_DEFAULTS_KEY
    from speechnorm.norm import DEFAULTS_VERSION

    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": name, "norm": norm, "size": "small", "model_config": config or None},
                NORM_DEFAULTS_KEY: DEFAULTS_VERSION}, path)
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A small TAC-GRU (hidden 32) exported to ONNX: (folder, checkpoint path)."""
    from speechnorm.export import export_model

    root = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(1)
    checkpoint = save_checkpoint(root / "model.ckpt", hidden=32, layers=1)
    export_model(checkpoint, root, max_mics=6)
    return root, checkpoint
