"""Caption banks: texts encoded once by a model's text side, searched by nearest neighbour.

The paper's first check of a sentence prompt is the captions nearest to it in the
embedding space: does the prompt say what the target shows, and has it dropped what the
caption removes? A bank holds the texts that describe a gallery (a benchmark's image
descriptions, else its relative captions), their vectors from `SPRCModel.text_vectors`
(the space of the composed queries) and the weights fingerprint of the model that
encoded them, so a bank of another model is refused rather than silently compared.

Folder layout: `captions.json` ({"fingerprint", "key", "texts", "image_ids"}) and
`vectors.npy` ((N, D) float32), written atomically.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cir_core.atomic import staged_folder

TEXTS_FILE = "captions.json"
VECTORS_FILE = "vectors.npy"


class CaptionBankError(ValueError):
    """A caption bank that cannot be used with this model (another model's, or damaged)."""


@dataclass
class CaptionMatch:
    """One text of a bank near a query vector."""

    text: str  # the caption
    image_id: str | None  # the gallery image it describes, when it describes one
    similarity: float  # cosine similarity to the query vector


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
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), batch_size), desc="caption bank", unit="batch",
                              disable=not progress):
                batch = model.tokenize_descriptions(texts[start:start + batch_size])
                chunks.append(model.text_vectors(batch).float().cpu().numpy())
        return cls(texts=list(texts), image_ids=image_ids, vectors=np.concatenate(chunks),
                   fingerprint=weights_fingerprint(model), key=key)

    def nearest(self, vectors: torch.Tensor | np.ndarray, k: int = 5) -> list[list[CaptionMatch]]:
        """For each of B query vectors (B, D), its k most similar texts, best first."""
        queries = torch.as_tensor(np.asarray(vectors, dtype=np.float32)).reshape(-1, self.vectors.shape[1])
        similarities = torch.nn.functional.normalize(queries, dim=-1) @ torch.from_numpy(self.vectors).T  # (B, N)
        top = similarities.topk(min(k, len(self.texts)), dim=1)
        return [[CaptionMatch(self.texts[i], self.image_ids[i], float(score)) for score, i in zip(scores, rows)]
                for scores, rows in zip(top.values.tolist(), top.indices.tolist())]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        with staged_folder(folder) as staging:
            (staging / TEXTS_FILE).write_text(json.dumps({"fingerprint": self.fingerprint, "key": self.key,
                                                          "texts": self.texts, "image_ids": self.image_ids}))
            np.save(staging / VECTORS_FILE, self.vectors.astype(np.float32))
        return folder

    @classmethod
    def load(cls, folder: str | Path, model=None, key: str | None = None) -> CaptionBank:
        """The bank in `folder`; refused (CaptionBankError) when `model` or `key` is not the one it was built for."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / TEXTS_FILE).read_text())
            vectors = np.load(folder / VECTORS_FILE, allow_pickle=False)
            texts, image_ids, fingerprint = meta["texts"], meta["image_ids"], meta["fingerprint"]
        except FileNotFoundError as error:
            raise CaptionBankError(f"{folder} is not a caption bank ({error.filename} is missing)") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CaptionBankError(f"caption bank {folder} is damaged ({type(error).__name__}: {error})") from None
        if not (isinstance(texts, list) and isinstance(image_ids, list) and vectors.ndim == 2
                and len(texts) == len(image_ids) == vectors.shape[0]):
            raise CaptionBankError(f"caption bank {folder} is damaged: texts, ids and vectors disagree")
        if model is not None:
            from cir_core.checkpoints import weights_fingerprint

            if fingerprint != weights_fingerprint(model):
                raise CaptionBankError(f"caption bank {folder} was encoded by another model "
                                       f"(fingerprint {fingerprint}, this model {weights_fingerprint(model)})")
            if vectors.shape[1] != model.config.embed_dim:
                raise CaptionBankError(f"caption bank {folder} holds {vectors.shape[1]}-d vectors; "
                                       f"the model's are {model.config.embed_dim}-d")
        if key is not None and meta.get("key") != key:
            raise CaptionBankError(f"caption bank {folder} was built from other texts")
        return cls(texts=texts, image_ids=image_ids, vectors=vectors.astype(np.float32), fingerprint=fingerprint,
                   key=meta.get("key", ""))
