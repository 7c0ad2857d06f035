"""Batch-1 queries replayed as CUDA graphs.

A query without explanations is three passes of small kernels: the vision encoder (for an
uploaded reference), the prompt pass and the compose pass. At batch 1 on a GPU their time
goes to launching some hundreds of kernels one by one rather than to computing
(docs/performance.md), so each pass is recorded once as a CUDA graph and replayed per
query, all its kernels at once. A graph replays fixed shapes: the reference always has one;
captions are padded to the next of a few lengths (`caption_buckets`), the padding masked
out, so that a handful of graphs serve every caption and give the scores its unpadded form
gets (up to float rounding).

`graphed_queries` records them when an engine starts, so that the first visitor does not
wait for it. How a pass is recorded is the recorder's business (`CudaGraphRecorder`); the
tests give `QueryGraphs` one that reruns each pass on the recorded buffers instead, which
exercises the buffers, buckets and locking on a CPU.
"""
from __future__ import annotations

import logging
import threading
import time

import torch
import torch.nn.functional as F

from cir_core.config import PROMPT_MODES
from cir_core.text import TextBatch

logger = logging.getLogger(__name__)

FIRST_BUCKET = 8  # caption tokens of the shortest bucket; each next one doubles, up to the longest caption
WARMUP_RUNS = 2  # runs before a recording, so that lazily made kernels and workspaces exist before it


def caption_buckets(max_tokens: int) -> tuple[int, ...]:
    """The lengths captions are padded to: 8, 16, 32, ... below `max_tokens`, then `max_tokens`."""
    lengths, length = [], FIRST_BUCKET
    while length < max_tokens:
        lengths.append(length)
        length *= 2
    return (*lengths, max_tokens)


def bucket_for(length: int, buckets: tuple[int, ...]) -> int | None:
    """The shortest bucket that holds `length` tokens (None: longer than every bucket)."""
    return next((bucket for bucket in buckets if length <= bucket), None)


def pad_text(text: TextBatch, length: int, pad_id: int) -> TextBatch:
    """`text` with masked pad tokens appended up to `length` positions."""
    extra = length - text.input_ids.shape[1]
    if extra < 0:
        raise ValueError(f"{text.input_ids.shape[1]} caption tokens do not fit in {length} positions")
    return TextBatch(F.pad(text.input_ids, (0, extra), value=pad_id), F.pad(text.attention_mask, (0, extra), value=0))


class CudaGraphRecorder:
    """Records passes as CUDA graphs on `device`, all drawing on one memory pool."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def record(self, function, inputs: tuple[torch.Tensor, ...]):
        """(replay, output): `replay()` reruns `function`'s kernels on `inputs`, writing into `output`."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                function(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = function(*inputs)
        return graph.replay, output


class _ReplayedPass:
    """One recorded pass: its input buffers, its output buffer and how to replay it."""

    def __init__(self, function, examples: tuple[torch.Tensor, ...], recorder):
        self.inputs = tuple(example.clone() for example in examples)
        self.replay, self.output = recorder.record(function, self.inputs)

    def __call__(self, *values: torch.Tensor) -> torch.Tensor:
        """Copy `values` into the input buffers, replay, and return a copy of the output (the next replay
        overwrites the buffer)."""
        for buffer, value in zip(self.inputs, values):
            buffer.copy_(value)
        self.replay()
        return self.output.clone()


