"""How many concurrent real-time streams does `speechnorm serve` sustain on this machine?

    python scripts/load_test.py                       # N = 1, 2, 4, 8, ... until a run has underruns
    python scripts/load_test.py --streams 4 8 --seconds 20 --mics 4
    python scripts/load_test.py --streams 1 --hog --workers 0   # beside a client sending 1 MiB every 2 s
    python scripts/load_test.py --streams 8 32 64 --compare --processes 2 --client-processes 2

Starts the server as a subprocess (its own process, its own cores), then N clients in this
process (or spread over ``--client-processes`` processes), each sending the bundled example at
real-time pace in 10 ms messages (a live microphone). ``--compare`` runs every count twice in one
run: one model call per stream and hop (``--max-batch 1``), then streams batched (the default). A reply later than its playback deadline (sent time + a 40 ms playback buffer) is an
underrun. Prints, per N: underruns, round-trip latency p50/p99 over all messages, and the
server's CPU time per second of audio per stream (its RTF: all of its work, network and
protocol included) and, batched, the mean streams per model call. Clients and server share the machine.
``--hog`` adds one more client that sends maximum-size messages (1 MiB of 1-channel s16le, ~33 s
of audio) every 2 s, and prints the streams' slowest replies and how many came later than 40 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time

import json

import aiohttp
import numpy as np
import soundfile as sf

from speechnorm.assets import EXAMPLE
from speechnorm.client import stream_audio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(url: str, seconds: float = 60.0) -> None:
    """Until /health answers, from every process of a pool."""
    deadline = time.time() + seconds
    async with aiohttp.ClientSession() as client:
        while time.time() < deadline:
            try:
                response = await client.get(url)
                pool = (await response.json()).get("processes") if response.status == 200 else None
                if response.status == 200 and (pool is None or pool["reporting"] == pool["configured"]):
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the server did not come up")


async def hog(url: str, max_bytes: int, stop: asyncio.Event) -> int:
    """Send maximum-size messages every 2 s until ``stop``; returns how many were answered."""
    payload = (np.random.default_rng(0).integers(-3000, 3000, max_bytes // 2)).astype("<i2").tobytes()
    answered = 0
    async with aiohttp.ClientSession() as client, client.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000, "channels": 1, "format": "s16le"}))
        await ws.receive()
        while not stop.is_set():
            await ws.send_bytes(payload)
            await ws.receive()
            answered += 1
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except asyncio.TimeoutError:
                pass
    return answered


def client_cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the client processes; the server still runs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (a pool's processes), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def client_streams(url: str, audio: np.ndarray, rate: int, streams: int, buffer_ms: float) -> list:
    results = await asyncio.gather(*(stream_audio(url, audio, rate, realtime=True, playback_buffer_ms=buffer_ms)
                                     for _ in range(streams)), return_exceptions=True)
    return [r if isinstance(r, BaseException) else (np.asarray(r.latencies_ms), r.underruns) for r in results]


def run(coroutine):
    """The clients on uvloop where installed (less client CPU on a machine the server shares)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def client_process(url: str, audio: np.ndarray, rate: int, streams: int, buffer_ms: float) -> list:
    results = run(client_streams(url, audio, rate, streams, buffer_ms))
    return [RuntimeError(repr(r)) if isinstance(r, BaseException) else r for r in results]


async def run_streams(url: str, audio: np.ndarray, rate: int, streams: int, buffer_ms: float,
                      with_hog: bool = False, client_processes: int = 1) -> dict:
    stop = asyncio.Event()
    hogging = asyncio.create_task(hog(url, 1 << 20, stop)) if with_hog else None
    if hogging is not None:
        await asyncio.sleep(0.5)
    if client_processes > 1:
        shares = [len(part) for part in np.array_split(np.arange(streams), client_processes) if len(part)]
        with concurrent.futures.ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
            loop = asyncio.get_running_loop()
            parts = await asyncio.gather(*(loop.run_in_executor(pool, client_process, url, audio, rate, n, buffer_ms)
                                           for n in shares))
        results = [r for part in parts for r in part]
    else:
        results = await client_streams(url, audio, rate, streams, buffer_ms)
    stop.set()
    hogged = await hogging if hogging is not None else 0
    failed = [r for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    if failed:
        print(f"# {len(failed)} stream(s) failed, e.g. {failed[0]!r}", file=sys.stderr)
    latencies = np.concatenate([r[0] for r in ok]) if ok else np.zeros(1)
    return {"streams": streams, "failed": len(failed), "underruns": sum(r[1] for r in ok),
            "messages": int(latencies.size), "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "max_ms": float(latencies.max()),
            "over_40ms": int((latencies > 40).sum()), "hog_messages": hogged}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=None, help="stream counts to try (default: doubling)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per stream")
    parser.add_argument("--mics", type=int, default=4)
    parser.add_argument("--buffer-ms", type=float, default=40.0, help="the client's playback buffer")
    parser.add_argument("--model", default=None)
    parser.add_argument("--workers", type=int, default=None, help="the server's model threads (0: in its event loop)")
    parser.add_argument("--hog", action="store_true", help="one more client sending 1 MiB messages every 2 s")
    parser.add_argument("--processes", type=int, default=1, help="server processes sharing the port")
    parser.add_argument("--max-batch", type=int, default=None, help="the server's streams per model call (1: one call per stream)")
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="the server's longest wait for other streams' hops")
    parser.add_argument("--compare", action="store_true",
                        help="run every count with one model call per stream and hop, then batched (same run)")
    parser.add_argument("--client-processes", type=int, default=1, help="processes the clients are spread over")
    args = parser.parse_args(argv)
    modes = [1, args.max_batch or 64] if args.compare else [args.max_batch]
    for max_batch in modes:
        run_server(args, max_batch)
    return 0


