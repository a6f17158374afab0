"""The `speechnorm` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(frames=args.frames, seed=args.seed)
    return 0


def _norms(args: argparse.Namespace) -> int:
    from .norm import available

    specs = available()
    width = max(len(name) for name in specs)
    print(f"{'kind':<{width}}  streams     description")
    for name, spec in sorted(specs.items()):
        print(f"{name:<{width}}  {spec.streaming:<10}  {spec.summary}")
    return 0


def _models(args: argparse.Namespace) -> int:
    import torch

    from .models import available, build, count_parameters
    from .models.speed import step_timings, summarize

    torch.set_num_threads(1)
    print("model     size   params     latency  RTF (1 thread, 1 mic)  summary")
    for name, spec in sorted(available().items()):
        for size in spec.sizes:
            model = build(name, size=size)
            speed = summarize(model, step_timings(model, hops=args.hops)) if args.hops else {"rtf": float("nan")}
            print(
                f"{name:<9} {size:<6} {count_parameters(model):>9,}  {model.latency_ms:>4.0f} ms  {speed['rtf']:>8.3f}"
                f"               {spec.summary}"
            )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    result = evaluate(args.checkpoint, split=args.split, out=args.out, items=args.items, backend=args.backend)
    print((Path(args.out) / "metrics.md").read_text(), end="")
    print(f"wrote {args.out}/metrics.json, metrics.md and {min(3, result['items'])} spectrogram PNGs")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.target == "triton":
        return _export_triton(args)
    from .export import export_model

    card = export_model(args.checkpoint, args.out, max_mics=args.max_mics)
    diffs = card["onnx"]["verification"]["max_abs_diff"]
    worst = max(max(d.values()) for d in diffs.values())
    batch = card["onnx"]["verification"]["batch_max_abs_diff"]
    print(f"wrote {args.out}/model.onnx (step), model_batch.onnx (streams batched), model_offline.onnx and card.json; "
          f"onnxruntime vs PyTorch on real speech, mics {', '.join(diffs)}: max |diff| {worst:.2e}; batched vs one "
          f"stream: {batch:.2e}")
    return 0


def _export_triton(args: argparse.Namespace) -> int:
    """A Triton model repository, from an exported folder (runtime only) or from a checkpoint (exported first)."""
    import tempfile
    from pathlib import Path

    from .stream.backends import BATCH_FILE, STEP_FILE
    from .triton_repo import write_repository

    source = Path(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        exported = source.is_dir() and (source / STEP_FILE).is_file()
        if not exported or not ((source / BATCH_FILE).is_file() or not (source / "model.ckpt").is_file()):
            # a checkpoint, or an exported folder from before the batched graph that still holds its checkpoint
            from .export import export_model

            export_model(source, tmp, max_mics=max(args.max_mics, args.mics))
            source = Path(tmp)
        folder = write_repository(source, args.out, mics=args.mics, max_batch=args.max_batch,
                                  queue_delay_us=int(1000 * args.batch_wait_ms))
    print(f"wrote the Triton model {folder} ({args.mics} mics, up to {args.max_batch} streams per call, state kept by "
          f"Triton's sequence batcher); serve {args.out} with tritonserver --model-repository, see {folder}/README.md")
    return 0


def _enhance(args: argparse.Namespace) -> int:
    from .enhance import enhance_file

    if args.reference:
        from .scoring import quality_metrics  # noqa: F401  (scoring needs the training install: fail before enhancing)
    done = enhance_file(args.input, args.output, model=args.model, backend=args.backend, offline=args.offline,
                        enroll=args.enroll)
    seconds = done["samples"] / done["sample_rate"]
    print(f"enhanced {done['input']} ({done['mics']} mics, {done['sample_rate']} Hz, {seconds:.1f} s) -> {done['output']}")
    if args.reference:
        from .enhance import score_against

        scores = score_against(args.input, args.output, args.reference)
        print(f"against {args.reference}:")
        print("  metric   noisy (mic 0)  enhanced")
        for metric in ("si_sdr", "pesq", "stoi"):
            print(f"  {metric:<7} {scores['noisy'][metric]:>13.2f}  {scores['enhanced'][metric]:>8.2f}")
    return 0


def _bank(args: argparse.Namespace) -> int:
    import torch

    from .data.bank import BankError, BankSettings, build

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = BankSettings(rooms=args.rooms, mics=args.mics, sources=args.sources, t60=tuple(args.t60),
                                distance=tuple(args.distance), seed=args.seed, chunk=args.chunk)
        bank = build(args.out, settings, device=args.device, progress=lambda line: print(line, flush=True))
    except BankError as err:
        print(f"speechnorm bank: {err}", file=sys.stderr)
        return 2
    print(f"room bank: {len(bank)} rooms x {settings.mics} mics x {settings.sources} sources in {args.out}")
    return 0


def _screen(args: argparse.Namespace) -> int:
    import logging

    import torch

    from .data import screen

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    if not (args.speech_dir / "manifest.csv").exists():
        print(f"speechnorm screen: {args.speech_dir}/manifest.csv is missing: build the corpus with `speechnorm data`",
              file=sys.stderr)
        return 2
    floors = screen.Floors(dnsmos_ovrl=args.ovrl, dnsmos_bak=args.bak, noise_floor_db=args.noise_floor,
                           clip_fraction=args.clipping, high_band_db=args.high_band)
    if not args.decide_only:
        try:
            shard = tuple(int(part) for part in args.shard.split("/"))
            assert len(shard) == 2 and 0 <= shard[0] < shard[1]
        except (ValueError, AssertionError):
            print(f"speechnorm screen: --shard must be I/N with 0 <= I < N, got {args.shard!r}", file=sys.stderr)
            return 2
        screen.score(args.speech_dir, floors, packages=args.first, progress=lambda line: print(line, flush=True),
                     shard=shard)
    table = screen.report(screen.decide(args.speech_dir, floors))
    print(table)
    if args.out:
        Path(args.out).write_text(f"Screened speech of `{args.speech_dir}` ({floors}):\n\n{table}\n")
    return 0


def _data(args: argparse.Namespace) -> int:
    import logging

    from .data import festival, packages, synthetic

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.pack is not None and (args.root / "speech" / "manifest.csv").exists():
        return _pack(args)
    cache = args.cache or str(args.root / "cache")
    espeak = None
    if args.espeak_utterances > 0:
        espeak = synthetic.build(args.root / "espeak", utterances=args.espeak_utterances, seed=0, real_speech=True)
    voices = None
    if args.festival_utterances > 0:
        try:
            voices = festival.build(args.root / "festival", utterances=args.festival_utterances, seed=0)
        except festival.FestivalError as err:
            print(f"speechnorm data: no Festival voices ({err}); building without them "
                  "(--festival-utterances 0 skips them quietly)", file=sys.stderr)
    root = packages.build(args.root, cache=cache, espeak_dir=espeak, festival_dir=voices)
    print(packages.summary(root))
    print(f"\ncorpus: {root}/speech and {root}/noise (manifest.csv in each); train with "
          f"data.clean_dir={root}/speech data.noise_dir={root}/noise")
    return _pack(args) if args.pack is not None else 0


def _pack(args: argparse.Namespace) -> int:
    from .data import pack

    try:
        done = pack.write(args.pack, args.root / "speech", args.root / "noise", budget_mib=args.budget_mib,
                          screened=not args.unscreened)
    except (pack.PackError, FileNotFoundError) as err:
        print(f"speechnorm data: {err}", file=sys.stderr)
        return 2
    print(f"pack {args.pack}: {done['bytes'] / 2**20:.1f} MiB; speech {done['speech']['hours']} h, "
          f"{done['speech']['voices']} voices, {done['speech']['entries']} utterances; noise {done['noise']['hours']} h")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    import numpy as np

    from .speaker import embed_file

    embedding, used = embed_file(args.input)
    output = Path(args.output)
    if output.suffix != ".npy":
        raise ValueError(f"the embedding is written as .npy, got {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, embedding)
    print(f"enrolled {args.input}: {used.speech_seconds:.1f} s of speech found, {used.used_seconds:.1f} s used "
          f"({used.partials} windows of 1.6 s) -> {output} ({embedding.size}-d, unit length)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .enhance import default_model
    from .server import Limits, serve

    limits = Limits(max_connections=args.max_connections, max_message_bytes=args.max_message_bytes,
                    idle_timeout_s=args.idle_timeout, send_timeout_s=args.slow_consumer_timeout)
    serve(args.model or default_model(), host=args.host, port=args.port, limits=limits, backend=args.backend,
          workers=args.workers, expose_peers=args.health_peers, processes=args.processes, max_batch=args.max_batch,
          batch_wait_s=args.batch_wait_ms / 1000)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechnorm",
        description="Multi-channel streaming speech enhancement with Online Normalization.",
    )
    parser.add_argument("--version", action="version", version=f"speechnorm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="show Online Norm tracking, streaming and its control process")
    demo.add_argument("--frames", type=int, default=2000, help="stream length in frames (default 2000)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    norms = commands.add_parser("norms", help="list the registered normalizers and whether they stream")
    norms.set_defaults(run=_norms)
    evaluate = commands.add_parser("evaluate", help="metrics of a trained model on a split, vs the noisy input")
    evaluate.add_argument("checkpoint", help="a .ckpt file, a released model folder (models/NAME) or an exported .onnx")
    evaluate.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                          help="onnx: run a folder's exported graph in onnxruntime (auto: by the path)")
    evaluate.add_argument("--split", default="test", choices=("val", "test", "test_unseen"))
    evaluate.add_argument("--out", default="evaluation", help="folder for metrics.json, metrics.md and PNGs")
    evaluate.add_argument("--items", type=int, default=None, help="evaluate only the first N items")
    evaluate.set_defaults(run=_evaluate)
    export = commands.add_parser("export", help="export a checkpoint to ONNX (streaming step with state + offline graph), verified")
    export.add_argument("checkpoint", help="a .ckpt file, or a model folder holding model.ckpt (--target triton: "
                                           "or an exported folder)")
    export.add_argument("-o", "--out", required=True, help="folder for model.onnx, model_offline.onnx and card.json")
    export.add_argument("--max-mics", type=int, default=16, help="largest mic count the card allows (verified; default 16)")
    export.add_argument("--target", choices=("onnx", "triton"), default="onnx",
                        help="onnx: the model folder (default); triton: a model repository for NVIDIA Triton Inference "
                             "Server (batched step graph, implicit state) from a checkpoint or an exported folder")
    export.add_argument("--mics", type=int, default=4, help="triton: the repository's mic count (default 4)")
    export.add_argument("--max-batch", type=int, default=64, help="triton: streams per call (default 64)")
    export.add_argument("--batch-wait-ms", type=float, default=8.0, help="triton: the longest queue delay (default 8 ms)")
    export.set_defaults(run=_export)
    enhance = commands.add_parser("enhance", help="enhance a multi-channel WAV/FLAC file (streamed; any rate, 1-16 mics)")
    enhance.add_argument("input", help="WAV/FLAC, channel 0 is the reference mic")
    enhance.add_argument("-o", "--output", required=True, help="the enhanced mono file (.wav or .flac), at the input's rate")
    enhance.add_argument("--model", default=None, help="model folder, .onnx or .ckpt (default: models/tac_gru_online_small_v2; "
                                                          "with --enroll, models/tac_gru_online_small_personalized_v2)")
    enhance.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"))
    enhance.add_argument("--offline", action="store_true", help="whole-utterance path instead of streaming")
    enhance.add_argument("--reference", default=None, help="a clean reference file: print SI-SDR, PESQ and STOI before and after")
    enhance.add_argument("--enroll", default=None, help="personalized models: the target speaker, as 2-30 s of them "
                                                        "alone (WAV/FLAC) or a .npy from `speechnorm enroll`")
    enhance.set_defaults(run=_enhance)
    enroll = commands.add_parser("enroll", help="a speaker embedding from 2-30 s of the speaker alone (WAV/FLAC, "
                                                "16 kHz or more) -> .npy, for personalized enhancement")
    enroll.add_argument("input", help="WAV/FLAC of the target speaker alone (channel 0 is used)")
    enroll.add_argument("-o", "--output", required=True, help="the embedding, .npy (256 float32, unit length)")
    enroll.set_defaults(run=_enroll)
    data = commands.add_parser("data", help="build the real-speech corpus from Debian packages (apt-get download; "
                                            "audio never leaves the cache)")
    data.add_argument("--root", type=Path, default=Path(".cache/real_corpus"), help="where the corpus is written")
    data.add_argument("--cache", default=None, help="where .deb files are downloaded and unpacked (default ROOT/cache); "
                                                    "put .deb files in CACHE/debs to build without a network")
    data.add_argument("--espeak-utterances", type=int, default=240,
                      help="espeak-ng sentences added as extra training voices (0: none)")
    data.add_argument("--festival-utterances", type=int, default=40,
                      help="sentences per installed Festival voice added as extra training voices (0: none; "
                           "speechnorm/data/festival.py lists the voices' packages)")
    data.add_argument("--pack", type=Path, default=None, help="also write (or, for a built corpus, only write) a "
                      "corpus pack here: screened speech and noise as Ogg Opus within --budget-mib (speechnorm/data/pack.py)")
    data.add_argument("--budget-mib", type=float, default=30.0, help="the pack's size budget")
    data.add_argument("--unscreened", action="store_true", help="pack all training speech, not only what "
                      "`speechnorm screen` kept")
    data.set_defaults(run=_data)
    screen = commands.add_parser("screen", help="screen the corpus's speech: DNSMOS per ~9 s group of a speaker, noise "
                                 "floor, clipping, bandwidth (speechnorm/data/screen.py); resumes")
    screen.add_argument("--speech-dir", type=Path, default=Path(".cache/real_corpus/speech"))
    screen.add_argument("--first", nargs="*", default=[], help="score these packages first")
    screen.add_argument("--decide-only", action="store_true", help="apply the floors to what is scored, score nothing")
    screen.add_argument("--ovrl", type=float, default=2.7, help="DNSMOS OVRL at least")
    screen.add_argument("--bak", type=float, default=3.6, help="DNSMOS BAK at least")
    screen.add_argument("--noise-floor", type=float, default=-35.0, help="noise floor at most, dB under the speech")
    screen.add_argument("--clipping", type=float, default=0.002, help="fraction of clipped samples at most")
    screen.add_argument("--high-band", type=float, default=-35.0, help="energy above 4 kHz at least, dB")
    screen.add_argument("--threads", type=int, default=1)
    screen.add_argument("--shard", default="0/1", help="I/N: score every N-th group from the I-th (N processes side by side)")
    screen.add_argument("--out", default=None, help="also write the table to this markdown file")
    screen.set_defaults(run=_screen)
    bank = commands.add_parser("bank", help="build a bank of generated rooms for training (speechnorm/data/bank.py); "
                               "a stopped build resumes")
    bank.add_argument("--out", type=Path, default=Path(".cache/room_bank"), help="the bank's folder")
    bank.add_argument("--rooms", type=int, default=10_000)
    bank.add_argument("--mics", type=int, default=8, help="mics per room; items take a random subset and order")
    bank.add_argument("--sources", type=int, default=4, help="source positions per room: the talker and noise")
    bank.add_argument("--t60", type=float, nargs=2, default=(0.15, 1.0), metavar=("LOW", "HIGH"))
    bank.add_argument("--distance", type=float, nargs=2, default=(0.5, 3.0), metavar=("LOW", "HIGH"),
                      help="talker to array centre, metres")
    bank.add_argument("--seed", type=int, default=0)
    bank.add_argument("--chunk", type=int, default=32, help="rooms made per call (and per file)")
    bank.add_argument("--device", default="cpu", help="cpu or cuda")
    bank.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    bank.set_defaults(run=_bank)
    serve = commands.add_parser("serve", help="real-time enhancement server (WebSocket, serve/PROTOCOL.md) with a demo page")
    serve.add_argument("--model", default=None, help="model folder, .onnx or .ckpt (default: models/tac_gru_online_small_v2)")
    serve.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--max-connections", type=int, default=32)
    serve.add_argument("--max-message-bytes", type=int, default=1 << 20)
    serve.add_argument("--idle-timeout", type=float, default=30.0, help="seconds without a message before a stream is closed")
    serve.add_argument("--slow-consumer-timeout", type=float, default=5.0,
                       help="seconds a reply may stay unread (learned by ping/pong) before the client is dropped")
    serve.add_argument("--health-peers", action="store_true", help="list each stream's peer address in /health")
    serve.add_argument("--processes", type=int, default=1,
                       help="server processes sharing the port (SO_REUSEPORT; a stream stays in one), e.g. one per core")
    serve.add_argument("--workers", type=int, default=0,
                       help="threads running the model, one call per stream and hop (default 0: in the event loop; "
                            "scale out with more processes)")
    serve.add_argument("--max-batch", type=int, default=64,
                       help="streams per batched model call (default 64; 1: one call per stream and hop); batching "
                            "needs the model's batched step graph (model_batch.onnx) and --workers 0")
    serve.add_argument("--batch-wait-ms", type=float, default=8.0,
                       help="the longest a ready hop waits for other streams' hops to share its call (default 8 ms)")
    serve.set_defaults(run=_serve)
    commands.add_parser("train", help="train a model from a recipe: speechnorm train --config recipes/NAME/conf.yaml",
                        add_help=False)
    models = commands.add_parser("models", help="list the registered models, their sizes, parameters and streaming speed")
    models.add_argument("--hops", type=int, default=50, help="hops to time per model (0: skip timing)")
    models.set_defaults(run=_models)
    return parser


#: What the training install (`speechnorm[train]`) adds; the runtime install has none of it.
TRAINING_MODULES = {"torch", "torchaudio", "lightning", "onnx", "yaml", "torchmetrics", "jsonargparse", "pyroomacoustics",
                    "pesq", "pystoi", "speechmos", "librosa", "matplotlib", "tensorboard"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    try:
        if command == "train":  # LightningCLI parses the recipe and its overrides itself
            from .train import run

            return run(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        try:
            return args.run(args)
        except (ValueError, OSError, RuntimeError) as err:
            print(f"speechnorm {args.command}: error: {err}", file=sys.stderr)
            return 2
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        print(f"speechnorm {command}: needs the training install ({err.name} is missing): "
              "pip install 'speechnorm[train]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
