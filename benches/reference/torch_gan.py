#!/usr/bin/env python3
"""PyTorch (eager) training steps of kiln's MLP GAN, DCGAN, conditional GAN and WGAN-GP, with
the same shapes, batch, losses and optimizer as kiln-gan, on random images (the step's cost
does not depend on the pixels), to compare images/s with `kiln train`. benches/reference/
torch_steps.py and vs_torch.py (`just bench-vs-torch`) use its `make_step`.

Usage: python benches/reference/torch_gan.py [--model gan|dcgan|cgan|wgan-gp] [--batch 64] [--steps 200]
                                             [--device cpu|cuda] [--threads N] [--compile]
                                             [--generator-grads-only]

--compile runs the step through torch.compile(mode="reduce-overhead") (CUDA graphs and fusion;
the backward calls are graph breaks, each side compiled).

--generator-grads-only takes G's step with `loss_g.backward(inputs=G's parameters)`, computing
no discriminator gradients there, as kiln-gan's step does (`Tensor::backward_for`); by default
it is `loss_g.backward()`, as PyTorch's DCGAN example writes it.
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


class Conditional(nn.Module):
    """The conditional GAN's networks: a label embedding (10 → 10) joined to the input."""

    def __init__(self, body):
        super().__init__()
        self.label_embedding = nn.Embedding(10, 10)
        self.main = body

    def forward(self, x, labels):
        return self.main(torch.cat([x.flatten(1), self.label_embedding(labels)], 1))


def models(name):
    if name in ("gan", "wgan-gp"):
        return (nn.Sequential(mlp([100, 256, 512, 1024, 784]), nn.Tanh(), nn.Unflatten(1, (1, 28, 28))),
                nn.Sequential(nn.Flatten(), mlp([784, 512, 256, 1])))
    if name == "cgan":
        return (Conditional(nn.Sequential(mlp([110, 256, 512, 1024, 784]), nn.Tanh(),
                                          nn.Unflatten(1, (1, 28, 28)))),
                Conditional(mlp([794, 512, 256, 1])))
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


def make_step(name, batch, device, generator_grads_only=False):
    """One training step of `name` as kiln-gan takes it, on `real [batch, 1, 28, 28]` images
    (and labels) given to the returned function; returns (step, networks). With
    `generator_grads_only`, G's backward computes G's gradients alone (not for WGAN-GP, whose
    generator step is every fifth call)."""
    g, d = (m.to(device) for m in models(name))
    if name == "wgan-gp":
        return wasserstein_step(g, d, batch, device), (g, d)
    g_opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ones = torch.ones(batch, 1, device=device)
    zeros = torch.zeros(batch, 1, device=device)
    conditional = name == "cgan"

    def call(net, x, labels):
        return net(x, labels) if conditional else net(x)

    def step(real, labels):
        # The order kiln-gan uses (PyTorch's DCGAN example): fakes once, D on real and detached
        # fakes, then G through the updated D.
        fake_labels = (torch.rand(batch, device=device) * 10).long().clamp(0, 9) if conditional else None
        fake = call(g, torch.randn(batch, 100, device=device), fake_labels)
        d_opt.zero_grad()
        loss_d = (F.binary_cross_entropy_with_logits(call(d, real, labels), ones)
                  + F.binary_cross_entropy_with_logits(call(d, fake.detach(), fake_labels), zeros))
        loss_d.backward()
        d_opt.step()
        g_opt.zero_grad()
        loss_g = F.binary_cross_entropy_with_logits(call(d, fake, fake_labels), ones)
        loss_g.backward(inputs=list(g.parameters()) if generator_grads_only else None)
        g_opt.step()
        return loss_d

    return step, (g, d)


def wasserstein_step(g, d, batch, device, critic_steps=5, penalty_weight=10.0):
    """WGAN-GP's step as kiln-gan takes it: the critic on real, fake and the gradient penalty at
    points between them every call; G every `critic_steps`-th call."""
    g_opt = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.9))
    d_opt = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.0, 0.9))
    calls = [0]

    def step(real, labels):
        with torch.no_grad():
            fake = g(torch.randn(batch, 100, device=device))
        epsilon = torch.rand(batch, 1, 1, 1, device=device)
        between = (real * epsilon + fake * (1 - epsilon)).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(between).sum(), between, create_graph=True)
        penalty = (grad.square().sum((1, 2, 3)).sqrt() - 1).square().mean()
        loss_d = d(fake).mean() - d(real).mean() + penalty_weight * penalty
        d_opt.zero_grad()
        loss_d.backward()
        d_opt.step()
        calls[0] += 1
        if calls[0] % critic_steps == 0:
            g_opt.zero_grad()
            loss_g = -d(g(torch.randn(batch, 100, device=device))).mean()
            loss_g.backward()
            g_opt.step()
        return loss_d

    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gan", choices=["gan", "dcgan", "cgan", "wgan-gp"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help='torch.compile(mode="reduce-overhead") the step')
    parser.add_argument("--generator-grads-only", action="store_true",
                        help="G's backward with inputs=G's parameters (as kiln's step)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    step, _ = make_step(args.model, args.batch, device, args.generator_grads_only)
    if args.compile:
        step = torch.compile(step, mode="reduce-overhead")
    real = torch.rand(args.batch, 1, 28, 28, device=device) * 2 - 1
    labels = torch.arange(args.batch, device=device) % 10

    for _ in range(10):
        step(real, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step(real, labels)
    float(loss.detach())  # one sync at the end, as kiln logs
    elapsed = time.perf_counter() - start
    mode = "compile(reduce-overhead)" if args.compile else "eager"
    print(f"torch {torch.__version__} {mode} {args.model} batch {args.batch} on {args.device} "
          f"({torch.get_num_threads()} threads): {args.steps * args.batch / elapsed:.0f} images/s, "
          f"{elapsed / args.steps * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