def run_server(args, max_batch: int | None) -> None:
    audio, rate = sf.read(EXAMPLE, dtype="float32", always_2d=True)
    audio = np.ascontiguousarray(np.tile(audio.T[: args.mics], (1, int(np.ceil(args.seconds * rate / audio.shape[0]))))
                                 [:, : int(args.seconds * rate)])
    port = free_port()
    command = [sys.executable, "-m", "speechnorm", "serve", "--port", str(port), "--max-connections", "256"]
    if args.model:
        command += ["--model", args.model]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.processes > 1:
        command += ["--processes", str(args.processes)]
    if max_batch is not None:
        command += ["--max-batch", str(max_batch)]
    if args.batch_wait_ms is not None:
        command += ["--batch-wait-ms", str(args.batch_wait_ms)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        health_url = f"http://127.0.0.1:{port}/health"
        asyncio.run(wait_healthy(health_url))
        batching = asyncio.run(get_health(health_url)).get("batching")
        mode = (f"streams batched, up to {batching['max_batch']} per model call, waiting at most {batching['wait_ms']:g} ms"
                if batching else "one model call per stream and hop")
        print(f"\n# {args.processes} server process(es), {mode}; {args.mics}-mic streams of {args.seconds:g} s at real-time "
              f"pace, 10 ms messages, {args.buffer_ms:g} ms playback buffer; clients in {args.client_processes} other "
              f"process(es); {os.cpu_count()} CPUs shared by server and clients\n")
        if args.hog:
            print("# beside them, one client sends a 1 MiB message (~33 s of 1-channel s16le audio) every 2 s\n")
        print("| streams | underruns | failed | messages | round trip p50 ms | p99 ms | max ms | > 40 ms "
              "| server CPU s per stream-s | server cores | client cores | streams per call |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        counts = args.streams or [2**k for k in range(0, 8)]
        sustained = 0
        for n in counts:
            before, calls_before = cpu_seconds(server.pid), asyncio.run(get_health(health_url)).get("batching")
            clients_before, started = client_cpu_seconds(), time.perf_counter()
            r = run(run_streams(f"ws://127.0.0.1:{port}/ws", audio, rate, n, args.buffer_ms, args.hog,
                                        args.client_processes))
            rtf = (cpu_seconds(server.pid) - before) / (n * args.seconds)
            client_cores = (client_cpu_seconds() - clients_before) / (time.perf_counter() - started)
            calls = asyncio.run(get_health(health_url)).get("batching")
            per_call = "-"
            if calls and calls["rounds"] > calls_before["rounds"]:
                per_call = f"{(calls['hops'] - calls_before['hops']) / (calls['rounds'] - calls_before['rounds']):.1f}"
            print(f"| {n} | {r['underruns']} | {r['failed']} | {r['messages']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                  f"| {r['max_ms']:.2f} | {r['over_40ms']} | {rtf:.4f} | {rtf * n:.2f} | {client_cores:.2f} | {per_call} |",
                  flush=True)
            if r["underruns"] or r["failed"]:
                if args.streams is None:
                    break
            else:
                sustained = max(sustained, n)
        print(f"\nsustained without underruns: {sustained} concurrent {args.mics}-mic streams ({mode})")
        if args.hog:
            print(f"the hog's 1 MiB messages answered in the last run: {r['hog_messages']}")
    finally:
        server.terminate()
        server.wait(timeout=10)


async def get_health(url: str) -> dict:
    async with aiohttp.ClientSession() as client:
        return await (await client.get(url)).json()


if __name__ == "__main__":
    sys.exit(main())
