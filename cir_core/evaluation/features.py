"""Memory-bounded feature extraction and scoring shared by every evaluation protocol.

The gallery is encoded once in batches; only its target vectors (N, Q, D) are kept, on
the CPU (a ViT-g gallery's raw vision features would be ~1.4 MB per image). Queries are
encoded in batches; each batch's reference images are either re-encoded or gathered
from an optional CPU cache of the gallery's vision features. Scores are computed in
chunks of queries x gallery so the accelerator holds one chunk at a time.

Features can be saved and evaluated later without a model (.pt or .npz).
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cir_core.data.triplets import TripletSplit
from cir_core.model import SPRCModel
from cir_core.precision import gallery_encoder, resolve_gallery_precision
from cir_core.transforms import ImageTransform

logger = logging.getLogger(__name__)

FEATURE_FILE_SUFFIXES = (".pt", ".npz")


@dataclass
class RetrievalFeatures:
    """Everything a protocol needs to rank: gallery target vectors and composed query vectors."""

    split: str  # TripletSplit.name the features were computed for
    gallery_ids: list[str]  # image id of each gallery row, in TripletSplit.gallery order
    gallery_targets: torch.Tensor  # (Ng, Q, D) L2-normalised target vectors, on the CPU
    pairids: list[str]  # str(pairid) of each query row, in TripletSplit.triplets order
    queries: torch.Tensor  # (Nq, D) L2-normalised composed query vectors, on the CPU

    def check_matches(self, split: TripletSplit) -> None:
        """Refuse features computed for another split (or another version of it)."""
        if self.gallery_ids != list(split.gallery):
            raise ValueError(f"cached features of {self.split!r} have a gallery of {len(self.gallery_ids)} images "
                             f"that differs from {split.name!r} ({len(split.gallery)} images)")
        if self.pairids != [str(t.pairid) for t in split.triplets]:
            raise ValueError(f"cached features of {self.split!r} have {len(self.pairids)} queries "
                             f"that differ from the {len(split)} queries of {split.name!r}")

    def save(self, path: str | Path) -> Path:
        """Write a .pt (torch tensors) or .npz (numpy arrays) file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            torch.save({"split": self.split, "gallery_ids": self.gallery_ids, "gallery_targets": self.gallery_targets,
                        "pairids": self.pairids, "queries": self.queries}, path)
        elif path.suffix == ".npz":
            np.savez(path, split=np.array(self.split), gallery_ids=np.array(self.gallery_ids, dtype=str),
                     gallery_targets=self.gallery_targets.float().numpy(),
                     pairids=np.array(self.pairids, dtype=str), queries=self.queries.float().numpy())
        else:
            raise ValueError(f"feature file {path} must end in {' or '.join(FEATURE_FILE_SUFFIXES)}")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RetrievalFeatures:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature file {path} does not exist")
        try:
            if path.suffix == ".pt":
                data = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(data, dict):
                    raise ValueError(f"it holds a {type(data).__name__}, not a dict")
                fields = {key: data[key] for key in ("split", "gallery_ids", "gallery_targets", "pairids", "queries")}
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    fields = {"split": str(data["split"]), "gallery_ids": [str(i) for i in data["gallery_ids"]],
                              "gallery_targets": torch.from_numpy(data["gallery_targets"]),
                              "pairids": [str(i) for i in data["pairids"]], "queries": torch.from_numpy(data["queries"])}
            else:
                raise ValueError(f"feature file {path} must end in {' or '.join(FEATURE_FILE_SUFFIXES)}")
        except (KeyError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
            raise ValueError(f"{path} is not a feature file written by RetrievalFeatures.save ({error})") from error
        kinds = {"split": str, "gallery_ids": list, "gallery_targets": torch.Tensor, "pairids": list,
                 "queries": torch.Tensor}
        wrong = [key for key, kind in kinds.items() if not isinstance(fields[key], kind)]
        if wrong:
            raise ValueError(f"{path} is not a feature file written by RetrievalFeatures.save "
                             f"({wrong[0]} is a {type(fields[wrong[0]]).__name__})")
        features = cls(**fields)
        if features.gallery_targets.dim() != 3 or features.gallery_targets.shape[0] != len(features.gallery_ids):
            raise ValueError(f"{path}: gallery_targets shape {tuple(features.gallery_targets.shape)} does not fit "
                             f"{len(features.gallery_ids)} gallery ids")
        if features.queries.dim() != 2 or features.queries.shape[0] != len(features.pairids):
            raise ValueError(f"{path}: queries shape {tuple(features.queries.shape)} does not fit "
                             f"{len(features.pairids)} pairids")
        return features


class ImageFiles(Dataset):
    """Image files -> preprocessed tensors; errors name the unreadable file."""

    def __init__(self, paths: list[Path], transform: ImageTransform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return self.transform(image)
        except (OSError, SyntaxError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error


def _image_batches(model: SPRCModel, paths: list[Path], batch_size: int, num_workers: int):
    dataset = ImageFiles(paths, ImageTransform(model.config.preprocess))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def encode_gallery(model: SPRCModel, split: TripletSplit, batch_size: int = 32, progress: bool = True,
                   keep_vision_features: bool = False, num_workers: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gallery images -> target vectors (Ng, Q, D) on the CPU [and vision features (Ng, T, W) on the CPU]."""
    paths = [split.path(image_id) for image_id in split.gallery]
    targets, vision = [], []
    batches = _image_batches(model, paths, batch_size, num_workers)
    for pixels in tqdm(batches, desc=f"{split.name} gallery", unit="batch", disable=not progress):
        encoding = model.encode_images(pixels)
        targets.append(encoding.targets.cpu())
        if keep_vision_features:
            vision.append(encoding.vision_features.cpu())
    empty = torch.empty(0, model.num_query_tokens, model.config.embed_dim)
    return (torch.cat(targets) if targets else empty), (torch.cat(vision) if keep_vision_features and vision else None)


def encode_queries(model: SPRCModel, split: TripletSplit, batch_size: int = 32, progress: bool = True,
                   reference_cache: dict[str, torch.Tensor] | None = None, num_workers: int = 0) -> torch.Tensor:
    """Composed query vectors (Nq, D) on the CPU, one per triplet, with each triplet's `caption`.

    `reference_cache` maps image ids to CPU vision features (T, W); references found
    there are not re-encoded.
    """
    triplets = split.triplets
    queries = []
    starts = range(0, len(triplets), batch_size)
    for start in tqdm(starts, desc=f"{split.name} queries", unit="batch", disable=not progress):
        batch = triplets[start:start + batch_size]
        if reference_cache is not None and all(t.reference in reference_cache for t in batch):
            reference = torch.stack([reference_cache[t.reference] for t in batch])
        else:
            loader = _image_batches(model, [split.path(t.reference) for t in batch], len(batch), num_workers)
            reference = next(iter(loader))
        queries.append(model.encode_query(reference, [t.caption for t in batch]).query.cpu())
    return torch.cat(queries) if queries else torch.empty(0, model.config.embed_dim)


def compute_features(model: SPRCModel, split: TripletSplit, batch_size: int = 32, progress: bool = True,
                     cache_reference_features: bool = False, num_workers: int = 0,
                     query_model: SPRCModel | None = None, gallery_precision: str = "fp32") -> RetrievalFeatures:
    """Encode a split's gallery and queries with `model` (in eval mode, on its current device).

    `cache_reference_features` keeps the gallery's vision features on the CPU so that
    references in the gallery are not encoded twice (faster; ~1.4 MB per ViT-g image).
    `query_model` (a reduced-precision copy of `model`, see `cir_core.precision`)
    encodes the queries instead, as an engine with that query precision would.
    `gallery_precision` encodes the gallery as an index built with that precision would; the
    references are then encoded by the query model, so the reference cache is only used
    for an fp32 gallery.
    """
    was_training = model.training
    model.eval()
    try:
        precision = resolve_gallery_precision(model, gallery_precision)
        with gallery_encoder(model, precision) as encoder:
            targets, vision = encode_gallery(encoder, split, batch_size, progress,
                                             cache_reference_features and precision == "fp32", num_workers)
        cache = dict(zip(split.gallery, vision)) if vision is not None else None
        queries = encode_queries(query_model if query_model is not None else model, split, batch_size, progress,
                                 cache, num_workers)
    finally:
        model.train(was_training)
    logger.info("%s: encoded %d gallery images and %d queries", split.name, len(split.gallery), len(split))
    return RetrievalFeatures(split=split.name, gallery_ids=list(split.gallery), gallery_targets=targets,
                             pairids=[str(t.pairid) for t in split.triplets], queries=queries)


def score_in_chunks(queries: torch.Tensor, gallery_targets: torch.Tensor, device: str | torch.device = "cpu",
                    query_chunk: int = 512, gallery_chunk: int = 8192) -> torch.Tensor:
    """(Nq, D) x (Ng, Q, D) -> (Nq, Ng) max-over-Q scores on the CPU, one chunk pair at a time on `device`.

    The largest intermediate is (query_chunk, gallery_chunk, Q) floats: 512 MiB at the
    defaults with Q = 32, which fits a 24 GB card next to the model.
    """
    scores = torch.empty(queries.shape[0], gallery_targets.shape[0], dtype=torch.float32)
    for g_start in range(0, gallery_targets.shape[0], gallery_chunk):
        block = gallery_targets[g_start:g_start + gallery_chunk].to(device, dtype=torch.float32)
        for q_start in range(0, queries.shape[0], query_chunk):
            chunk = queries[q_start:q_start + query_chunk].to(device, dtype=torch.float32)
            scores[q_start:q_start + query_chunk, g_start:g_start + gallery_chunk] = SPRCModel.score(chunk, block).cpu()
    return scores


def gallery_columns(split: TripletSplit, image_ids: list[str | None], what: str) -> torch.Tensor:
    """Gallery column of each id (-1 for None); an id outside the gallery is an error naming it."""
    column = {image_id: index for index, image_id in enumerate(split.gallery)}
    outside = [image_id for image_id in image_ids if image_id is not None and image_id not in column]
    if outside:
        raise ValueError(f"{split.name}: {len(outside)} {what} images are not in the gallery (first: {outside[0]})")
    return torch.tensor([column[i] if i is not None else -1 for i in image_ids], dtype=torch.long)


def split_scores(model: SPRCModel | None, split: TripletSplit, features: RetrievalFeatures | None = None,
                 batch_size: int = 32, progress: bool = True, cache_reference_features: bool = False,
                 num_workers: int = 0, query_model: SPRCModel | None = None,
                 gallery_precision: str = "fp32") -> torch.Tensor:
    """(Nq, Ng) scores of a split's queries against its gallery, from `features` or computed with `model`."""
    if features is None:
        if model is None:
            raise ValueError("either a model or cached features are needed")
        features = compute_features(model, split, batch_size, progress, cache_reference_features, num_workers,
                                    query_model, gallery_precision)
    else:
        features.check_matches(split)
    device = model.device if model is not None else "cpu"
    return score_in_chunks(features.queries, features.gallery_targets, device=device)
