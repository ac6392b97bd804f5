#!/usr/bin/env python3
"""The interop check's PyTorch half (`just interop`): loads the checkpoints that
examples/interop.rs wrote for each of kiln's GANs into the equivalent PyTorch modules with
`safetensors.torch.load_file` and `load_state_dict(strict=True)`, runs the same inputs, and
compares with kiln's outputs (evaluation mode, then training mode and the running statistics
it leaves); then the same for kiln's two VAEs (the posterior, the decoder, and the negative
ELBO's two terms computed as PyTorch's VAE example computes its loss). Exits non-zero on any
mismatch.

Usage: python scripts/interop.py OUT_DIR
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

TOLERANCE = 1e-4  # max |kiln - torch| / (1 + |torch|), f32


def mlp(widths):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(widths):
            layers.append(nn.LeakyReLU(0.2))
    return layers


class MlpGenerator(nn.Module):
    """kiln-gan's `gan`/`wgan-gp` generator, and with `classes`, the `cgan` one."""

    def __init__(self, classes=0):
        super().__init__()
        if classes:
            self.label_embedding = nn.Embedding(classes, 10)
        self.main = nn.Sequential(*mlp([100 + (10 if classes else 0), 256, 512, 1024, 784]), nn.Tanh())

    def forward(self, z, labels):
        if hasattr(self, "label_embedding"):
            z = torch.cat([z, self.label_embedding(labels)], 1)
        return self.main(z).view(-1, 1, 28, 28)


class MlpDiscriminator(nn.Module):
    def __init__(self, classes=0):
        super().__init__()
        if classes:
            self.label_embedding = nn.Embedding(classes, 10)
        self.main = nn.Sequential(*mlp([784 + (10 if classes else 0), 512, 256, 1]))

    def forward(self, x, labels):
        x = x.flatten(1)
        if hasattr(self, "label_embedding"):
            x = torch.cat([x, self.label_embedding(labels)], 1)
        return self.main(x)


class DcganGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(100, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
            nn.Unflatten(1, (128, 7, 7)),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z, labels):
        return self.main(z)


class DcganDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(128 * 7 * 7, 1))

    def forward(self, x, labels):
        return self.main(x)


class MlpVae(nn.Module):
    """kiln-vae's `vae`: the model of PyTorch's VAE example (its decoder returns logits)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h = F.relu(self.fc1(x.flatten(1)))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        return self.fc4(F.relu(self.fc3(z))).view(-1, 1, 28, 28)

    def reconstruction(self, logits, x):
        bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none")
        return bce.flatten(1).sum(1)


class ConvVae(nn.Module):
    """kiln-vae's `conv-vae` with the Gaussian likelihood (one learned log σ)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(),
                                     nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.fc_mu = nn.Linear(64 * 7 * 7, 20)
        self.fc_logvar = nn.Linear(64 * 7 * 7, 20)
        self.decoder = nn.Sequential(nn.Linear(20, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
                                     nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(32, 1, 4, 2, 1))
        self.log_scale = nn.Parameter(torch.zeros(1))

    def encode(self, x):
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return self.decoder(z)

    def reconstruction(self, logits, x):
        normal = torch.distributions.Normal(torch.sigmoid(logits), self.log_scale.exp())
        return -normal.log_prob(x).flatten(1).sum(1)


def check_vae(name, make, out, compare):
    io = load_file(f"{out}/{name}.io.safetensors")
    model = make()
    state = load_file(f"{out}/{name}.model.safetensors")
    model.load_state_dict(state, strict=True)
    print(f"{name}: loaded {len(state)} tensors with strict=True")
    with torch.no_grad():
        x = io["images"]
        mu, logvar = model.encode(x)
        compare("posterior mean", io["mu"], mu)
        compare("posterior log variance", io["logvar"], logvar)
        compare("decoder logits at the mean", io["logits"], model.decode(mu))
        z = mu + torch.exp(0.5 * logvar) * io["epsilon"]
        compare("-log p(x|z) per image", io["reconstruction"], model.reconstruction(model.decode(z), x))
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), 1)
        compare("KL(q(z|x) || p(z)) per image", io["kl"], kl)


MODELS = {
    "gan": (MlpGenerator, MlpDiscriminator, {}),
    "dcgan": (DcganGenerator, DcganDiscriminator, None),
    "cgan": (MlpGenerator, MlpDiscriminator, {"classes": 10}),
    "wgan-gp": (MlpGenerator, MlpDiscriminator, {}),
}


def main(out):
    failures = 0

    def compare(what, kiln, torch_value):
        nonlocal failures
        error = ((kiln - torch_value).abs() / (1 + torch_value.abs())).max().item()
        ok = error <= TOLERANCE
        failures += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {what:46} {tuple(torch_value.shape)!s:16} max rel error {error:.1e}")

    for name, (make_generator, make_discriminator, options) in MODELS.items():
        io = load_file(f"{out}/{name}.io.safetensors")
        labels = io["labels"].to(torch.int64)
        networks = [("generator", make_generator(**(options or {})), io["z"]),
                    ("discriminator", make_discriminator(**(options or {})), io["images"])]
        for network, model, inputs in networks:
            state = load_file(f"{out}/{name}.{network}.safetensors")
            model.load_state_dict(state, strict=True)
            print(f"{name} {network}: loaded {len(state)} tensors with strict=True")
            with torch.no_grad():
                compare("output, eval mode", io[f"{network}.eval"], model.eval()(inputs, labels))
                compare("output, train mode", io[f"{network}.train"], model.train()(inputs, labels))
                for key, buffer in model.named_buffers():
                    if not key.endswith("num_batches_tracked"):
                        compare(f"{key} after the train pass", io[f"{network}.after.{key}"], buffer)
    for name, make in [("vae", MlpVae), ("conv-vae", ConvVae)]:
        check_vae(name, make, out, compare)
    print(f"torch {torch.__version__}: {'all match' if failures == 0 else f'{failures} mismatches'}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