class QueryGraphs:
    """The batch-1 query passes of a model of a prompt mode (`config.PROMPT_MODES`), recorded at
    construction and replayed per query; stands in for the model in a query (`vision_features`,
    `query_prompt`, `compose`, `query_tokens`).

    Batches and calls asking for attention maps go to the model itself. One lock serialises the
    replays, which share their buffers.
    """

    def __init__(self, model, recorder):
        started = time.perf_counter()
        self.model = model
        self.buckets = caption_buckets(model.config.preprocess.max_caption_tokens)
        self._lock = threading.Lock()
        self._prompt: dict[int, _ReplayedPass] = {}
        self._compose: dict[int, _ReplayedPass] = {}
        vision, device = model.config.vision, model.device
        with torch.inference_mode():
            size = model.config.preprocess.image_size
            pixels = torch.zeros(1, 3, size, size, device=device,
                                 dtype=model.vision_model.embeddings.patch_embedding.weight.dtype)
            self._vision = _ReplayedPass(model.vision_features, (pixels,), recorder)
            tokens = (vision.image_size // vision.patch_size) ** 2 + 1
            features = torch.zeros(1, tokens, vision.hidden_size, device=device, dtype=model.query_tokens.dtype)
            for length in self.buckets:
                ids = torch.full((1, length), model.tokenizer.pad_token_id, dtype=torch.long, device=device)
                mask = torch.zeros_like(ids)
                mask[:, 0] = 1  # padded as a real caption in its bucket, so that the masked kernels are recorded
                prompt = _ReplayedPass(lambda f, i, m: model.query_prompt(f, TextBatch(i, m)),
                                       (features, ids, mask), recorder)
                self._prompt[length] = prompt
                self._compose[length] = _ReplayedPass(lambda p, i, m: model.compose(p, TextBatch(i, m)),
                                                      (prompt.output, ids, mask), recorder)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        self.recording_s = time.perf_counter() - started  # what recording added to the start

    @property
    def query_tokens(self) -> torch.Tensor:
        return self.model.query_tokens

    @property
    def count(self) -> int:
        """Recorded passes: one for the vision encoder, two per caption bucket."""
        return 1 + len(self._prompt) + len(self._compose)

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, T, W), as `SPRCModel.vision_features`."""
        if pixels.shape[0] != 1:
            return self.model.vision_features(pixels)
        with self._lock, torch.inference_mode():
            return self._vision(pixels)

    def query_prompt(self, features: torch.Tensor, text: TextBatch, output_attentions: bool = False):
        """(B, T, W) features and B captions -> P (B, Q, H) [, cross-attentions], as `SPRCModel.query_prompt`."""
        bucket = self._bucket(features, text)
        if output_attentions or bucket is None:
            return self.model.query_prompt(features, text, output_attentions)
        text = pad_text(text, bucket, self.model.tokenizer.pad_token_id)
        with self._lock, torch.inference_mode():
            return self._prompt[bucket](features, text.input_ids, text.attention_mask)

    def compose(self, prompt: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """P (B, Q, H) and B captions -> composed queries (B, D), as `SPRCModel.compose`."""
        bucket = self._bucket(prompt, text)
        if bucket is None:
            return self.model.compose(prompt, text)
        text = pad_text(text, bucket, self.model.tokenizer.pad_token_id)
        with self._lock, torch.inference_mode():
            return self._compose[bucket](prompt, text.input_ids, text.attention_mask)

    def _bucket(self, batch: torch.Tensor, text: TextBatch) -> int | None:
        """The recorded bucket for one caption (None: a batch)."""
        return bucket_for(text.input_ids.shape[1], self.buckets) if batch.shape[0] == 1 else None


def records_graphs(model) -> bool:
    """Whether queries of `model` are worth recording: on CUDA, where batch-1 passes are launch-bound,
    for a prompt mode (the baselines are research comparisons, not served for speed)."""
    return model.device.type == "cuda" and model.config.query_mode in PROMPT_MODES


def graphed_queries(model):
    """`QueryGraphs` of `model` where graphs apply and recording succeeds, else `model` itself (a failed
    recording is logged, and queries run the plain passes)."""
    if not records_graphs(model):
        return model
    try:
        graphs = QueryGraphs(model, CudaGraphRecorder(model.device))
    except RuntimeError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        logger.warning("queries run without CUDA graphs: recording them failed (%s)", first_line)
        return model
    logger.info("recorded %d CUDA graphs for batch-1 queries in %.1f s", graphs.count, graphs.recording_s)
    return graphs
