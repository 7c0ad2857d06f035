"""Caption banks: texts encoded once by a model's text side, searched by nearest neighbour.

The paper's first check of a sentence prompt is the captions nearest to it in the
embedding space: does the prompt say what the target shows, and has it dropped what the
caption removes? A bank holds the texts that describe a gallery (a benchmark's image
descriptions, else its relative captions), their vectors from `SPRCModel.text_vectors`
(the space of the composed queries) and the weights fingerprint of the model that
encoded them, so a bank of another model is refused rather than silently compared.

A bank is one cache file (`cir_core.cache_files`, schema BANK_SCHEMA) of two sections:
"meta", JSON {"fingerprint", "key", "texts", "image_ids"}, and "vectors", an (N, D)
float32 npy array. A cached bank is used only when its checksum holds, its texts are
strings (ids strings or None), its vectors are finite unit vectors of the model's width,
one per text, and a few texts encoded again land on their own rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cir_core.cache_files import (
    CacheFileError,
    json_section,
    load_cache,
    npy_section,
    parse_json,
    parse_npy,
    read_cache,
    write_cache,
)

BANK_SCHEMA = "caption-bank/2"
MAX_BANK_BYTES = 1 << 32  # without a caller's own budget: far above any benchmark's captions
UNIT_TOLERANCE = 1e-2  # |norm - 1| of a stored vector (fp16 encoders included)
SPOT_CHECK_ROWS = 3  # texts encoded again on load, spread over the bank
SPOT_CHECK_SIMILARITY = 0.99  # a text encoded again agrees with its stored row at least this well...
SPOT_CHECK_MARGIN = 1e-3  # ...and no other row is closer to it by more than this (encoding noise)


class CaptionBankError(CacheFileError):
    """A caption bank that cannot be used with this model (another model's, or damaged)."""


@dataclass
class CaptionMatch:
    """One text of a bank near a query vector."""

    text: str  # the caption
    image_id: str | None  # the gallery image it describes, when it describes one
    similarity: float  # cosine similarity to the query vector


def bank_budget(count: int, dim: int, listed_bytes: int) -> int:
    """Bytes a bank file of `count` texts of `dim`-d vectors may take, when the texts and ids
    serialise to `listed_bytes` of JSON: room for the fingerprint, key and headers on top."""
    return 4 * count * dim + 6 * listed_bytes + (1 << 16)


@dataclass
class CaptionBank:
    """Texts and their unit vectors (N, D), encoded by the model whose fingerprint they carry."""

    texts: list[str]
    image_ids: list[str | None]  # aligned with texts
    vectors: np.ndarray  # (N, D) float32, L2-normalised
    fingerprint: str  # weights fingerprint of the encoding model
    key: str = ""  # what the texts came from (e.g. a benchmark source's cache key)

    @classmethod
    def build(cls, model, texts: list[str], image_ids: list[str | None] | None = None, key: str = "",
              batch_size: int = 256, progress: bool = True) -> CaptionBank:
        from cir_core.checkpoints import weights_fingerprint

        if not texts:
            raise ValueError("a caption bank needs at least one text")
        image_ids = list(image_ids) if image_ids is not None else [None] * len(texts)
        if len(image_ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(image_ids)} image ids")
        chunks = []
        for start in tqdm(range(0, len(texts), batch_size), desc="caption bank", unit="batch",
                          disable=not progress):
            chunks.append(_encode(model, texts[start:start + batch_size]))
        return cls(texts=list(texts), image_ids=image_ids, vectors=np.concatenate(chunks),
                   fingerprint=weights_fingerprint(model), key=key)

    def nearest(self, vectors: torch.Tensor | np.ndarray, k: int = 5) -> list[list[CaptionMatch]]:
        """For each of B query vectors (B, D), its k most similar texts, best first."""
        queries = torch.as_tensor(np.asarray(vectors, dtype=np.float32)).reshape(-1, self.vectors.shape[1])
        similarities = torch.nn.functional.normalize(queries, dim=-1) @ torch.from_numpy(self.vectors).T  # (B, N)
        top = similarities.topk(min(k, len(self.texts)), dim=1)
        return [[CaptionMatch(self.texts[i], self.image_ids[i], float(score)) for score, i in zip(scores, rows)]
                for scores, rows in zip(top.values.tolist(), top.indices.tolist())]

    def save(self, path: str | Path) -> Path:
        """Write the bank to the cache file `path` (atomically, with its checksum)."""
        meta = {"fingerprint": self.fingerprint, "key": self.key, "texts": self.texts, "image_ids": self.image_ids}
        return write_cache(path, BANK_SCHEMA, {"meta": json_section(meta),
                                               "vectors": npy_section(self.vectors.astype(np.float32))})

    @classmethod
    def load(cls, path: str | Path, model=None, key: str | None = None,
             max_bytes: int = MAX_BANK_BYTES) -> CaptionBank:
        """The bank in the file `path`; CaptionBankError when it is damaged, or `model` or `key`
        is not the one it was built for. The file is left as it is."""
        try:
            return cls._parse(read_cache(path, BANK_SCHEMA, max_bytes), model, key)
        except FileNotFoundError:
            raise CaptionBankError(f"{path} is not a caption bank (there is no such file)") from None
        except CaptionBankError:
            raise
        except (OSError, ValueError) as error:
            raise CaptionBankError(f"caption bank {path} is damaged ({error})") from None

    @classmethod
    def cached(cls, path: str | Path, model, key: str, max_bytes: int = MAX_BANK_BYTES) -> CaptionBank | None:
        """The bank cached in `path` for `model` and `key`; None when there is none or it cannot be
        used, in which case it is logged in one line and deleted, for the caller to encode again."""
        return load_cache(path, BANK_SCHEMA, max_bytes, lambda sections: cls._parse(sections, model, key),
                          "caption bank")

    @classmethod
    def _parse(cls, sections: dict[str, bytes], model, key: str | None) -> CaptionBank:
        if set(sections) != {"meta", "vectors"}:
            raise CaptionBankError(f"damaged: sections {sorted(sections)}, expected meta and vectors")
        meta = parse_json(sections["meta"], "the texts")
        if not (isinstance(meta, dict) and isinstance(meta.get("fingerprint"), str)
                and isinstance(meta.get("key"), str)):
            raise CaptionBankError("damaged: the texts lack the fingerprint or key")
        texts, image_ids, fingerprint = meta.get("texts"), meta.get("image_ids"), meta["fingerprint"]
        if not (isinstance(texts, list) and texts and all(isinstance(text, str) for text in texts)):
            raise CaptionBankError("damaged: the texts are not a list of strings")
        if not (isinstance(image_ids, list) and len(image_ids) == len(texts)
                and all(image_id is None or isinstance(image_id, str) for image_id in image_ids)):
            raise CaptionBankError("damaged: the image ids are not one string or null per text")
        if model is not None:
            from cir_core.checkpoints import weights_fingerprint

            if fingerprint != weights_fingerprint(model):
                raise CaptionBankError(f"encoded by another model (fingerprint {fingerprint:.32}, "
                                       f"this model {weights_fingerprint(model)})")
        if key is not None and meta["key"] != key:
            raise CaptionBankError("built from other texts")
        vectors = parse_npy(sections["vectors"], np.float32, 2, "the vectors")
        dim = model.config.embed_dim if model is not None else vectors.shape[1]
        if vectors.shape != (len(texts), dim) or dim == 0:
            raise CaptionBankError(f"damaged: vectors of shape {vectors.shape} for {len(texts)} texts of the "
                                   f"model's {dim}-d space")
        if not np.isfinite(vectors).all():
            raise CaptionBankError("damaged: the vectors hold NaN or infinity")
        if np.abs(np.linalg.norm(vectors, axis=1) - 1).max() > UNIT_TOLERANCE:
            raise CaptionBankError("damaged: the vectors are not unit vectors")
        bank = cls(texts=texts, image_ids=image_ids, vectors=vectors, fingerprint=fingerprint, key=meta["key"])
        if model is not None:
            bank._spot_check(model)
        return bank

    def _spot_check(self, model) -> None:
        """A few texts encoded again land on their own rows: a bank whose rows were reordered or
        overwritten is refused, whatever its checksum."""
        rows = sorted({round(i * (len(self.texts) - 1) / max(SPOT_CHECK_ROWS - 1, 1)) for i in range(SPOT_CHECK_ROWS)})
        similarities = _encode(model, [self.texts[row] for row in rows]) @ self.vectors.T  # (R, N)
        for position, row in enumerate(rows):
            own, best = similarities[position, row], similarities[position].max()
            if own < SPOT_CHECK_SIMILARITY or own < best - SPOT_CHECK_MARGIN:
                raise CaptionBankError(f"damaged: text {row} encoded again has similarity {own:.4f} with its "
                                       f"stored vector, {best:.4f} with the nearest stored vector")


def _encode(model, texts: list[str]) -> np.ndarray:
    """(len(texts), D) float32 unit vectors of `model`'s text side."""
    with torch.inference_mode():
        return model.text_vectors(model.tokenize_descriptions(texts)).float().cpu().numpy()
