"""Command line: ``python -m nslib {reproduce,bench} ...`` (also installed as ``nslib``)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nslib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run the numbered notebooks with papermill into outputs/<profile>/")
    rep.add_argument("--profile", default="quick", help="one of nslib.config.PROFILES (quick, full)")
    rep.add_argument("--datasets", default=None, help="comma-separated dataset names, e.g. fmnist,mnist5k")
    rep.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 02,03")
    rep.add_argument("--resume", action="store_true", help="skip notebooks already done with the same parameters")
    rep.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override one knob of nslib.config (a Python literal), e.g. eps=0.2 or 'seeds=[0, 1, 2]'; repeatable")

    bench = sub.add_parser("bench", help="speed benchmarks against an anchor run in the same process")
    bench.add_argument("what", choices=("attacks", "sensitivity", "training"))
    bench.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes, to check that the benchmark runs")

    args = parser.parse_args(argv)
    if args.command == "reproduce":
        from nslib import run
        return run.main(args)
    from nslib import bench as bench_mod
    return bench_mod.main(args)


if __name__ == "__main__":
    sys.exit(main())
