#!/usr/bin/env python3
"""PyTorch (eager) training steps of kiln's MLP GAN and DCGAN, with the same shapes, batch,
losses and optimizer as kiln-gan, on random images (the step's cost does not depend on the
pixels), to compare images/s with `kiln train`.

Usage: python benches/reference/torch_gan.py [--model gan|dcgan] [--batch 64] [--steps 200]
                                             [--device cpu|cuda] [--threads N]
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(widths):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(widths):
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def models(name):
    if name == "gan":
        return (nn.Sequential(mlp([100, 256, 512, 1024, 784]), nn.Tanh(), nn.Unflatten(1, (1, 28, 28))),
                nn.Sequential(nn.Flatten(), mlp([784, 512, 256, 1])))
    generator = nn.Sequential(
        nn.Linear(100, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (128, 7, 7)),
        nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())
    discriminator = nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1))
    return generator, discriminator


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gan", choices=["gan", "dcgan"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g, d = (m.to(device) for m in models(args.model))
    g_opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(args.batch, 1, 28, 28, device=device) * 2 - 1
    ones = torch.ones(args.batch, 1, device=device)
    zeros = torch.zeros(args.batch, 1, device=device)

    def step():
        # The order kiln-gan uses (PyTorch's DCGAN example): fakes once, D on real and detached
        # fakes, then G through the updated D.
        fake = g(torch.randn(args.batch, 100, device=device))
        d_opt.zero_grad()
        loss_d = (F.binary_cross_entropy_with_logits(d(real), ones)
                  + F.binary_cross_entropy_with_logits(d(fake.detach()), zeros))
        loss_d.backward()
        d_opt.step()
        g_opt.zero_grad()
        loss_g = F.binary_cross_entropy_with_logits(d(fake), ones)
        loss_g.backward()
        g_opt.step()
        return loss_d, loss_g

    for _ in range(10):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        losses = step()
    float(losses[0].detach())  # one sync at the end, as kiln logs
    elapsed = time.perf_counter() - start
    print(f"torch {torch.__version__} {args.model} batch {args.batch} on {args.device} "
          f"({torch.get_num_threads()} threads): {args.steps * args.batch / elapsed:.0f} images/s, "
          f"{elapsed / args.steps * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
