#!/usr/bin/env python3
"""Writes the fuzzer's seed inputs to fuzz/seeds/: one small valid IDX file per element type,
raw and gzip-compressed (gzip with mtime 0, so the bytes are the same every run). Run from the
repository root: python3 fuzz/make_seeds.py"""
import gzip
import os
import struct

TYPES = {"u8": (0x08, "B"), "i8": (0x09, "b"), "i16": (0x0B, "h"), "i32": (0x0C, "i"),
         "f32": (0x0D, "f"), "f64": (0x0E, "d")}
DIMS = [2, 3, 2]

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
os.makedirs(out, exist_ok=True)
for name, (code, fmt) in TYPES.items():
    values = [i * 37 % 100 - 50 if fmt in "bhi" else i * 7 for i in range(12)]
    if fmt in "fd":
        values = [v / 4.0 for v in values]
    header = bytes([0, 0, code, len(DIMS)]) + b"".join(struct.pack(">I", d) for d in DIMS)
    payload = b"".join(struct.pack(">" + fmt, v) for v in values)
    raw = header + payload
    with open(os.path.join(out, f"{name}.idx"), "wb") as f:
        f.write(raw)
    with open(os.path.join(out, f"{name}.idx.gz"), "wb") as f:
        f.write(gzip.compress(raw, mtime=0))
