"""The repository ships real weights, and marks its large binaries for Git LFS (for a Space push)."""
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LARGE = 10 * 2**20  # Spaces refuse files above this without LFS
LFS_POINTER = b"version https://git-lfs"


def lfs_patterns() -> list[str]:
    lines = (ROOT / ".gitattributes").read_text().splitlines()
    return [line.split()[0] for line in lines if "filter=lfs" in line and not line.startswith("#")]


def test_every_large_shipped_file_goes_through_lfs_on_a_space():
    patterns = lfs_patterns()
    large = [path for folder in ("checkpoints", "assets") for path in (ROOT / folder).rglob("*")
             if path.is_file() and path.stat().st_size > LARGE]
    assert large, "the shipped weights should be among the large files"
    assert [p for p in large if not any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)] == []


@pytest.mark.parametrize("name", ["model.safetensors", "gallery_index_seed.npz"])
def test_shipped_binaries_are_real_files_not_lfs_pointers(name):
    path = ROOT / "checkpoints" / "shapes-mini" / name
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    with open(path, "rb") as handle:
        assert not handle.read(len(LFS_POINTER)).startswith(LFS_POINTER)
    assert path.stat().st_size > LARGE
