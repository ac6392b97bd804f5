#!/usr/bin/env python3
"""PyTorch (eager) training steps of kiln's DDPM U-Net and PixelCNN, at kiln's default sizes
(kiln-diffusion's DdpmConfig::default: channels 16/32/64, group norm of 8 groups, T = 1000,
batch 64; kiln-autoregressive's PixelCnnConfig::new: 32 channels, 5 residual blocks, batch 64),
the same layers in the same order, losses and optimizer (Adam 2e-4 with the EMA update for
the DDPM; Adam 1e-3 and per-batch binarization for the PixelCNN), on random images (the step's
cost does not depend on the pixels), to compare images/s with kiln's train_step bench.

Usage: python benches/reference/torch_ddpm_pixelcnn.py [--model ddpm|pixelcnn] [--batch 64]
                                                      [--steps 30] [--device cpu|cuda] [--threads N]
"""

import argparse
import copy
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / (half - 1))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, embedding, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(embedding, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class UNet(nn.Module):
    """kiln's U-Net under kiln's names: a kiln DDPM checkpoint's `model.` (or `ema.`) tensors
    load into it with strict=True."""

    def __init__(self, channels=(16, 32, 64), groups=8):
        super().__init__()
        c0, c1, c2 = channels
        e = 4 * c0
        self.c0 = c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, e), nn.SiLU(), nn.Linear(e, e))
        self.conv_in = nn.Conv2d(1, c0, 3, padding=1)
        self.down = nn.ModuleList([ResBlock(c0, c0, e, groups), ResBlock(c0, c1, e, groups),
                                   ResBlock(c1, c2, e, groups)])
        self.downsample = nn.ModuleList([nn.Conv2d(c0, c0, 3, 2, 1), nn.Conv2d(c1, c1, 3, 2, 1)])
        self.middle = ResBlock(c2, c2, e, groups)
        self.up = nn.ModuleList([ResBlock(c1 + c0, c0, e, groups), ResBlock(c2 + c1, c1, e, groups),
                                 ResBlock(c2 + c2, c2, e, groups)])
        self.upsample = nn.ModuleList([nn.Conv2d(c1, c1, 3, padding=1), nn.Conv2d(c2, c2, 3, padding=1)])
        self.out_norm = nn.GroupNorm(groups, c0)
        self.conv_out = nn.Conv2d(c0, 1, 3, padding=1)

    def forward(self, x, t):
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.c0)))
        h = self.conv_in(x)
        s0 = self.down[0](h, emb)
        s1 = self.down[1](self.downsample[0](s0), emb)
        s2 = self.down[2](self.downsample[1](s1), emb)
        h = self.middle(s2, emb)
        h = self.up[2](torch.cat([h, s2], 1), emb)
        h = self.upsample[1](F.interpolate(h, size=14, mode="nearest"))
        h = self.up[1](torch.cat([h, s1], 1), emb)
        h = self.upsample[0](F.interpolate(h, size=28, mode="nearest"))
        h = self.up[0](torch.cat([h, s0], 1), emb)
        return self.conv_out(F.silu(self.out_norm(h)))


class MaskedConv2d(nn.Conv2d):
    def __init__(self, cin, cout, kernel, mask_type):
        super().__init__(cin, cout, kernel, padding=kernel // 2)
        mask = torch.zeros(kernel, kernel)
        c = kernel // 2
        mask[:c] = 1
        mask[c, : c + (1 if mask_type == "B" else 0)] = 1
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class ResidualBlock(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.conv1 = nn.Conv2d(h, h // 2, 1)
        self.conv2 = MaskedConv2d(h // 2, h // 2, 3, "B")
        self.conv3 = nn.Conv2d(h // 2, h, 1)

    def forward(self, x):
        return x + self.conv3(F.relu(self.conv2(F.relu(self.conv1(F.relu(x))))))


class PixelCnn(nn.Module):
    """kiln's PixelCNN under kiln's names: a kiln checkpoint's `model.` tensors load into it
    with strict=True (the masks are not stored; kiln keeps the masked weights at zero)."""

    def __init__(self, h=32, blocks=5):
        super().__init__()
        self.input_conv = MaskedConv2d(1, h, 7, "A")
        self.blocks = nn.ModuleList([ResidualBlock(h) for _ in range(blocks)])
        self.output = nn.Sequential(nn.ReLU(), nn.Conv2d(h, h, 1), nn.ReLU(), nn.Conv2d(h, 1, 1))

    def forward(self, x):
        h = self.input_conv(x)
        for block in self.blocks:
            h = block(h)
        return self.output(h)


def make_step(name, batch, device):
    """One training step of kiln's DDPM (`ddpm`) or PixelCNN (`pixelcnn`) as kiln takes it, on
    the images `[batch, 1, 28, 28]` in [0, 1] given to the returned function."""
    if name == "ddpm":
        model = UNet().to(device)
        ema = copy.deepcopy(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
        betas = torch.linspace(1e-4, 0.02, 1000, device=device)
        alpha_bars = torch.cumprod(1 - betas, 0)
        steps_done = [0]

        def step(images):
            x0 = images * 2 - 1
            t = torch.randint(0, 1000, (batch,), device=device)
            noise = torch.randn_like(x0)
            a = alpha_bars[t][:, None, None, None]
            loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t), noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            s = steps_done[0]
            decay = min(0.999, (1 + s) / (10 + s))
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.mul_(decay).add_(p, alpha=1 - decay)
            steps_done[0] += 1
            return loss

        return step
    model = PixelCnn().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(images):
        x = (torch.rand_like(images) < images).float()
        loss = F.binary_cross_entropy_with_logits(model(x), x, reduction="sum") / batch
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ddpm", choices=["ddpm", "pixelcnn"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.rand(args.batch, 1, 28, 28, device=device)
    step = make_step(args.model, args.batch, device)

    for _ in range(3):
        step(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step(images)
    float(loss.detach())  # one sync at the end, as kiln logs
    elapsed = time.perf_counter() - start
    print(f"torch {torch.__version__} {args.model} batch {args.batch} on {args.device} "
          f"({torch.get_num_threads()} threads): {args.steps * args.batch / elapsed:.0f} images/s, "
          f"{elapsed / args.steps * 1e3:.1f} ms/step")


if __name__ == "__main__":
    main()
