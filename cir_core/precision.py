"""Reduced-precision encoding on a CPU: for queries (latency) and for galleries (throughput).

A query runs the Q-Former twice over a handful of tokens, so on a CPU its time goes to
reading the weights, not to arithmetic: halving (bf16) or quartering (int8) the bytes of
every linear layer's weights speeds it up nearly in proportion. A gallery is encoded in
batches, where int8 matrix products are faster than bf16 ones. Either way only one side
is approximated and rankings can differ from full precision only where scores nearly tie
(`cir eval shapes --query-precision/--gallery-precision` measures how much).

- "fp32": the model itself.
- "bf16": queries use a bf16 copy; galleries are encoded under bf16 autocast (fast on
  CPUs with bf16 units).
- "int8": a copy whose linear layers hold int8 weights and quantize their inputs on the
  fly (torch's dynamic quantization, x86 kernels); layer norms, embeddings and the
  patch convolution stay fp32.
- "auto" for galleries: bf16 where the device computes it natively (a CPU with bf16
  units, a GPU that supports it), else fp32.
- "auto" for queries: int8 on a CPU for a model with a large vision encoder (ViT-g: an
  uploaded reference costs seconds in fp32, see docs/performance.md), else the model
  itself (fp32 on a CPU; on a GPU the model is already fp16, `cir_core.device`).

Training's "auto" (`train_autocast_dtype`) decides as galleries' "auto" does: on a CPU
without bf16 units, bf16 autocast is emulated and slower than fp32 (a shapes-mini training
step took 12-14 s against 3.1 s in fp32 on such a CPU).
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch

from cir_core.model import SPRCModel

QUERY_PRECISIONS = ("auto", "fp32", "bf16", "int8")
GALLERY_PRECISIONS = ("auto", "fp32", "bf16", "int8")
TRAIN_PRECISIONS = ("auto", "bf16", "fp32")
# Query "auto" turns int8 on for vision encoders at least this large: ViT-g (1.0 B) is, the
# shapes presets' encoders (under 10 M parameters, whose fp32 queries take tens of ms) are not.
LARGE_VISION_ENCODER = 100_000_000


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes in bf16 natively (a CPU with AVX512-BF16 or AMX units, a bf16-capable GPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)()
                   for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def _check(precision: str, allowed: tuple[str, ...], side: str) -> str:
    if precision not in allowed:
        raise ValueError(f"{side} precision must be one of {', '.join(allowed)}, got {precision!r}")
    return precision


def check_query_precision(precision: str) -> str:
    return _check(precision, QUERY_PRECISIONS, "query")


def check_gallery_precision(precision: str) -> str:
    return _check(precision, GALLERY_PRECISIONS, "gallery")


def has_large_vision_encoder(model: SPRCModel) -> bool:
    """Whether the vision encoder is ViT-g-sized (LARGE_VISION_ENCODER parameters or more)."""
    return sum(p.numel() for p in model.vision_model.parameters()) >= LARGE_VISION_ENCODER


def resolve_query_precision(model: SPRCModel, precision: str) -> str:
    """The concrete query precision ("fp32", "bf16" or "int8") that `precision` means for `model`."""
    check_query_precision(precision)
    if precision != "auto":
        return precision
    return "int8" if has_large_vision_encoder(model) and model.device.type == "cpu" else "fp32"


def query_model(model: SPRCModel, precision: str) -> SPRCModel:
    """`model` itself for fp32, else an eval-mode copy in `precision` (the original is untouched)."""
    precision = resolve_query_precision(model, precision)
    if precision == "fp32":
        return model
    if precision == "bf16":
        # Each floating-point tensor is copied straight into bf16: a full fp32 copy first
        # would need the model's memory twice over at once (4.7 GB more for ViT-g).
        halved = {id(tensor): _bf16(tensor) for tensor in [*model.parameters(), *model.buffers()]
                  if tensor.is_floating_point()}
        return copy.deepcopy(model, halved).eval()
    return int8_copy(model)


def _bf16(tensor: torch.Tensor) -> torch.Tensor:
    converted = tensor.detach().to(torch.bfloat16, copy=True)
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(converted, requires_grad=tensor.requires_grad)
    return converted


def resolve_gallery_precision(model: SPRCModel, precision: str) -> str:
    """The concrete precision ("fp32", "bf16" or "int8") that `precision` means for `model`."""
    check_gallery_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if has_native_bf16(model.device) else "fp32"


def resolve_train_precision(precision: str, device: torch.device | str) -> str:
    """The autocast training runs under: "bf16" or "fp32" ("auto": bf16 where `device` computes it natively)."""
    _check(precision, TRAIN_PRECISIONS, "training")
    if precision != "auto":
        return precision
    return "bf16" if has_native_bf16(device) else "fp32"


@contextlib.contextmanager
def gallery_encoder(model: SPRCModel, precision: str):
    """Yields the model that encodes gallery images in `precision` ("auto" included), set up for it.

    Measured with shapes-mini on this project's CPU (`python benchmarks/bench_model.py`):
    bf16 autocast encodes about twice as many images per second as fp32, and int8 1.1-1.2
    times as many as bf16; target vectors stay within 2e-3 (bf16) and 2e-2 (int8) of fp32.
    """
    precision = resolve_gallery_precision(model, precision)
    if precision == "int8":
        yield int8_copy(model)
    elif precision == "bf16":
        with torch.autocast(model.device.type, dtype=torch.bfloat16):
            yield model
    else:
        yield model


def int8_copy(model: SPRCModel, layers=None) -> SPRCModel:
    """An eval-mode copy whose linear layers hold int8 weights (torch's dynamic quantization),
    with one scale per output row, unless `layers` (quantize_dynamic's qconfig spec) says otherwise.

    The copy reads the original's fp32 layer norms, embeddings and other non-linear weights
    (shared, not duplicated), so it costs only its int8 weights in memory."""
    if model.device.type != "cpu":  # torch's dynamically quantized layers run on the CPU only
        raise ValueError(f"int8 encoding is a CPU speed-up; the model is on {model.device}")
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as error:  # pragma: no cover - depends on the installed torch
        raise ValueError(f"int8 encoding needs torch's dynamic quantization ({error})") from None
    # The copy shares the original's fp32 tensors instead of duplicating them: quantization
    # replaces every linear layer anyway, and the layer norms and embeddings are only read.
    # A full copy first would need twice the model's memory at once (9.4 GB for ViT-g).
    shared = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]
              if tensor.dtype == torch.float32}
    fp32 = copy.deepcopy(model, shared).float().eval()
    with warnings.catch_warnings():
        # torch marks its eager quantization API as deprecated in favour of torchao; it is
        # present and supported in the torch this project pins.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # One scale per output row keeps int8 rankings nearer fp32's than one per matrix
        # (docs/performance.md gives the measured figures).
        layers = {torch.nn.Linear: per_channel_dynamic_qconfig} if layers is None else layers
        return quantize_dynamic(fp32, layers, dtype=torch.qint8, inplace=True)
