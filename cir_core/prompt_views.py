"""What the prompt view compares a sentence prompt with: vocabularies and a caption bank.

A prompt is a set of vectors, not text; the view shows the nearest word pieces of the
model's vocabulary (all of it, or only the benchmark's words) and the nearest texts of a
caption bank (the gallery's descriptions where it has them, else the benchmark's relative
captions, which are other queries' edits, not descriptions: `caption_bank_kind` says which,
and a query's own caption is left out of its nearest texts). Each is built once, on first use or in a background thread started after the
app's first answer, and the bank is cached on disk (`cir_core.caption_bank`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import torch
from PIL import Image

from cir_core.caption_bank import CaptionBank, bank_budget
from cir_core.data.spec import GALLERY_DESCRIPTIONS, BenchmarkSource
from cir_core.explain import Explanation, RelevanceMap, Vocabulary, attention_maps
from cir_core.index import GalleryIndex
from cir_core.model import SPRCModel

logger = logging.getLogger(__name__)

CAPTIONS_SHOWN = 5  # nearest texts listed per vector


class PromptViews:
    """The vocabularies and caption bank of one model and gallery; safe to use from several threads."""

    def __init__(self, model: SPRCModel, index: GalleryIndex, source: BenchmarkSource | None,
                 cache_dir: Path | None):
        self.model, self.index, self.source, self.cache_dir = model, index, source, cache_dir
        self._lock = threading.Lock()
        self._vocabulary: Vocabulary | None = None
        self._auxiliary_tokens = None
        self._dataset_vocabulary: Vocabulary | None = None
        self._auxiliary_dataset_tokens = None  # P' among the benchmark's words: fixed weights, decoded once
        self._bank: CaptionBank | None = None
        self._bank_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def caption_texts(self) -> tuple[list[str], list[str | None]]:
        """The texts of the caption bank: the benchmark's (`BenchmarkSource.caption_texts`), else the
        gallery's own captions; ([], []) when there are none."""
        if self.source is not None:
            return self.source.caption_texts()
        described = [(caption, image_id) for caption, image_id in zip(self.index.captions, self.index.ids) if caption]
        return [caption for caption, _ in described], [image_id for _, image_id in described]

    @property
    def caption_bank_kind(self) -> str:
        """What the bank's texts are; a gallery without a benchmark has only its images' captions."""
        return self.source.caption_bank_kind if self.source is not None else GALLERY_DESCRIPTIONS

    def caption_bank(self) -> CaptionBank | None:
        """The caption bank of this model and gallery: loaded from the cache, else encoded once (and
        cached); None when there are no texts. A cached bank that is damaged or of another model is
        logged in one line, deleted and encoded again."""
        with self._bank_lock:  # held while building: a second caller waits instead of encoding again
            if self._bank is None:
                texts, image_ids = self.caption_texts()
                if not texts:
                    return None
                listed = json.dumps([texts, image_ids]).encode()
                key = hashlib.sha256(listed).hexdigest()[:16]
                path = (self.cache_dir / "caption-banks" / f"{self.model.config.name}-{key}.bank"
                        if self.cache_dir is not None else None)
                budget = bank_budget(len(texts), self.model.config.embed_dim, len(listed))
                bank = CaptionBank.cached(path, self.model, key, budget) if path is not None else None
                if bank is None:
                    logger.info("encoding a caption bank of %d texts (once)", len(texts))
                    bank = CaptionBank.build(self.model, texts, image_ids, key=key, progress=False)
                    if path is not None:
                        try:
                            bank.save(path)
                        except OSError as error:
                            logger.warning("could not cache the caption bank in %s: %s", path.parent, error)
                self._bank = bank
            return self._bank

    def prepare(self) -> threading.Thread:
        """Load or encode the caption bank and the benchmark's vocabulary in a background thread
        (once; later calls return that thread)."""
        with self._lock:
            if self._thread is None:
                def work():
                    try:
                        self.caption_bank()
                        self.benchmark_vocabulary()
                    except Exception:  # never take the server down; explanations say the captions are missing
                        logger.exception("building the caption bank failed")

                self._thread = threading.Thread(target=work, name="caption-bank", daemon=True)
                self._thread.start()
            return self._thread

    def benchmark_vocabulary(self) -> Vocabulary | None:
        """The model's tokens that occur in the benchmark's captions (None without a source)."""
        if self.source is None:
            return None
        with self._lock:
            if self._dataset_vocabulary is None:
                texts = [t.caption for t in self.source.split.triplets] + self.source.caption_texts()[0]
                words = {token for text in texts for token in self.model.tokenizer.tokenize(text)}
                self._dataset_vocabulary = Vocabulary(self.model, restrict_to=words)
                self._auxiliary_dataset_tokens = self._dataset_vocabulary.nearest(self.model.prompt_tokens[0])
            return self._dataset_vocabulary

    def vocabulary_and_auxiliary(self):
        """The whole vocabulary, and the auxiliary prompt P' decoded against it (computed once)."""
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary = Vocabulary(self.model)
                self._auxiliary_tokens = self._vocabulary.nearest(self.model.prompt_tokens[0])
            return self._vocabulary, self._auxiliary_tokens

    def explain(self, prompt: torch.Tensor, attentions, reference: Image.Image, query: torch.Tensor,
                relevance: RelevanceMap | None, relevance_id: str | None, caption: str = "") -> Explanation:
        """The explanation of one query: its prompt (Q, H) decoded against the vocabularies and the
        caption bank (without the query's own `caption`, which a bank of a split's relative captions
        holds and would otherwise come first), the attention maps, and the relevance map of its first result."""
        vocabulary, auxiliary_tokens = self.vocabulary_and_auxiliary()
        explanation = Explanation(prompt_tokens=vocabulary.nearest(prompt), auxiliary_tokens=auxiliary_tokens,
                                  attention=attention_maps(attentions), reference=reference,
                                  relevance=relevance, relevance_id=relevance_id,
                                  captions_kind=self.caption_bank_kind)
        thread = self.prepare()  # the bank and the benchmark's vocabulary, first used here
        if self._dataset_vocabulary is not None:
            explanation.prompt_dataset_tokens = self._dataset_vocabulary.nearest(prompt)
            explanation.auxiliary_dataset_tokens = self._auxiliary_dataset_tokens
        if thread.is_alive():
            explanation.captions_note = "the caption bank is being encoded (once); search again in a moment"
        elif self._bank is None:
            explanation.captions_note = "this gallery has no captions to compare with"
        else:
            with torch.inference_mode():
                prompt_vector = self.model.prompt_vectors(prompt.unsqueeze(0).to(self.model.query_tokens.dtype))
            own = caption.strip()

            def nearest(vector: torch.Tensor) -> list:
                matches = self._bank.nearest(vector.float().cpu(), k=CAPTIONS_SHOWN + 1)[0]
                return [match for match in matches if match.text.strip() != own][:CAPTIONS_SHOWN]

            explanation.query_captions = nearest(query[None])
            explanation.prompt_captions = nearest(prompt_vector)
        return explanation
