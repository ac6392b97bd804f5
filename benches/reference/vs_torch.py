#!/usr/bin/env python3
"""`just bench-vs-torch`: kiln's training steps beside PyTorch eager's, measured alternately on
this machine, printed as one table.

For each model (the MLP GAN at batch 64 and 256, DCGAN, the conditional GAN and WGAN-GP at 64,
the MLP and convolutional VAE at 128, the DDPM and the PixelCNN at 64), on 1 thread and on
all, each round runs kiln's examples/step_rate.rs and then torch_steps.py, each in a fresh
process; the table gives images/s (the range over the rounds), the ratio of the medians, the
minor page faults per step and each side's peak RSS. `--avx2` adds both sides as an AVX2-only
machine runs them: kiln with KILN_CPU_KERNEL=avx2+fma, and PyTorch with its kernels held to
AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2), each
ratio against PyTorch as it runs by default and against PyTorch held to AVX2. Where AVX-512 is
full width (Intel's, AMD's from Zen 5) PyTorch's default has twice AVX2's multiply-add
throughput, which kiln's AVX2 kernels cannot reach; `--epoch` also times a whole
`kiln train gan --epochs 1` against the same loop in PyTorch (torch_gan_epoch.py), wall time.

Usage: python benches/reference/vs_torch.py [--rounds 2] [--seconds 3] [--models gan,dcgan]
                                            [--threads 1,2] [--avx2] [--epoch] [--json F]
Build first: cargo build --release --example step_rate (the justfile's recipe does).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
CASES = [("gan", 64), ("gan", 256), ("dcgan", 64), ("cgan", 64), ("wgan-gp", 64),
         ("vae", 128), ("conv-vae", 128), ("ddpm", 64), ("pixelcnn", 64)]


def run_json(command, env):
    """Runs `command` and returns the JSON line it prints last."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def kiln(model, batch, threads, seconds, kernel=None):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    if kernel:
        env["KILN_CPU_KERNEL"] = kernel
    binary = ROOT / "target" / "release" / "examples" / "step_rate"
    return run_json([binary, model, "--batch", str(batch), "--seconds", str(seconds)], env)


# PyTorch's kernels held to AVX2: ATen's vectorised loops, oneDNN's JIT kernels and MKL's.
TORCH_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
              "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def torch(model, batch, threads, seconds, avx2=False):
    command = [sys.executable, HERE / "torch_steps.py", model, "--batch", str(batch),
               "--seconds", str(seconds), "--threads", str(threads)]
    return run_json(command, dict(os.environ) | (TORCH_AVX2 if avx2 else {}))


def summary(records):
    rates = [r["images_per_s"] for r in records]
    return {
        "median": statistics.median(rates),
        "range": f"{min(rates):,.0f}–{max(rates):,.0f}" if len(rates) > 1 else f"{rates[0]:,.0f}",
        "faults": statistics.median(r["page_faults_per_step"] for r in records),
        "rss": max(r["peak_rss_mib"] for r in records),
    }


def epoch_comparison(threads):
    """Wall time, process start to exit, of one whole epoch of the MLP GAN: `kiln train gan
    --epochs 1` (no evaluation, no progress bar) against torch_gan_epoch.py's loop on the same
    MNIST. Returns both times in seconds."""
    out = ROOT / "target" / "vs-torch-epoch"
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    started = time.perf_counter()
    subprocess.run([ROOT / "target" / "release" / "kiln", "train", "gan", "--epochs", "1",
                    "--eval-samples", "0", "--quiet", "--device", "cpu", "--out", out],
                   env=env, check=True, capture_output=True, cwd=ROOT)
    kiln_seconds = time.perf_counter() - started
    subprocess.run(["rm", "-rf", out], check=True)
    started = time.perf_counter()
    run_json([sys.executable, HERE / "torch_gan_epoch.py", "--threads", str(threads),
              "--out", out], dict(os.environ))
    torch_seconds = time.perf_counter() - started
    subprocess.run(["rm", "-rf", out], check=True)
    return kiln_seconds, torch_seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--models", help="comma-separated; default: all")
    parser.add_argument("--threads", help="comma-separated; default: 1 and every logical CPU")
    parser.add_argument("--avx2", action="store_true")
    parser.add_argument("--epoch", action="store_true")
    parser.add_argument("--json", help="also write every measurement here, one per line")
    args = parser.parse_args()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, os.cpu_count() or 1}))
    models = set(args.models.split(",")) if args.models else None
    cases = [c for c in CASES if models is None or c[0] in models]
    print(subprocess.run([ROOT / "target" / "release" / "kiln", "info"], capture_output=True,
                         text=True).stdout.strip())
    log = open(args.json, "w") if args.json else None
    rows = []
    for model, batch in cases:
        for t in threads:
            sides = {"kiln": [], "torch": []}
            if args.avx2:
                sides |= {"kiln avx2": [], "torch avx2": []}
            for _ in range(args.rounds):
                sides["kiln"].append(kiln(model, batch, t, args.seconds))
                if args.avx2:
                    sides["kiln avx2"].append(kiln(model, batch, t, args.seconds, "avx2+fma"))
                sides["torch"].append(torch(model, batch, t, args.seconds))
                if args.avx2:
                    sides["torch avx2"].append(torch(model, batch, t, args.seconds, avx2=True))
            for records in sides.values():
                for record in records:
                    if log:
                        log.write(json.dumps(record) + "\n")
            k, p = summary(sides["kiln"]), summary(sides["torch"])
            row = [f"{model}, {batch}", str(t), k["range"], p["range"],
                   f"{k['median'] / p['median']:.2f}"]
            if args.avx2:
                a, q = summary(sides["kiln avx2"]), summary(sides["torch avx2"])
                row += [a["range"], f"{a['median'] / p['median']:.2f}", q["range"],
                        f"{a['median'] / q['median']:.2f}"]
            row += [f"{k['faults']:.0f} / {p['faults']:.0f}", f"{k['rss']:.0f} / {p['rss']:.0f}"]
            rows.append(row)
            print(" | ".join(row), flush=True)
    header = ["model, batch", "threads", "kiln images/s", "PyTorch images/s", "kiln / PyTorch"]
    if args.avx2:
        header += ["kiln avx2+fma", "avx2 / PyTorch", "PyTorch held to AVX2",
                   "avx2 / PyTorch AVX2"]
    header += ["page faults/step kiln / PyTorch", "peak RSS MiB kiln / PyTorch"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 1 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.epoch:
        print()
        print("| one epoch of the MLP GAN (937 steps), threads | kiln train gan | PyTorch loop "
              "| kiln speed / PyTorch |")
        print("|---|---:|---:|---:|")
        for t in threads:
            kiln_seconds, torch_seconds = epoch_comparison(t)
            if log:
                log.write(json.dumps({"epoch": "gan", "threads": t, "kiln_seconds": kiln_seconds,
                                      "torch_seconds": torch_seconds}) + "\n")
            print(f"| {t} | {kiln_seconds:.1f} s | {torch_seconds:.1f} s "
                  f"| {torch_seconds / kiln_seconds:.2f} |", flush=True)
    if log:
        log.close()


if __name__ == "__main__":
    main()
