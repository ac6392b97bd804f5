#!/usr/bin/env python3
"""PyTorch's CPU matmul on the cases of `cargo bench --bench gemm`, side by side with kiln.

    pip install torch            # any recent CPU build; the project's tests never need it
    cargo bench --bench gemm     # kiln's figures, saved under target/criterion
    python3 benches/reference/torch_gemm.py --kiln target/criterion

Prints one row per case and thread count: shape, kiln GFLOP/s, PyTorch GFLOP/s, kiln/PyTorch.
Without --kiln it prints PyTorch's figures only. The cases mirror benches/shapes.rs: keep the
two in step. A transposed operand is a .t() view of stored data, as in kiln's bench.
"""

import argparse
import json
import os
import time

import torch

GAN_LAYERS = [(100, 256), (256, 512), (512, 1024), (1024, 784), (784, 512), (512, 256), (256, 1)]


def cases():
    """(name, m, k, n, transpose_a, transpose_b), as in benches/shapes.rs."""
    out = [(f"square_{s}", s, s, s, False, False) for s in (64, 128, 256, 512, 1024, 2048)]
    for batch in (64, 256):
        for inp, outp in GAN_LAYERS:
            out.append((f"b{batch}_fwd_{inp}x{outp}", batch, inp, outp, False, True))
            out.append((f"b{batch}_dx_{inp}x{outp}", batch, outp, inp, False, False))
            out.append((f"b{batch}_dw_{inp}x{outp}", outp, batch, inp, True, False))
    return out


def operand(rows, cols, transposed):
    return torch.rand(cols, rows).t() if transposed else torch.rand(rows, cols)


def torch_gflops(m, k, n, ta, tb, seconds=0.6):
    """Best of 5 timed runs, each long enough to swamp timer overhead."""
    a, b = operand(m, k, ta), operand(k, n, tb)
    flops = 2 * m * n * k
    for _ in range(3):
        torch.matmul(a, b)
    iterations = max(1, int(seconds * 5e10 / max(flops, 1) / 5))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iterations):
            torch.matmul(a, b)
        best = min(best, (time.perf_counter() - start) / iterations)
    return flops / best / 1e9


def kiln_gflops(criterion_dir, threads, name, m, k, n):
    """kiln's mean time for a case, from criterion's saved estimates."""
    path = os.path.join(criterion_dir, f"gemm_{threads}t", name, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        mean_ns = json.load(f)["mean"]["point_estimate"]
    return 2 * m * n * k / mean_ns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kiln", metavar="CRITERION_DIR", help="target/criterion of a kiln bench run")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    print(f"torch {torch.__version__}; {torch.backends.mkldnn.is_available()=}; BLAS: "
          f"{'MKL' if torch.backends.mkl.is_available() else 'other'}")
    print(f"{'case':<24}{'m x k x n':>18}{'threads':>8}{'kiln':>10}{'torch':>10}{'kiln/torch':>12}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, m, k, n, ta, tb in cases():
            theirs = torch_gflops(m, k, n, ta, tb)
            ours = kiln_gflops(args.kiln, threads, name, m, k, n) if args.kiln else None
            ours_text = f"{ours:10.1f}" if ours is not None else f"{'-':>10}"
            ratio = f"{ours / theirs:12.2f}" if ours is not None else f"{'-':>12}"
            print(f"{name:<24}{f'{m}x{k}x{n}':>18}{threads:>8}{ours_text}{theirs:10.1f}{ratio}")


if __name__ == "__main__":
    main()
