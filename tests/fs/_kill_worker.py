"""The child of the kill -9 fuzz: overwrites one file with atomic_write_bytes, forever.

Each version it writes checks itself: a magic line, then a header with the version's
sequence number, the body's length and the SHA-256 of body and sequence number, then the
body. Body sizes range from empty to 4 MiB, so writes below and above ``SPILL_BYTES`` (a
spill, then the commit) are both killed. The bodies are made (and hashed) before the
loop starts, so the child spends its time writing rather than making data.

The child writes one byte to the pipe it was given: ``R`` once it is ready (imports
done, loop running, about to start the first write), then ``W`` after every completed
write. The parent kills it with SIGKILL whenever it likes.

Run as ``python _kill_worker.py '{"target": ..., "seed": ..., "first": ..., "fd": ...}'``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import struct
import sys

from retract import atomic_write_bytes

MAGIC = b"retract kill fuzz v1\n"
#: sequence number, body length, SHA-256 of the body followed by the sequence number
HEADER = struct.Struct(">QQ32s")
MIB = 1024 * 1024
#: Body sizes: tiny, around a page, around the spill size, and the largest, 4 MiB.
SIZES = (0, 1, 200, 4095, 4096, 70_000, MIB, 4 * MIB - 1024, 4 * MIB)


class TornVersionError(ValueError):
    """The bytes are not one complete version."""


def _digest(body_hash: hashlib._Hash, sequence: int) -> bytes:
    digest = body_hash.copy()
    digest.update(sequence.to_bytes(8, "big"))
    return digest.digest()


def make_version(sequence: int, body: bytes, body_hash: hashlib._Hash | None = None) -> bytes:
    """The bytes of version ``sequence`` carrying ``body`` (``body_hash``: its sha256)."""
    digest = _digest(body_hash or hashlib.sha256(body), sequence)
    return MAGIC + HEADER.pack(sequence, len(body), digest) + body


def read_version(data: bytes) -> int:
    """The sequence number of a complete version; TornVersionError says what is wrong."""
    start = len(MAGIC) + HEADER.size
    if len(data) < start or not data.startswith(MAGIC):
        raise TornVersionError(f"no complete header ({len(data)} bytes: {data[:48]!r})")
    sequence, length, digest = HEADER.unpack_from(data, len(MAGIC))
    body = data[start:]
    if len(body) != length:
        raise TornVersionError(f"version {sequence}: body has {len(body)} bytes, not {length}")
    if _digest(hashlib.sha256(body), sequence) != digest:
        raise TornVersionError(f"version {sequence}: the body's SHA-256 does not match")
    return int(sequence)


async def overwrite_forever(target: str, seed: int, first: int, fd: int) -> None:
    rng = random.Random(seed)
    bodies = [rng.randbytes(size) for size in SIZES]
    hashes = [hashlib.sha256(body) for body in bodies]
    os.write(fd, b"R")
    sequence = first
    while True:
        pick = rng.randrange(len(SIZES))
        version = make_version(sequence, bodies[pick], hashes[pick])
        await atomic_write_bytes(target, version, overwrite=True)
        os.write(fd, b"W")
        sequence += 1


def main() -> None:
    config = json.loads(sys.argv[1])
    asyncio.run(overwrite_forever(config["target"], config["seed"], config["first"], config["fd"]))


if __name__ == "__main__":
    main()
