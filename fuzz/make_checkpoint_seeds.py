#!/usr/bin/env python3
"""Writes the checkpoint fuzzer's seed inputs to fuzz/seeds-checkpoint/: small safetensors files
as kiln writes them (a few dtypes, kiln's metadata, the FNV-1a checksum of both) and one
without metadata, as other tools write them. Run from the repository root:
python3 fuzz/make_checkpoint_seeds.py"""
import json
import os
import struct

OFFSET, PRIME, MASK = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def fnv(entries, metadata):
    """kiln_nn::checkpoint's checksum: name, dtype, shape and bytes of each tensor, by name,
    then each metadata entry's key and value (each after its length), by key."""
    blob = b""
    for name, dtype, shape, data in sorted(entries):
        blob += name.encode() + dtype.encode()
        blob += b"".join(struct.pack("<Q", d) for d in shape)
        blob += struct.pack("<Q", len(data)) + data
    for key, value in sorted(metadata.items()):
        for text in (key.encode(), value.encode()):
            blob += struct.pack("<Q", len(text)) + text
    h = OFFSET
    for byte in blob:
        h = ((h ^ byte) * PRIME) & MASK
    return f"{h:016x}"


def safetensors(tensors, metadata):
    header, data = {}, b""
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


tensors = [
    ("generator.main.0.weight", "F32", [2, 3], struct.pack("<6f", *[0.5 * i for i in range(6)])),
    ("generator.main.0.bias", "F32", [2], struct.pack("<2f", -1.0, 1.0)),
    ("optimizer.step", "U32", [1], struct.pack("<I", 7)),
    ("half", "F16", [2], struct.pack("<2H", 0x3C00, 0xC000)),
    ("brain", "BF16", [2], struct.pack("<2H", 0x3F80, 0x4000)),
    ("mask", "U8", [4], bytes([0, 1, 2, 255])),
]
metadata = {
    "kiln.model": "gan",
    "kiln.config": json.dumps({"architecture": "gan", "latent_dim": 2, "batch_size": 4}),
    "kiln.step": "7",
    "kiln.generator.noise.seed": "3",
    "kiln.generator.noise.offset": "12",
    "kiln.dataset": "mnist",
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds-checkpoint")
os.makedirs(out, exist_ok=True)
kiln = dict(metadata, **{"kiln.checksum": fnv(tensors, metadata)})
for name, blob in [("kiln.safetensors", safetensors(tensors, kiln)),
                   ("plain.safetensors", safetensors(tensors[:2], None)),
                   ("empty.safetensors", safetensors([], {"note": "no tensors"}))]:
    with open(os.path.join(out, name), "wb") as f:
        f.write(blob)
