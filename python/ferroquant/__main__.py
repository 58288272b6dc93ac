"""``python -m ferroquant demo``: quantize a built-in model and compare it with fp32."""

from __future__ import annotations

import argparse
import sys

from .demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferroquant", description="ferroquant command line")
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="quantize a built-in model; print fp32 vs int8 latency, size, agreement")
    demo.add_argument("--threads", type=int, default=1, help="threads for both fp32 and int8 (default 1)")
    demo.add_argument("--repeats", type=int, default=50, help="timed calls per model (median is shown)")
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        run_demo(threads=args.threads, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
