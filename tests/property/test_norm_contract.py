"""The streaming contract, checked generically for every registered normalizer in both modes:
streamable => scanning step equals the sequence forward and the output is causal;
not streamable => step is refused, and (honesty of the flag) the output really is non-causal."""

import copy

import pytest
import torch

from speechnorm.norm import NotStreamableError, available, make_norm
from speechnorm.state import check_state, flatten

SHAPES = [(2, 6, 12), (3, 6, 12, 5)]
KINDS = sorted(available())


def fresh_forward(norm, x):
    """Forward on a copy, so training-mode buffer updates never leak between calls."""
    return copy.deepcopy(norm)(x)


def prepared(kind, training):
    norm = make_norm(kind, 6)
    with torch.no_grad():
        for name, buf in norm.named_buffers():
            if name.startswith("running_"):
                buf.uniform_(0.5, 1.5)
        for param in norm.parameters():
            param.uniform_(0.5, 1.5)
    return norm.train(training)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=["BCT", "BCTF"])
def test_streaming_contract(kind, training, shape):
    norm = prepared(kind, training)
    x = torch.randn(shape) * 2 + 0.5
    expected_streamable = {"always": True, "never": False, "eval only": not training}[available()[kind].streaming]
    assert norm.streamable == expected_streamable

    if not norm.streamable:
        with pytest.raises(NotStreamableError):
            norm.step(x[:, :, 0], {})
        with pytest.raises(NotStreamableError):
            norm.initial_state(shape[0])
        later = x.clone()
        later[:, :, 8:] += 3.0
        others = x.clone()
        others[1:] += 3.0
        # not streamable: its past depends on the future, or a sequence's output on its batch's others
        future = not torch.allclose(fresh_forward(norm, x)[:, :, :8], fresh_forward(norm, later)[:, :, :8])
        coupled = not torch.allclose(fresh_forward(norm, x)[:1], fresh_forward(norm, others)[:1])
        assert future or coupled, f"{kind} claims not to stream, but each sequence is causal and on its own"
        return

    with torch.no_grad():
        state = norm.initial_state(shape[0])
        assert isinstance(state, dict) and all(isinstance(s, torch.Tensor) for s in flatten(state).values())
        check_state(norm, state, shape[0])
        frames = []
        for t in range(shape[2]):
            y_t, state = norm.step(x[:, :, t], state)
            check_state(norm, state, shape[0])
            frames.append(y_t)
        whole = fresh_forward(norm, x)
    torch.testing.assert_close(torch.stack(frames, dim=2), whole, atol=1e-5, rtol=1e-5)

    for t in (0, 5, shape[2] - 2):
        changed = x.clone()
        changed[:, :, t + 1 :] = torch.randn_like(changed[:, :, t + 1 :]) * 5
        torch.testing.assert_close(fresh_forward(norm, changed)[:, :, : t + 1], whole[:, :, : t + 1])
