"""``speechnorm serve --processes N``: N server processes sharing one port, one health view.

Each process is a whole ``EnhancementServer`` (its own model session, event loop and streams)
bound to the same port with ``SO_REUSEPORT``: the kernel spreads new connections over the
processes, and a stream stays in the process that accepted it, because its state lives there.
Each process publishes its ``/health`` body to a shared folder twice a second (``HealthBoard``);
``/health`` on any process adds the others' fresh bodies, so an operator sees every stream.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

PUBLISH_EVERY_S = 0.5
STALE_AFTER_S = 5.0


class HealthBoard:
    """One JSON file per process in ``folder``; written atomically, read by the others."""

    def __init__(self, folder: str | Path, index: int, processes: int):
        self.folder, self.index, self.processes = Path(folder), index, processes

    def publish(self, body: dict) -> None:
        tmp = self.folder / f".{self.index}.json.tmp"
        tmp.write_text(json.dumps({**body, "published": time.time()}))
        os.replace(tmp, self.folder / f"{self.index}.json")

    def others(self) -> list[dict]:
        """The other processes' latest bodies, leaving out any not refreshed for ``STALE_AFTER_S``."""
        bodies = []
        for index in range(self.processes):
            if index == self.index:
                continue
            try:
                body = json.loads((self.folder / f"{index}.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if time.time() - body.get("published", 0) < STALE_AFTER_S:
                bodies.append(body)
        return bodies


def combine(own: dict, others: list[dict], processes: int) -> dict:
    """One health body for the whole pool: counters summed, streams listed, per-process counts kept."""
    parts = [own, *others]
    connections = {key: sum(p["connections"][key] for p in parts) for key in ("active", "served", "slow_consumers_dropped")}
    connections["max"] = sum(p["connections"]["max"] for p in parts)
    batching = [p.get("batching") for p in parts]
    if all(batching):
        rounds, hops = sum(b["rounds"] for b in batching), sum(b["hops"] for b in batching)
        own = {**own, "batching": {**batching[0], "rounds": rounds, "hops": hops,
                                   "mean_batch": round(hops / rounds, 2) if rounds else None}}
    return {**own, "connections": connections, "streams": [s for p in parts for s in p["streams"]],
            "processes": {"configured": processes, "reporting": len(parts),
                          "active_per_process": [p["connections"]["active"] for p in parts]}}


def _worker(index: int, processes: int, folder: str, kwargs: dict) -> None:
    from .server import run_one

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the pool stops
    run_one(board=HealthBoard(folder, index, processes), id_start=index + 1, id_step=processes, **kwargs)


def serve_pool(processes: int, **kwargs) -> None:
    """Run ``processes`` servers on one port; this process is the first, the others are children."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    from .server import run_one

    if processes == 1:
        return run_one(**kwargs)
    folder = tempfile.mkdtemp(prefix="speechnorm-serve-")
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_worker, args=(i, processes, folder, kwargs), daemon=True)
                for i in range(1, processes)]
    for child in children:
        child.start()
    try:
        run_one(board=HealthBoard(folder, 0, processes), id_start=1, id_step=processes, **kwargs)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.join(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
