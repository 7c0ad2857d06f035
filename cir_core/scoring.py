"""SPRC's image score: the best of an image's Q target vectors against the composed query.

One implementation for training, evaluation and the gallery index, so that the index
ranks exactly as the model scores. Kept free of transformers so the index loads light.
"""
from __future__ import annotations

import numpy as np
import torch


def max_over_queries(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, D) x (N, Q, D) -> (B, N): max over each target's Q vectors of the dot product."""
    return torch.einsum("bd,nqd->bnq", queries, targets.to(queries.dtype)).amax(dim=-1)


def max_over_queries_numpy(targets: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(N, Q, D) fp32 or fp16 x (B, D) fp32 -> (B, N) fp32, through `max_over_queries`.

    Torch converts fp16 with SIMD and runs the product in its own thread pool, several times
    faster here than numpy's conversion and BLAS.
    """
    with torch.inference_mode():
        return max_over_queries(torch.from_numpy(queries), torch.from_numpy(targets).float()).numpy()
