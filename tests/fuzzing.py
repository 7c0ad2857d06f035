"""Seeded corruptions for the loaders' fuzz tests."""
import random
from pathlib import Path


def corrupt_file(path: Path, rng: random.Random, truncate: bool, max_flips: int = 6) -> None:
    """Cut `path` at a random byte (`truncate`), else overwrite 1 to `max_flips` random bytes."""
    blob = bytearray(path.read_bytes())
    if truncate:
        blob = blob[:rng.randrange(len(blob))]
    else:
        for _ in range(rng.randint(1, max_flips)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
    path.write_bytes(bytes(blob))
