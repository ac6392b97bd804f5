#!/usr/bin/env python3
"""PyTorch's half of `just bench-vs-torch` (vs_torch.py): times one model's eager training step,
the same step as kiln's examples/step_rate.rs (random images, the model's default batch, the
same warm-up and timing), in a process of its own, and prints one JSON line: images/s,
ms/step, minor page faults per step over the timed steps, and the process's peak RSS.

Usage: python benches/reference/torch_steps.py MODEL [--batch B] [--seconds S] [--threads N]
MODEL: gan, dcgan, cgan, wgan-gp, vae, conv-vae, ddpm, pixelcnn.
"""

import argparse
import json
import resource
import time

import torch

import torch_ddpm_pixelcnn
import torch_gan
import torch_vae

GANS = ("gan", "dcgan", "cgan", "wgan-gp")
DEFAULT_BATCH = {"vae": 128, "conv-vae": 128}  # the rest: 64, as kiln's configs


def model_step(name, batch):
    """The step of `name`, as a function of no arguments, on random images."""
    images = torch.rand(batch, 1, 28, 28)  # [0, 1)
    if name in GANS:
        step, _ = torch_gan.make_step(name, batch, torch.device("cpu"))
        real = images * 2 - 1
        labels = torch.arange(batch) % 10
        return lambda: step(real, labels)
    if name in ("vae", "conv-vae"):
        step = torch_vae.make_step(name, batch)
        return lambda: step(images)
    step = torch_ddpm_pixelcnn.make_step(name, batch, torch.device("cpu"))
    return lambda: step(images)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=GANS + ("vae", "conv-vae", "ddpm", "pixelcnn"))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = args.batch or DEFAULT_BATCH.get(args.model, 64)
    step = model_step(args.model, batch)

    # Warm-up as step_rate's: at least 3 steps and half a second.
    warm_up = time.perf_counter()
    warm_steps = 0
    while warm_steps < 3 or time.perf_counter() - warm_up < 0.5:
        float(step().detach())
        warm_steps += 1
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    steps = 0
    while steps < 5 or time.perf_counter() - started < args.seconds:
        loss = step()
        steps += 1
    float(loss.detach())
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "side": "torch",
        "version": torch.__version__,
        "model": args.model,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "images_per_s": steps * batch / elapsed,
        "ms_per_step": elapsed / steps * 1e3,
        "page_faults_per_step": (usage.ru_minflt - faults_before) / steps,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
    }))


if __name__ == "__main__":
    main()
