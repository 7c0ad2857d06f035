"""Reduced-precision copies of a model for encoding queries faster on a CPU.

A query runs the Q-Former twice over a handful of tokens, so on a CPU its time goes to
reading the weights, not to arithmetic: halving (bf16) or quartering (int8) the bytes
of every linear layer's weights speeds it up nearly in proportion. Gallery vectors stay
in full precision; only the query side is approximated, so rankings can differ from
full precision where scores nearly tie (`cir eval shapes --query-precision` measures
how much).

- "fp32": the model itself.
- "bf16": a bf16 copy (fast on CPUs with bf16 units).
- "int8": a copy whose linear layers hold int8 weights and quantize their inputs on the
  fly (torch's dynamic quantization, x86 kernels); layer norms, embeddings and the
  patch convolution stay fp32.
"""
from __future__ import annotations

import copy
import warnings

import torch

from cir_core.model import SPRCModel

QUERY_PRECISIONS = ("fp32", "bf16", "int8")


def check_query_precision(precision: str) -> str:
    if precision not in QUERY_PRECISIONS:
        raise ValueError(f"query precision must be one of {', '.join(QUERY_PRECISIONS)}, got {precision!r}")
    return precision


def query_model(model: SPRCModel, precision: str) -> SPRCModel:
    """`model` itself for fp32, else an eval-mode copy in `precision` (the original is untouched)."""
    check_query_precision(precision)
    if precision == "fp32":
        return model
    if precision == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    if model.device.type != "cpu":  # torch's dynamically quantized layers run on the CPU only
        raise ValueError(f"int8 query encoding is a CPU speed-up; the model is on {model.device}")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:  # pragma: no cover - depends on the installed torch
        raise ValueError(f"int8 query encoding needs torch's dynamic quantization ({error})") from None
    fp32 = copy.deepcopy(model).float().eval()
    with warnings.catch_warnings():
        # torch marks its eager quantization API as deprecated in favour of torchao; it is
        # present and supported in the torch this project pins.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        return quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)
