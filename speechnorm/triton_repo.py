"""A model repository for NVIDIA Triton Inference Server: many streams, state kept by the server.

    speechnorm export models/tac_gru_online_small_v2 -o triton_models --target triton --mics 4

writes, from an exported model folder (numpy and onnxruntime only)::

    triton_models/<name>/config.pbtxt
    triton_models/<name>/1/model.onnx          the batched step graph (model_batch.onnx)
    triton_models/<name>/initial_state/<...>   each non-zero initial state, raw float32
    triton_models/<name>/README.md             how to serve it and stream to it

The graph runs on Triton's onnxruntime backend under the **sequence batcher with implicit
state**: a client streams hops of one sequence (``sequence_id``, ``sequence_start`` on the
first, ``sequence_end`` on the last); Triton keeps every sequence's state tensors between
requests (``state.<path>`` in, ``next_state.<path>`` out, batch-first as the batched graph
takes them), starts each new sequence from ``initial_state``, and batches the hops of up to
``max_batch`` sequences into one call (``oldest`` strategy, bounded queue delay) — the same
batching ``speechnorm serve`` does in-process. One repository serves one mic count (the
config's dims are fixed; export one per array size).

Each request carries one hop at the model's rate (``audio`` (mics, hop) float32) and returns
``enhanced`` (hop,), delayed by the model's ``delay_samples`` like the step graph's output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .graph_io import AUDIO, ENHANCED, next_name
from .stream.backends import BATCH_FILE, OnnxModel

CONFIG, VERSION, INITIAL_STATE_DIR = "config.pbtxt", "1", "initial_state"


def _dims(shape) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def config_text(model: OnnxModel, name: str, mics: int, max_batch: int, queue_delay_us: int,
                idle_us: int) -> tuple[str, dict[str, np.ndarray]]:
    """``config.pbtxt`` and the initial-state files it names ({file name: float32 array})."""
    states, files = [], {}
    for spec in model.states:
        initial = spec.initial_for(mics).astype("<f4")
        if np.any(initial):
            files[spec.path] = initial
            start = f'data_file: "{spec.path}"'
        else:
            start = "zero_data: true"
        states.append(
            "    {\n"
            f'      input_name: "{spec.name}"\n'
            f'      output_name: "{next_name(spec.name)}"\n'
            "      data_type: TYPE_FP32\n"
            f"      dims: {_dims(initial.shape)}\n"
            "      initial_state {\n"
            "        data_type: TYPE_FP32\n"
            f"        dims: {_dims(initial.shape)}\n"
            f"        {start}\n"
            f'        name: "{spec.path} at the start of a sequence"\n'
            "      }\n"
            "    }")
    text = f"""# {name}: the batched streaming step of a speechnorm model, {mics} mics, {model.sample_rate} Hz,
# hops of {model.hop} samples; one sequence per stream, its state kept by Triton (implicit state).
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
input [
  {{
    name: "{AUDIO}"
    data_type: TYPE_FP32
    dims: {_dims((mics, model.hop))}
  }}
]
output [
  {{
    name: "{ENHANCED}"
    data_type: TYPE_FP32
    dims: {_dims((model.hop,))}
  }}
]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  oldest {{
    max_candidate_sequences: {max_batch}
    preferred_batch_size: [ {max_batch} ]
    max_queue_delay_microseconds: {queue_delay_us}
  }}
  state [
{(","+chr(10)).join(states)}
  ]
}}
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
"""
    return text, files


def write_repository(model_dir: str | Path, repo: str | Path, mics: int = 4, max_batch: int = 64,
                     queue_delay_us: int = 8000, idle_us: int = 5_000_000, name: str | None = None) -> Path:
    """Write ``repo/<name>/`` from an exported model folder; returns the model's folder in the repository."""
    model_dir = Path(model_dir)
    batch_graph = model_dir / BATCH_FILE
    if not batch_graph.is_file():
        raise FileNotFoundError(f"{model_dir} has no batched step graph ({BATCH_FILE}); export it again with "
                                "`speechnorm export` (needs speechnorm[train])")
    model = OnnxModel(model_dir / "model.onnx")
    model.check_mics(mics)
    if model.speaker_dim:
        raise ValueError(f"{model_dir} is a personalized model: its speaker embedding enters when a stream opens, which "
                         "this repository's implicit-state configuration cannot do yet; serve it with `speechnorm serve`")
    if not 1 <= max_batch <= 1024:
        raise ValueError(f"max_batch must lie in [1, 1024], got {max_batch}")
    name = name or model.name
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a Triton model name of letters, digits, '_' and '-' is needed, got {name!r}")
    text, files = config_text(model, name, mics, max_batch, queue_delay_us, idle_us)
    folder = Path(repo) / name
    # rewrite what this writes (an earlier export's initial states included), leave anything else there
    shutil.rmtree(folder / INITIAL_STATE_DIR, ignore_errors=True)
    (folder / VERSION).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(batch_graph, folder / VERSION / "model.onnx")
    (folder / CONFIG).write_text(text)
    if files:
        (folder / INITIAL_STATE_DIR).mkdir()
        for file_name, array in files.items():
            (folder / INITIAL_STATE_DIR / file_name).write_bytes(np.ascontiguousarray(array).tobytes())
    (folder / "README.md").write_text(_readme(model, name, mics, max_batch))
    return folder


def _readme(model: OnnxModel, name: str, mics: int, max_batch: int) -> str:
    return f"""# {name} for Triton Inference Server

The batched streaming step of `{model.name}` ({mics} mics, {model.sample_rate} Hz, hops of
{model.hop} samples, output delayed by {model.delay_samples} samples), written by
`speechnorm export ... --target triton --mics {mics}`. Triton keeps each stream's state (implicit
state of the sequence batcher) and batches up to {max_batch} streams per call.

Serve the folder above this one with Triton's container (onnxruntime backend):

    docker run --rm -p 8001:8001 -v $PWD:/models nvcr.io/nvidia/tritonserver:24.10-py3 \\
        tritonserver --model-repository=/models

Stream to it, one request per hop, one sequence per stream (`pip install tritonclient[grpc]`):

```python
import numpy as np, tritonclient.grpc as grpc
client = grpc.InferenceServerClient("localhost:8001")
def step(hop, stream_id, first=False, last=False):   # hop: ({mics}, {model.hop}) float32 at {model.sample_rate} Hz
    audio = grpc.InferInput("{AUDIO}", [1, {mics}, {model.hop}], "FP32")
    audio.set_data_from_numpy(hop[None].astype(np.float32))
    result = client.infer("{name}", [audio], sequence_id=stream_id, sequence_start=first, sequence_end=last)
    return result.as_numpy("{ENHANCED}")[0]           # ({model.hop},)
```
"""
