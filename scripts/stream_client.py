"""Stream a WAV/FLAC file through `speechnorm serve` and write the enhanced result.

    speechnorm serve &                                           # ws://127.0.0.1:8765/ws
    python scripts/stream_client.py noisy.wav -o enhanced.wav    # as fast as the server answers
    python scripts/stream_client.py noisy.wav -o enhanced.wav --realtime   # paced like a live source

Prints the round-trip latency per 10 ms message (median, p99) and, with --realtime, underruns
(replies later than a 40 ms playback buffer allows). The output equals `speechnorm enhance`.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from speechnorm.client import ServerError, stream_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--format", default="f32le", choices=("f32le", "s16le"))
    parser.add_argument("--realtime", action="store_true", help="send at real-time pace")
    args = parser.parse_args(argv)
    try:
        result = stream_file(args.url, args.input, args.output, fmt=args.format, realtime=args.realtime)
    except (ServerError, OSError, RuntimeError) as err:
        print(f"stream_client: error: {err}", file=sys.stderr)
        return 2
    lat = sorted(result.latencies_ms)
    print(f"wrote {args.output}: {result.audio.size} samples; round trip median {statistics.median(lat):.2f} ms, "
          f"p99 {lat[int(0.99 * (len(lat) - 1))]:.2f} ms" + (f", underruns {result.underruns}" if args.realtime else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
