"""`speechnorm demo`: what Online Normalization does, shown on a drifting multi-channel stream.

Until a trained model ships, this is the job the quick start runs. It prints three things a
user of the layer relies on:
1. tracking — a stream whose level drifts by 40 dB comes out with steady statistics;
2. symmetry — streaming one frame at a time gives the offline output, sample for sample;
3. the control process — the input gradient has (almost) no mean and no component along y,
   as batch normalization's would, with no batch at all.
"""

from __future__ import annotations

import torch

from .norm import OnlineNorm


def drifting_stream(frames: int, channels: int, bins: int, generator: torch.Generator) -> torch.Tensor:
    """(1, C, T, F): noise whose gain sweeps 40 dB and whose offset drifts over time."""
    t = torch.linspace(0.0, 1.0, frames)
    gain = 10.0 ** (2.0 * t - 1.0)  # 0.1 .. 10
    offset = 3.0 * torch.sin(2 * torch.pi * t)
    noise = torch.randn(1, channels, frames, bins, generator=generator)
    return noise * gain.view(1, 1, -1, 1) + offset.view(1, 1, -1, 1)


def run(frames: int = 2000, channels: int = 8, bins: int = 64, seed: int = 0, echo=print) -> dict[str, float]:
    """Run the demo and return the figures it printed."""
    generator = torch.Generator().manual_seed(seed)
    x = drifting_stream(frames, channels, bins, generator)
    norm = OnlineNorm(channels, alpha_fwd=0.99, ecm=None, stream_axis="time")

    echo(f"OnlineNorm demo: one stream, {channels} channels x {bins} bins, {frames} frames (10 ms hops)")
    echo(f"  {norm}\n")
    echo("1. Tracking a drifting input (per quarter of the stream):")
    echo("   quarter   input mean  input std  ->  output mean  output std")
    state = norm.initial_state(1)  # before the training-mode forward moves the running statistics
    inputs = x.clone().requires_grad_(True)
    out = norm(inputs)
    figures = {}
    for q, chunk in enumerate(torch.chunk(torch.arange(frames), 4)):
        xs, ys = x[:, :, chunk], out.detach()[:, :, chunk]
        echo(f"   {q + 1}/4      {xs.mean():10.3f} {xs.std():10.3f}  ->  {ys.mean():11.3f} {ys.std():11.3f}")
        figures[f"output_std_q{q + 1}"] = ys.std().item()

    streamed = []
    with torch.no_grad():
        for t in range(frames):
            y_t, state = norm.step(x[:, :, t], state)
            streamed.append(y_t)
    gap = (torch.stack(streamed, dim=2) - out.detach()).abs().max().item()
    figures["stream_vs_offline_max_abs"] = gap
    echo(f"\n2. Streaming {frames} single frames through step() vs the offline forward: max |diff| = {gap:.2e}")

    y = out.detach()
    grad = 0.5 + 0.7 * y + 0.3 * torch.randn(y.shape, generator=generator)  # has a mean and a y-part
    out.backward(grad)
    x_grad = inputs.grad
    along_one = x_grad.mean(dim=-1).mean().item()
    along_y = (x_grad * y).mean(dim=-1).mean().item()
    incoming = grad.mean().item(), (grad * y).mean().item()
    figures.update(grad_mean=along_one, grad_dot_y=along_y)
    echo("\n3. The control process on the backward pass (means over all frames):")
    echo(f"   incoming gradient:  mean = {incoming[0]:+.4f}   mean(g*y)  = {incoming[1]:+.4f}")
    echo(f"   gradient to input:  mean = {along_one:+.4f}   mean(x'*y) = {along_y:+.4f}")
    echo("\nNext: `make test` runs the test suite; scripts/bench_norm.py times the layer.")
    return figures
