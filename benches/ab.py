#!/usr/bin/env python3
"""`just bench-ab OLD NEW`: is a change faster? Two builds of examples/step_rate (copy
target/release/examples/step_rate aside before the change, build again after it) timed in
turn on this machine, each run a fresh process, the order swapped every pair (OLD NEW, then
NEW OLD) so that a drift in the machine's speed falls on both sides alike.

Per model and thread count it prints each side's median images/s, the median of the pairs'
ratios NEW / OLD with the middle half of them, and how many pairs NEW won, with the two-sided
sign test's p-value: the chance of a split at least that uneven if both builds ran at one
speed. On a shared 2-core machine two runs of one build differ by up to 4%, so a change of 1
or 2% needs a dozen pairs or more before the test tells it from noise.

With `--ops`, OLD and NEW are builds of examples/op_time instead, and each pair times one
primitive (`--ops "conv-dw 64 64 14 128 4 2 1;matmul 64 1024 784 0 1"`): the rate is one over
the fastest of `--runs` runs, the steadiest figure when the machine's speed drifts (a
layer's change of a few percent shows there when a whole step's does not; an A/A run still
varied by up to 8% a pair, so give it pairs too).

Usage: python benches/ab.py OLD NEW [--models dcgan,ddpm] [--threads 1,2] [--pairs 8]
                            [--seconds 5] [--avx2] [--ops "OP DIMS;..." [--runs 30]]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys


def rate(binary, target, threads, args):
    """One run of `binary`: a step_rate build's images/s for the model `target`, or with
    `--ops` an op_time build's runs/s at its fastest for the primitive `target`."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    if args.kernel:
        env["KILN_CPU_KERNEL"] = args.kernel
    if args.ops:
        command, key = [binary, *target.split(), "--runs", str(args.runs)], "per_s"
    else:
        command, key = [binary, target, "--seconds", str(args.seconds)], "images_per_s"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])[key]


def sign_test(wins, pairs):
    """Two-sided p-value of `wins` out of `pairs` under even odds."""
    if pairs == 0:
        return 1.0
    spread = abs(wins - pairs / 2)
    tail = sum(math.comb(pairs, k) for k in range(pairs + 1) if abs(k - pairs / 2) >= spread)
    return min(1.0, tail / 2**pairs)


def compare(old, new, model, threads, args):
    # Keyed by side, not by path: the same build on both sides measures the noise alone.
    binaries = {"old": old, "new": new}
    rates = {"old": [], "new": []}
    for pair in range(args.pairs):
        for side in ("old", "new") if pair % 2 == 0 else ("new", "old"):
            rates[side].append(rate(binaries[side], model, threads, args))
    ratios = [n / o for o, n in zip(rates["old"], rates["new"])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    wins = sum(r > 1 for r in ratios)
    return (f"| {model} | {threads} | {statistics.median(rates['old']):,.1f} | "
            f"{statistics.median(rates['new']):,.1f} | {statistics.median(ratios):.3f} "
            f"({quartiles[0]:.3f}–{quartiles[2]:.3f}) | {wins} of {len(ratios)} | "
            f"{sign_test(wins, len(ratios)):.3f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--models", default="dcgan")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--avx2", action="store_true")
    parser.add_argument("--ops", help="op_time primitives, ';'-separated, instead of models")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    args.kernel = "avx2+fma" if args.avx2 else None
    if args.pairs < 1 or args.runs < 1:
        sys.exit("--pairs and --runs must be at least 1")
    example = "op_time" if args.ops else "step_rate"
    for binary in (args.old, args.new):
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary}: not an executable {example} build")
    targets = args.ops.split(";") if args.ops else args.models.split(",")
    unit = "runs/s at the fastest" if args.ops else "images/s"
    print(f"| {'op' if args.ops else 'model'} | threads | OLD {unit} | NEW {unit} | NEW / OLD, "
          "median of pairs (middle half) | pairs NEW won | sign test p |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model in (t.strip() for t in targets):
        for threads in (int(t) for t in args.threads.split(",")):
            print(compare(args.old, args.new, model, threads, args), flush=True)


if __name__ == "__main__":
    main()
