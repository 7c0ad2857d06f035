"""Attention of the model's transformers blocks: fused where it is faster, eager where maps are read.

transformers looks a block's attention function up by name (`config._attn_implementation`).
The names registered here choose per call, from the call's own arguments and tensors, so
that requests with and without explanations share one model at the same time without
switching it:

- a call that asks for attention maps (`output_attentions=True`: the prompt view's maps,
  result relevance) runs transformers' eager attention, which returns them;
- a call with gradients (training) runs the attention the config names
  (`SPRCConfig.attn_implementation`, "eager" as LAVIS trains);
- any other call (queries and gallery encoding without explanations) runs torch's fused
  `scaled_dot_product_attention`, except where eager was measured faster
  (`fused_is_faster`; `python benchmarks/bench_attention.py`, docs/performance.md).

Masks are eager's additive float masks (0 or the dtype's minimum), which both paths take;
a mask without padding is dropped (None) so that SDPA can use its mask-free kernels,
except while a CUDA graph is being captured, where checking the mask's contents would
wait for the GPU.
"""
from __future__ import annotations

import contextlib
import functools
import threading

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.blip_2.modeling_blip_2 import eager_attention_forward

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # what a config may name for its grad-enabled (training) calls
_forced = threading.local()  # .eager: this thread's calls run eager whatever they ask (see eager_attention)


@contextlib.contextmanager
def eager_attention():
    """Within the block, this thread's calls run eager attention: the reference that the fused
    path's rankings are checked against (`benchmarks/bench_real_size.py`)."""
    previous = getattr(_forced, "eager", False)
    _forced.eager = True
    try:
        yield
    finally:
        _forced.eager = previous


def fused_is_faster(query: torch.Tensor) -> bool:
    """Whether SDPA is the attention for a call without gradients on `query` (B, heads, L, head width).

    Measured per precision on the project's CPU (`benchmarks/bench_attention.py`, figures in
    docs/performance.md): in fp32 and in int8 copies (whose attention computes in fp32) SDPA is
    as fast or faster (an int8 ViT-g upload 1.05-1.33x); in bf16 it is slower for gallery
    batches (0.93x), so bf16 keeps eager. On CUDA SDPA's fused kernels replace eager's chain of
    kernels (`bench_attention.py --device cuda` measures it)."""
    return not (query.device.type == "cpu" and query.dtype == torch.bfloat16)


def _attention(trained: str, module, query, key, value, attention_mask, **kwargs):
    if kwargs.get("output_attentions") or getattr(_forced, "eager", False):
        eager = True  # only eager attention returns the maps
    elif torch.is_grad_enabled():
        eager = trained == "eager"
    else:
        eager = not fused_is_faster(query)
    forward = eager_attention_forward if eager else sdpa_attention_forward
    return forward(module, query, key, value, attention_mask, **kwargs)


def _additive_mask(*args, allow_is_bidirectional_skip: bool = False, **kwargs):
    skip = allow_is_bidirectional_skip and not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
    return eager_mask(*args, allow_is_bidirectional_skip=skip, **kwargs)


def registered_name(trained: str) -> str:
    """The transformers attention name of a model whose grad-enabled calls use `trained` ("eager" or "sdpa")."""
    if trained not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, got {trained!r}")
    return f"sprc_{trained}_training"


for _trained in ATTENTION_IMPLEMENTATIONS:
    AttentionInterface.register(registered_name(_trained), functools.partial(_attention, _trained))
    AttentionMaskInterface.register(registered_name(_trained), _additive_mask)
