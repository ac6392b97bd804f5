#!/usr/bin/env python3
"""PyTorch's VAE example (github.com/pytorch/examples, vae/main.py) on the committed MNIST:
the same model (784 → 400 → 20, 20 → 400 → 784), loss (binary cross-entropy summed over
pixels + KL), Adam(1e-3), batch 128 and 10 epochs, so its per-epoch test loss and wall time
sit beside `kiln train vae`'s. The only changes: the IDX files are read from data/mnist
instead of torchvision's download, and each epoch's wall time is printed (and, with --json,
every figure is written as JSON lines). `--model conv` trains kiln's `conv-vae` instead (the
same loss and optimizer), to compare with `kiln train conv-vae`.

Usage: python benches/reference/torch_vae.py [--model mlp|conv] [--epochs 10] [--seed 1]
                                             [--threads N] [--json F]
"""

import argparse
import gzip
import json
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[2]


def idx_images(name):
    with gzip.open(ROOT / "data" / "mnist" / name, "rb") as f:
        data = f.read()
    count = int.from_bytes(data[4:8], "big")
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, 1, 28, 28)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)  # ToTensor(): [0, 1]


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


class ConvVAE(VAE):
    """kiln-vae's `conv-vae`: strided convolutions 28 → 14 → 7 and back, latent 20."""

    def __init__(self):
        nn.Module.__init__(self)
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(),
                                     nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.fc_mu = nn.Linear(64 * 7 * 7, 20)
        self.fc_logvar = nn.Linear(64 * 7 * 7, 20)
        self.decoder = nn.Sequential(nn.Linear(20, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
                                     nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(32, 1, 4, 2, 1))

    def encode(self, x):
        h = self.encoder(x.view(-1, 1, 28, 28))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z)).view(-1, 784)


def loss_function(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def make_step(name, batch):
    """One training step of the MLP (`vae`) or convolutional (`conv-vae`) VAE, as in `main`'s
    epoch, on the images `[batch, 1, 28, 28]` in [0, 1] given to the returned function."""
    model = VAE() if name == "vae" else ConvVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(data):
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar) / batch  # kiln: the batch's mean
        loss.backward()
        optimizer.step()
        return loss

    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["mlp", "conv"], default="mlp")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = torch.utils.data.TensorDataset(idx_images("train-images-idx3-ubyte.gz"))
    test = torch.utils.data.TensorDataset(idx_images("t10k-images-idx3-ubyte.gz"))
    train_loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=128, shuffle=False)
    model = VAE() if args.model == "mlp" else ConvVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = open(args.json, "w") if args.json else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        model.train()
        train_loss = 0.0
        for (data,) in train_loader:
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        seconds = time.perf_counter() - started
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for (data,) in test_loader:
                recon_batch, mu, logvar = model(data)
                test_loss += loss_function(recon_batch, data, mu, logvar).item()
        record = {
            "epoch": epoch,
            "train_loss": train_loss / len(train),
            "test_loss": test_loss / len(test),
            "train_seconds": seconds,
        }
        print(f"====> Epoch: {epoch} Average loss: {record['train_loss']:.4f}  "
              f"Test set loss: {record['test_loss']:.4f}  ({seconds:.1f} s)")
        if out:
            out.write(json.dumps(record) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
