#!/usr/bin/env python3
"""The interop check's PyTorch half (`just interop`): loads the checkpoints that
examples/interop.rs wrote into the equivalent PyTorch modules with
`safetensors.torch.load_file` and `load_state_dict(strict=True)`, runs the same inputs, and
compares with kiln's outputs (evaluation mode, then training mode and the running statistics
it leaves). Exits non-zero on any mismatch.

Usage: python scripts/interop.py OUT_DIR
"""

import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file

TOLERANCE = 1e-4  # max |kiln - torch| / (1 + |torch|), f32


def generator():
    model = nn.Sequential()
    model.add_module("main", nn.Sequential(
        nn.Linear(100, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (128, 7, 7)),
        nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh()))
    return model


def discriminator():
    model = nn.Sequential()
    model.add_module("main", nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1)))
    return model


def main(out):
    io = load_file(f"{out}/io.safetensors")
    failures = 0

    def compare(what, kiln, torch_value):
        nonlocal failures
        error = ((kiln - torch_value).abs() / (1 + torch_value.abs())).max().item()
        ok = error <= TOLERANCE
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what:56} {tuple(torch_value.shape)!s:18} max rel error {error:.2e}")

    for name, make, inputs in [("generator", generator, io["z"]),
                               ("discriminator", discriminator, io["images"])]:
        model = make()
        state = load_file(f"{out}/{name}.safetensors")
        model.load_state_dict(state, strict=True)
        print(f"{name}: loaded {len(state)} tensors with strict=True")
        with torch.no_grad():
            compare(f"{name} output, eval mode", io[f"{name}.eval"], model.eval()(inputs))
            compare(f"{name} output, train mode", io[f"{name}.train"], model.train()(inputs))
            for key, buffer in model.named_buffers():
                if key.endswith("num_batches_tracked"):
                    continue
                compare(f"{name} {key} after the train pass", io[f"{name}.after.{key}"], buffer)
    print(f"torch {torch.__version__}: {'all match' if failures == 0 else f'{failures} mismatches'}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
