"""Stand-in benchmark folders: the real CIRR and FashionIQ val annotations with one small
generated image per id (the real images are not redistributable)."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(os.environ.get("CIR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_real_annotations = pytest.mark.skipif(
    not (SHARED_DATA / "cirr" / "captions").is_dir() or not (SHARED_DATA / "fashioniq" / "captions").is_dir(),
    reason=f"real CIRR/FashionIQ annotations not found under {SHARED_DATA}")


def write_standin_image(path: Path, seed: int, size: int = 16) -> None:
    """A small image with its own colour blocks, so different ids get different features."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(blocks).resize((size, size), Image.NEAREST).save(path)


def write_cirr_val_standin(root: Path) -> Path:
    """The official cirr_dataset layout with every real val annotation and one image per listed id."""
    annotations = root / "cirr"
    shutil.copytree(SHARED_DATA / "cirr" / "captions", annotations / "captions")
    shutil.copytree(SHARED_DATA / "cirr" / "image_splits", annotations / "image_splits")
    relpaths = json.loads((annotations / "image_splits" / "split.rc2.val.json").read_text())
    for seed, relpath in enumerate(relpaths.values()):
        write_standin_image(root / relpath, seed)
    return root


def write_fashioniq_val_standin(root: Path, records_per_category: int = 60) -> Path:
    """The fashionIQ_dataset layout with the first real val records of each category, a gallery
    of their images, and one image per id."""
    seed = 0
    for category in ("dress", "shirt", "toptee"):
        records = json.loads((SHARED_DATA / "fashioniq" / "captions" / f"cap.{category}.val.json").read_text())
        records = records[:records_per_category]
        ids = list(dict.fromkeys(i for r in records for i in (r["candidate"], r["target"])))
        for kind, data in (("captions", records), ("image_splits", ids)):
            prefix = "cap" if kind == "captions" else "split"
            path = root / kind / f"{prefix}.{category}.val.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
        for image_id in ids:
            seed += 1
            write_standin_image(root / "images" / f"{image_id}.png", seed)
    return root
