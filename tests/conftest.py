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


PACK_FIELDS = ["file", "kind", "speaker", "language", "package", "version", "licence", "seconds", "split"]


def _pack_voice(seconds, f0, seed):
    import numpy as np

    t = np.arange(int(seconds * 16_000)) / 16_000
    harmonics = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 30) if k * f0 < 7500)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed)
    return (0.3 * harmonics / np.abs(harmonics).max() * envelope).astype(np.float32)


@pytest.fixture()
def pack_corpus(tmp_path):
    """A `speechnorm data` corpus in miniature: 5 utterances of 4 speakers over the splits (one screened
    out of training), 3 noise pieces, manifests and screen.csv."""
    import csv

    import numpy as np
    import soundfile as sf

    root = tmp_path / "corpus"
    for kind in ("speech", "noise"):
        (root / kind).mkdir(parents=True)
    rows = {"speech": [], "noise": []}
    for i, (split, speaker) in enumerate([("train", "a"), ("train", "b"), ("train", "a"), ("val", "c"), ("test", "d")]):
        sf.write(root / "speech" / f"u{i}.flac", _pack_voice(1.5 + 0.25 * i, 110 + 30 * i, i), 16_000)
        rows["speech"].append({"file": f"u{i}.flac", "kind": "speech", "speaker": speaker, "language": "xx",
                               "package": "pkg", "version": "1", "licence": "CC0", "seconds": 1.5 + 0.25 * i, "split": split})
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(root / "noise" / f"n{i}.flac", (0.05 * rng.standard_normal(2 * 16_000)).astype(np.float32), 16_000)
        rows["noise"].append({"file": f"n{i}.flac", "kind": "noise", "speaker": "", "language": "", "package": "pkg",
                              "version": "1", "licence": "CC0", "seconds": 2.0, "split": ["train", "val", "test"][i]})
    for kind, kind_rows in rows.items():
        with open(root / kind / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=PACK_FIELDS)
            writer.writeheader()
            writer.writerows(kind_rows)
    with open(root / "speech" / "screen.csv", "w", newline="") as handle:
        handle.write("file,kept,reason\nu0.flac,1,\nu1.flac,0,dnsmos_ovrl\nu2.flac,1,\nu3.flac,1,\nu4.flac,1,\n")
    return root


