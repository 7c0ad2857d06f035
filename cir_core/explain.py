"""Explanations of one SPRC query: what the sentence prompt says, where it looks, why a result scores.

Three views, all computed from the model's own tensors:

1. Nearest vocabulary tokens: each of the Q prompt vectors (Q, H) lives in the Q-Former's
   input space, so its cosine similarity to the word-embedding table (V, H) reads it as
   words. Special and unused WordPiece entries are skipped (they are never caption words).
2. Cross-attention maps: in the prompt pass the Q query positions cross-attend to the
   reference's vision tokens (class token + patches); averaged over heads and layers,
   the patch part reshaped to the patch grid shows where each prompt token looks.
3. Result relevance: gradient-weighted attention (Grad-CAM as used for BLIP/ALBEF) of the
   target pass over a result image: d score / d attention * attention, positive part,
   averaged over heads, summed over the query tokens, averaged over cross-attention layers.

Shapes: Q prompt tokens, H Q-Former width, V vocabulary, T = 1 + g*g vision tokens, g the
patch grid side, D projection width. Maps are numpy arrays scaled to [0, 1].

Each explanation carries the images as the model saw them (`ImageTransform.resize_and_crop`),
so that a view can draw the maps on exactly those pixels (`demo.render`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cir_core.model import SPRCModel
from cir_core.word_filter import is_blocked

_UNUSED_TOKEN = re.compile(r"^\[unused\d+\]$")


@dataclass
class TokenMatch:
    """One vocabulary entry near a prompt vector."""

    token: str  # WordPiece entry ("##" marks a word continuation)
    similarity: float  # cosine similarity between the prompt vector and the token's embedding


@dataclass
class AttentionMaps:
    """Where the prompt tokens look on the reference image."""

    per_token: np.ndarray  # (Q, g, g) each token's patch attention, mean over heads and layers, scaled to [0, 1]
    average: np.ndarray  # (g, g) mean over tokens of the unscaled maps, scaled to [0, 1]
    patch_share: np.ndarray  # (Q,) attention mass on the patches; the rest went to the class token


@dataclass
class RelevanceMap:
    """Which patches of a result image raise its score."""

    grid: np.ndarray  # (g, g) positive gradient-weighted attention, scaled to [0, 1] (all zero if none)
    score: float  # the score being explained: max over the result's Q vectors of the dot product
    view: Image.Image | None = None  # the result image as the model saw it (resized, padded, cropped), RGB


@dataclass
class Explanation:
    """Everything the app shows about one query beside its ranking."""

    prompt_tokens: list[list[TokenMatch]]  # per sentence-prompt vector (Q), nearest tokens, best first
    auxiliary_tokens: list[list[TokenMatch]]  # the same for the learned auxiliary prompt P' (Q)
    attention: AttentionMaps  # prompt tokens over the reference patches
    reference: Image.Image  # the reference as the model saw it (resized, padded, cropped), RGB: the maps' pixels
    relevance: RelevanceMap | None = None  # on `relevance_id`, when a result was explained
    relevance_id: str | None = None  # gallery id of the explained result
    query_captions: list | None = None  # caption_bank.CaptionMatch: captions nearest the composed query, best first
    prompt_captions: list | None = None  # the same for the sentence prompt alone
    captions_note: str = ""  # why there are no nearest captions, when there are none
    captions_kind: str = ""  # what the bank's texts are (spec.GALLERY_DESCRIPTIONS or spec.OTHER_EDIT_CAPTIONS)
    prompt_dataset_tokens: list[list[TokenMatch]] | None = None  # nearest tokens among the benchmark's own words
    auxiliary_dataset_tokens: list[list[TokenMatch]] | None = None  # P' decoded the same way

    def to_json(self) -> dict:
        """The explanation as numbers, for an API: the caption-bank texts nearest the composed query
        and the prompt alone; per prompt vector its nearest tokens (the whole vocabulary, and the
        benchmark's words when the explanation has them, else None); the prompt tokens' attention
        over the reference's g x g patch grid; and the relevance grid of each explained result
        (the first, `relevance_id`). Grids are nested lists in [0, 1]; the pictures are left out."""
        relevance = [] if self.relevance is None else [
            {"id": self.relevance_id, "score": _rounded(self.relevance.score), "grid": _grid(self.relevance.grid)}]
        return {
            "captions": {"kind": self.captions_kind, "note": self.captions_note,
                         "composed_query": _captions(self.query_captions),
                         "prompt_alone": _captions(self.prompt_captions)},
            "tokens": {"prompt": _tokens(self.prompt_tokens), "auxiliary": _tokens(self.auxiliary_tokens),
                       "prompt_benchmark_words": _tokens(self.prompt_dataset_tokens),
                       "auxiliary_benchmark_words": _tokens(self.auxiliary_dataset_tokens)},
            "attention": {"average": _grid(self.attention.average),
                          "per_token": [_grid(grid) for grid in self.attention.per_token],
                          "patch_share": [_rounded(share) for share in self.attention.patch_share]},
            "relevance": relevance,
        }


def _rounded(value) -> float:
    return round(float(value), 4)


def _grid(grid: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(grid, dtype=np.float64), 4).tolist()


def _tokens(positions: list[list[TokenMatch]] | None) -> list[list[dict]] | None:
    if positions is None:
        return None
    return [[{"token": match.token, "similarity": _rounded(match.similarity)} for match in matches]
            for matches in positions]


def _captions(matches: list | None) -> list[dict] | None:
    if matches is None:
        return None
    return [{"text": match.text, "image_id": match.image_id, "similarity": _rounded(match.similarity)}
            for match in matches]


class Vocabulary:
    """The word-embedding table, unit-normalised once, minus special, unused and blocked entries
    (cir_core.word_filter: no mode of the prompt view can show an offensive word)."""

    def __init__(self, model: SPRCModel, restrict_to: set[str] | None = None):
        """`restrict_to`: keep only these token strings (e.g. the word pieces of a benchmark's captions)."""
        tokenizer = model.tokenizer
        special = set(tokenizer.all_special_tokens)
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        keep = [i for i, token in enumerate(tokens) if token not in special and not _UNUSED_TOKEN.match(token)
                and (restrict_to is None or token in restrict_to) and not is_blocked(token)]
        if not keep:
            raise ValueError("the vocabulary is empty: no token of the model is among the words given")
        with torch.no_grad():
            table = model.embeddings.word_embeddings.weight.detach().float().cpu()  # (V, H)
            self.unit_embeddings = F.normalize(table[keep], dim=-1)  # (V', H)
        self.tokens = [tokens[i] for i in keep]  # V' token strings, aligned with unit_embeddings rows

    def nearest(self, vectors: torch.Tensor, top: int = 3) -> list[list[TokenMatch]]:
        """(Q, H) vectors -> for each, the `top` most cosine-similar tokens, best first."""
        if vectors.dim() != 2 or vectors.shape[1] != self.unit_embeddings.shape[1]:
            raise ValueError(f"expected (Q, {self.unit_embeddings.shape[1]}) vectors, got {tuple(vectors.shape)}")
        with torch.no_grad():
            similarity = F.normalize(vectors.detach().float().cpu(), dim=-1) @ self.unit_embeddings.T  # (Q, V')
            values, indices = similarity.topk(min(top, similarity.shape[1]), dim=1)
        return [[TokenMatch(self.tokens[j], float(v)) for v, j in zip(row_values.tolist(), row_indices.tolist())]
                for row_values, row_indices in zip(values, indices)]


def grid_side(num_tokens: int) -> int:
    """Patch-grid side g from T = 1 + g*g vision tokens."""
    side = math.isqrt(num_tokens - 1)
    if side * side != num_tokens - 1:
        raise ValueError(f"{num_tokens} vision tokens are not a class token plus a square patch grid")
    return side


def _scale_unit(array: np.ndarray) -> np.ndarray:
    """Divide by the maximum so the map spans [0, 1]; an all-zero map stays zero."""
    peak = float(array.max()) if array.size else 0.0
    return (array / peak if peak > 0 else np.zeros_like(array)).astype(np.float32)


def patch_attention(cross_attentions: tuple[torch.Tensor, ...], batch_index: int = 0) -> torch.Tensor:
    """Per-layer (B, heads, Q, T) cross-attentions -> (Q, T), mean over layers and heads (rows sum to 1)."""
    if not cross_attentions:
        raise ValueError("no cross-attentions given (encode with output_attentions=True)")
    # (layers, heads, Q, T)
    stacked = torch.stack([layer[batch_index].detach().float().cpu() for layer in cross_attentions])
    return stacked.mean(dim=(0, 1))


def attention_maps(cross_attentions: tuple[torch.Tensor, ...], batch_index: int = 0) -> AttentionMaps:
    """Cross-attention of the prompt pass -> per-token and average maps over the reference's patch grid."""
    attention = patch_attention(cross_attentions, batch_index)  # (Q, T)
    side = grid_side(attention.shape[1])
    patches = attention[:, 1:].numpy()  # class token dropped: (Q, g*g)
    per_token = np.stack([_scale_unit(row) for row in patches]).reshape(-1, side, side)
    average = _scale_unit(patches.mean(axis=0)).reshape(side, side)
    return AttentionMaps(per_token=per_token, average=average, patch_share=patches.sum(axis=1).astype(np.float32))


def result_relevance(model: SPRCModel, query: torch.Tensor, target_features: torch.Tensor) -> RelevanceMap:
    """Grad-CAM-style relevance of a result's patches for score(query, result).

    `query` is the (D,) composed query; `target_features` the result's (T, W) vision
    features. Gradients are taken with torch.autograd.grad, so no parameter's .grad is
    touched and concurrent calls do not interfere.
    """
    with torch.inference_mode(False), torch.enable_grad():
        # clone(): cached features may be inference tensors, which autograd refuses to record.
        features = target_features.detach().clone().to(model.device, dtype=model.query_tokens.dtype)
        features = features.unsqueeze(0).requires_grad_(True)  # (1, T, W)
        # The target pass of SPRCModel.target_vectors, asking for its attentions: transformers
        # records them per call (context-local), whereas hooks on the shared model would also
        # catch concurrent requests. A test checks the score against model.score.
        queries = model.query_tokens.expand(1, -1, -1)
        with model.autocast():
            output = model.qformer(query_embeds=queries, query_length=model.num_query_tokens,
                                   encoder_hidden_states=features, output_attentions=True)
            attentions = tuple(output.cross_attentions or ())
            if not attentions:
                raise ValueError("the model returned no cross-attentions")
            targets = F.normalize(model.vision_projection(output.last_hidden_state), dim=-1)  # (1, Q, D)
        score = model.score(query.detach().clone().to(targets.device, targets.dtype).view(1, -1), targets)[0, 0]
        gradients = torch.autograd.grad(score, attentions)
    cams = [(grad[0] * attn[0].detach()).clamp(min=0).mean(dim=0).sum(dim=0)  # (T,): heads averaged, queries summed
            for grad, attn in zip(gradients, attentions)]
    relevance = torch.stack(cams).mean(dim=0).float().cpu().numpy()
    side = grid_side(relevance.shape[0])
    return RelevanceMap(grid=_scale_unit(relevance[1:]).reshape(side, side), score=float(score.detach()))
