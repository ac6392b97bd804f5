#!/usr/bin/env python3
"""PyTorch's CPU convolutions (oneDNN) on the cases of `cargo bench --bench conv`, side by side with kiln.

    pip install torch            # any recent CPU build; the project's tests never need it
    cargo bench --bench conv     # kiln's figures, saved under target/criterion
    python3 benches/reference/torch_conv.py --kiln target/criterion

Each case is a convolution in its three primitives, timed as autograd runs them: `fwd` is
F.conv2d, `dx` torch.nn.grad.conv2d_input and `dw` torch.nn.grad.conv2d_weight (both
aten.convolution_backward, which is what loss.backward() calls; a transposed convolution's
forward is the `dx` of the convolution it is the adjoint of). Prints one row per case,
primitive and thread count: kiln GFLOP/s, PyTorch GFLOP/s, kiln/PyTorch, then the geometric
mean of the ratios per thread count. Without --kiln it prints PyTorch's figures only. The cases
mirror benches/conv.rs: keep the two in step.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F

# (name, batch, channels, size, out_channels, kernel, stride, padding), as in benches/conv.rs.
CASES = [
    ("dcgan_1@28-64_k4s2", 64, 1, 28, 64, 4, 2, 1),
    ("dcgan_64@14-128_k4s2", 64, 64, 14, 128, 4, 2, 1),
    ("cvae_1@28-32_k4s2", 128, 1, 28, 32, 4, 2, 1),
    ("cvae_32@14-64_k4s2", 128, 32, 14, 64, 4, 2, 1),
    ("ddpm_1@28-16_k3", 64, 1, 28, 16, 3, 1, 1),
    ("ddpm_16@28-16_k3", 64, 16, 28, 16, 3, 1, 1),
    ("ddpm_16@28-16_k3s2", 64, 16, 28, 16, 3, 2, 1),
    ("ddpm_16@14-32_k3", 64, 16, 14, 32, 3, 1, 1),
    ("ddpm_32@14-32_k3", 64, 32, 14, 32, 3, 1, 1),
    ("ddpm_16@14-32_k1", 64, 16, 14, 32, 1, 1, 0),
    ("ddpm_32@14-32_k3s2", 64, 32, 14, 32, 3, 2, 1),
    ("ddpm_32@7-64_k3", 64, 32, 7, 64, 3, 1, 1),
    ("ddpm_64@7-64_k3", 64, 64, 7, 64, 3, 1, 1),
    ("ddpm_32@7-64_k1", 64, 32, 7, 64, 1, 1, 0),
    ("ddpm_64@14-64_k3", 64, 64, 14, 64, 3, 1, 1),
    ("ddpm_96@14-32_k3", 64, 96, 14, 32, 3, 1, 1),
    ("ddpm_96@14-32_k1", 64, 96, 14, 32, 1, 1, 0),
    ("ddpm_32@28-32_k3", 64, 32, 28, 32, 3, 1, 1),
    ("ddpm_48@28-16_k3", 64, 48, 28, 16, 3, 1, 1),
    ("ddpm_48@28-16_k1", 64, 48, 28, 16, 1, 1, 0),
    ("ddpm_16@28-1_k3", 64, 16, 28, 1, 3, 1, 1),
    ("pixelcnn_1@28-32_k7", 64, 1, 28, 32, 7, 1, 3),
    ("pixelcnn_32@28-16_k1", 64, 32, 28, 16, 1, 1, 0),
    ("pixelcnn_16@28-16_k3", 64, 16, 28, 16, 3, 1, 1),
    ("pixelcnn_16@28-32_k1", 64, 16, 28, 32, 1, 1, 0),
    ("pixelcnn_32@28-32_k1", 64, 32, 28, 32, 1, 1, 0),
    ("pixelcnn_32@28-1_k1", 64, 32, 28, 1, 1, 1, 0),
]


def primitives(batch, channels, size, out_channels, kernel, stride, padding):
    """The case's flop count and its fwd, dx, dw calls on random tensors."""
    x = torch.rand(batch, channels, size, size)
    w = torch.rand(out_channels, channels, kernel, kernel)
    y = F.conv2d(x, w, stride=stride, padding=padding)
    gy = torch.rand_like(y)
    flops = 2 * batch * out_channels * channels * kernel * kernel * y.shape[2] * y.shape[3]
    calls = {
        "fwd": lambda: F.conv2d(x, w, stride=stride, padding=padding),
        "dx": lambda: torch.nn.grad.conv2d_input(x.shape, w, gy, stride=stride, padding=padding),
        "dw": lambda: torch.nn.grad.conv2d_weight(x, w.shape, gy, stride=stride, padding=padding),
    }
    return flops, calls


def torch_gflops(call, flops, seconds=0.5):
    """Best of 5 timed runs after warm-up, each about seconds/5 long."""
    for _ in range(3):
        call()
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-7)
    iterations = max(1, int(seconds / 5 / once))
    best = float("inf")
    with torch.no_grad():
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(iterations):
                call()
            best = min(best, (time.perf_counter() - start) / iterations)
    return flops / best / 1e9


def kiln_gflops(criterion_dir, threads, name, flops):
    """kiln's mean time for a case, from criterion's saved estimates."""
    path = os.path.join(criterion_dir, f"conv_{threads}t", name, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        mean_ns = json.load(f)["mean"]["point_estimate"]
    return flops / mean_ns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kiln", metavar="CRITERION_DIR", help="target/criterion of a kiln bench run")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    print(f"torch {torch.__version__}; oneDNN: {torch.backends.mkldnn.is_available()}")
    print(f"{'case':<28}{'op':>4}{'threads':>8}{'kiln':>10}{'torch':>10}{'kiln/torch':>12}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        ratios = []
        for name, *shape in CASES:
            flops, calls = primitives(*shape)
            for op, call in calls.items():
                theirs = torch_gflops(call, flops)
                ours = kiln_gflops(args.kiln, threads, f"{name}_{op}", flops) if args.kiln else None
                ours_text = f"{ours:10.1f}" if ours is not None else f"{'-':>10}"
                ratio = f"{ours / theirs:12.2f}" if ours is not None else f"{'-':>12}"
                if ours is not None:
                    ratios.append(ours / theirs)
                print(f"{name:<28}{op:>4}{threads:>8}{ours_text}{theirs:10.1f}{ratio}")
        if ratios:
            mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
            print(f"{threads} thread(s): geometric mean kiln/torch {mean:.2f} over {len(ratios)} cases, "
                  f"{sum(r >= 1.0 for r in ratios)} at or above 1.0")


if __name__ == "__main__":
    main()
