"""Command line: ``python -m nslib {reproduce,analyze,train,evaluate,compare,bench} ...`` (also installed as ``nslib``)."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

from nslib import checks
from nslib.cli import analyze, bench as bench_cmd, compare, evaluate, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nslib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run the numbered notebooks with papermill into outputs/<profile>/")
    rep.add_argument("--profile", default="auto",
                     help="auto (full with a CUDA device, cpu without), or one of nslib.repro.config.PROFILES: "
                          "quick (CI's machinery check), cpu, full")
    rep.add_argument("--datasets", default=None, help="comma-separated dataset names, e.g. fmnist,mnist5k")
    rep.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 02,03")
    rep.add_argument("--resume", action="store_true", help="skip notebooks already done with the same parameters")
    rep.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override one knob of nslib.repro.config (a Python literal), e.g. eps=0.2 or 'seeds=[0, 1, 2]'; repeatable")

    # each command's flags live with it (those they share: nslib.cli.specs.add_shared_arguments); all run under torchrun
    analyze.add_arguments(sub.add_parser("analyze", help="neuron sensitivity of your own model: pairs, sigma per layer, "
                                                         "top-k, interventions, maps -> a folder with CSV, JSON, figures, "
                                                         "ANALYSIS.md"))
    train.add_arguments(sub.add_parser("train", help="train a model (standard, PGD-AT, TRADES, SNS, yours) "
                                                         "-> last.pt, best.pt, history.json"))
    evaluate.add_arguments(sub.add_parser("evaluate", help="clean, FGSM, PGD, MIM, FMN/PGD-L2, AutoAttack with "
                                                               "intervals and per-example outcomes"))
    compare.add_arguments(sub.add_parser("compare", help="is A more robust than B? two evaluate outputs compared "
                                                            "image by image: differences with 95% intervals, verdicts"))
    bench = sub.add_parser("bench", help="speed benchmarks against an anchor run in the same process")
    bench.add_argument("what", choices=("attacks", "sensitivity", "training"))
    bench.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes, to check that the benchmark runs")

    # under torchrun every rank parses the same flags: rank 0 alone prints an argument error (each exits 2)
    quiet = os.environ.get("RANK", "0") != "0"
    with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
        args = parser.parse_args(argv)
    if args.command == "reproduce":
        from nslib.repro import run  # papermill and jupyter: only reproduce needs them (a second to import)
        return run.main(args)
    if args.command == "analyze":
        return analyze.main(args)
    if args.command == "compare":
        return compare.main(args)
    if args.command in ("train", "evaluate"):
        return (train if args.command == "train" else evaluate).main(args)
    try:
        if args.device is not None:
            checks.check_device(args.device, "--device")
    except ValueError as e:
        print(f"nslib {args.command}: {e}", file=sys.stderr)
        return 2
    return bench_cmd.main(args)

