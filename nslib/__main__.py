"""Command line: ``python -m nslib {reproduce,analyze,train,evaluate,compare,bench} ...`` (also installed as ``nslib``)."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

from nslib import analyze, bench as bench_mod, checks, comparison, evaluate_cmd, train_cmd


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

    ana = sub.add_parser("analyze", help="neuron sensitivity of your own model: pairs, sigma per layer, top-k, "
                                         "interventions, maps -> a folder with CSV, JSON, figures, ANALYSIS.md")
    ana.add_argument("--model", required=True, metavar="SPEC",
                     help="ARCH:PATH (smallcnn, vgg16, resnet18 with a checkpoint or state dict), "
                          "torchvision:NAME[:PATH], or package.module:function")
    ana.add_argument("--data", required=True, help="fmnist, mnist5k, mnist, cifar10, synthetic:LIKE, or a .pt file "
                                                   "holding {'x': [N, C, H, W] in [0, 1], 'y': [N]}")
    ana.add_argument("--layers", default=None, help="comma-separated dotted layer names (default: the model's hidden "
                                                    "conv/linear layers)")
    ana.add_argument("--eps", type=float, default=None, help="Linf radius of the pairs (default: the dataset's)")
    ana.add_argument("--attack", default="pgd", help="how the pairs are crafted: pgd (the reproduction's pairs) or any "
                                                     "other fixed-radius attack of nslib.evaluate.ATTACKS (fgsm, mim, "
                                                     "autoattack: standard)")
    ana.add_argument("--steps", type=int, default=20, help="PGD steps (random start, step 2.5 eps / steps)")
    ana.add_argument("--n", "--num-images", dest="n", type=int, default=1000, help="test images (a fixed class-stratified subset)")
    ana.add_argument("--k", type=float, default=0.1, help="top-k: a fraction of each layer's neurons, or a count >= 1")
    ana.add_argument("--seed", type=int, default=0, help="seed of the attack and the random choices")
    ana.add_argument("--num-classes", type=int, default=None, help="outputs of a torchvision architecture")
    ana.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean the network expects")
    ana.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std the network expects")
    ana.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ana.add_argument("--precision", default="auto", help="auto (bf16 attacks where the hardware computes bf16: CUDA, AVX512-BF16/AMX CPUs), fp32 or bf16; sigma is fp32")
    ana.add_argument("--out", default=None, help="output folder (default: outputs/analysis/<model>-<data>)")
    ana.add_argument("--force", action="store_true", help="replace a non-empty --out (only a folder of nslib's own "
                                                           "results: its manifest lists every file)")
    ana.add_argument("--quiet", action="store_true", help="no progress bars")

    # the train and evaluate flags live with their commands; every command runs under torchrun too
    train_cmd.add_arguments(sub.add_parser("train", help="train a model (standard, PGD-AT, TRADES, SNS, yours) "
                                                         "-> last.pt, best.pt, history.json"))
    evaluate_cmd.add_arguments(sub.add_parser("evaluate", help="clean, FGSM, PGD, MIM, FMN/PGD-L2, AutoAttack with "
                                                               "intervals and per-example outcomes"))
    comparison.add_arguments(sub.add_parser("compare", help="is A more robust than B? two evaluate outputs compared "
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
        if args.k >= 1 and float(args.k).is_integer():  # a whole count; 1.5 stays a float and is refused
            args.k = int(args.k)
        return analyze.main(args)
    if args.command == "compare":
        return comparison.main(args)
    if args.command in ("train", "evaluate"):
        return (train_cmd if args.command == "train" else evaluate_cmd).main(args)
    try:
        if args.device is not None:
            checks.check_device(args.device, "--device")
    except ValueError as e:
        print(f"nslib {args.command}: {e}", file=sys.stderr)
        return 2
    return bench_mod.main(args)


if __name__ == "__main__":
    sys.exit(main())
