#!/usr/bin/env python3
"""One epoch of kiln's MLP GAN in PyTorch eager, as `kiln train gan --epochs 1` runs it: the
committed MNIST in [-1, 1], shuffled, 937 batches of 64 (the last partial batch dropped),
torch_gan.py's step, the losses read every 10 steps (kiln's --log-every), and at the epoch's
end 64 samples from fixed latents and a checkpoint of both networks and both Adams, written
to --out. vs_torch.py (`just bench-vs-torch --epoch`) times this process from start to exit
beside kiln's. Prints one JSON line with the loop's own seconds.

Usage: python benches/reference/torch_gan_epoch.py [--threads N] [--out DIR]
"""

import argparse
import json
import pathlib
import time

import torch

import torch_gan
import torch_vae

BATCH = 64


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="runs/torch-gan")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    images = torch_vae.idx_images("train-images-idx3-ubyte.gz") * 2 - 1  # [60000, 1, 28, 28]
    step, (g, d) = torch_gan.make_step("gan", BATCH, torch.device("cpu"))
    labels = torch.zeros(BATCH, dtype=torch.long)
    order = torch.randperm(len(images))
    for i in range(len(images) // BATCH):
        loss_d = step(images[order[i * BATCH:(i + 1) * BATCH]], labels)
        if (i + 1) % 10 == 0:
            float(loss_d.detach())
    with torch.no_grad():
        samples = g(torch.randn(64, 100, generator=torch.Generator().manual_seed(4)))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(samples, out / "samples.pt")
    torch.save({"generator": g.state_dict(), "discriminator": d.state_dict()},
               out / "checkpoint.pt")
    print(json.dumps({"side": "torch", "model": "gan", "epoch_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
