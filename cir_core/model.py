"""The SPRC model (Bai et al., ICLR 2024) on transformers' native BLIP-2 blocks.

Shapes below: B batch, T vision tokens, W vision width, Q query tokens (= sentence
prompt length), H Q-Former width, L caption tokens, D projection width.

Mechanism (see docs/sprc-reference.md in the shared docs):
1. prompt pass: Q-Former over [query tokens ; caption], query positions cross-attend to
   the reference image; the sentence-level prompt P is the first Q outputs.
2. compose pass: Q-Former over [P ; caption] with no image; the composed query is the
   output at the caption's [CLS] (index Q), projected and normalised.
3. targets: Q-Former query pass over the target image, Q projected normalised vectors.
4. score = max over the Q target vectors of the dot product.
"""
from __future__ import annotations

import contextlib

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2QFormerConfig, Blip2VisionConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings, Blip2VisionModel

from cir_core.attention import registered_name
from cir_core.config import PROMPT_MODES, SPRCConfig, checked_position_scale
from cir_core.scoring import max_over_queries
from cir_core.text import TextBatch, load_tokenizer, tokenize

DESCRIPTION_TOKENS = 64  # word pieces read of an image description (five shapes objects take about 35)


@dataclass
class QueryEncoding:
    """Output of `SPRCModel.encode_query`."""

    query: torch.Tensor  # (B, D) L2-normalised composed query vectors
    prompt: torch.Tensor | None  # (B, Q, H) sentence-level prompt (None for query modes without one)
    cross_attentions: tuple[torch.Tensor, ...] | None = None  # per cross-attention layer (B, heads, Q, T)


@dataclass
class ImageEncoding:
    """Output of `SPRCModel.encode_images`: what a gallery keeps per image."""

    vision_features: torch.Tensor  # (N, T, W) after ln_vision; reusable as a query reference
    targets: torch.Tensor  # (N, Q, D) L2-normalised target vectors


@dataclass
class SPRCLossOutput:
    """Output of the training forward."""

    loss: torch.Tensor  # () weighted total
    itc: torch.Tensor  # () composed query -> target cross-entropy
    rtc: torch.Tensor  # () auxiliary-prompt query -> target cross-entropy
    align: torch.Tensor  # () MSE(mean P, mean P'.detach())
    logits: torch.Tensor  # (B, B + H) query x (target + negative) similarities divided by temp
    query: torch.Tensor | None = None  # (B, D) composed queries, for auxiliary heads
    targets: torch.Tensor | None = None  # (B + H, Q, D) target (and negative) vectors, for auxiliary heads
    description: torch.Tensor | None = None  # () target image <-> its description contrastive loss, when given


def _prefixed_mask(text_mask: torch.Tensor, count: int, after_cls: bool = False) -> torch.Tensor:
    """(B, L) caption mask -> (B, count + L): `count` always-visible positions (query tokens, a
    prompt or a pseudo-word) joined to the caption, in front of it or right after its [CLS]."""
    ones = text_mask.new_ones(text_mask.shape[0], count)
    if after_cls:
        return torch.cat([text_mask[:, :1], ones, text_mask[:, 1:]], dim=1)
    return torch.cat([ones, text_mask], dim=1)


def _vision_hf_config(config: SPRCConfig) -> Blip2VisionConfig:
    v = config.vision
    return Blip2VisionConfig(
        image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, layer_norm_eps=v.layer_norm_eps,
        qkv_bias=v.qkv_bias, hidden_act=v.hidden_act, attention_dropout=0.0,
        # transformers defaults this to 1e-10 (weights are always loaded); we also train from scratch.
        initializer_range=0.02,
    )


def _qformer_hf_config(config: SPRCConfig) -> Blip2QFormerConfig:
    q = config.qformer
    return Blip2QFormerConfig(
        vocab_size=q.vocab_size, hidden_size=q.hidden_size, num_hidden_layers=q.num_hidden_layers,
        num_attention_heads=q.num_attention_heads, intermediate_size=q.intermediate_size,
        hidden_act=q.hidden_act, hidden_dropout_prob=q.hidden_dropout_prob,
        attention_probs_dropout_prob=q.attention_probs_dropout_prob,
        max_position_embeddings=q.max_position_embeddings, layer_norm_eps=q.layer_norm_eps,
        cross_attention_frequency=q.cross_attention_frequency,
        encoder_hidden_size=config.vision.hidden_size, use_qformer_text_input=True,
    )


def readout_position_table(vision, scale: float = 0.5) -> torch.Tensor:
    """(1, 1 + P, W): zeros for the class token, then per patch sines and cosines of its row
    (first half of the width) and column (second half) at geometric frequencies, times `scale`
    (the tokens they join are layer-normed, so about unit size per channel). The wavelengths
    run from 2*pi to 2*pi*side patches."""
    scale = checked_position_scale(scale)
    side, width = vision.image_size // vision.patch_size, vision.hidden_size
    quarter = width // 4
    steps = torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)
    frequencies = 1.0 / (side ** steps)
    coordinate = torch.arange(side, dtype=torch.float32)
    angles = coordinate[:, None] * frequencies[None]  # (side, quarter)
    waves = torch.cat([angles.sin(), angles.cos()], dim=1)  # (side, 2 * quarter)
    rows = waves[:, None, :].expand(side, side, -1)
    cols = waves[None, :, :].expand(side, side, -1)
    table = torch.zeros(1 + side * side, width)
    table[1:, :4 * quarter] = torch.cat([rows, cols], dim=-1).reshape(side * side, 4 * quarter)
    return (scale * table)[None]


class SPRCModel(nn.Module):
    """SPRC: BLIP-2 vision encoder + Q-Former writing sentence-level prompts.

    Parameter names follow transformers' `Blip2ForImageTextRetrieval` (vision_model,
    query_tokens, embeddings, qformer, vision_projection, text_projection) so hub
    weights load by name; SPRC adds `prompt_tokens` (the auxiliary prompt P') and `temp`.
    """

    # Set by `cir_core.device.place_model` on a GPU, where linear and convolution weights are
    # fp16: the building blocks then run under autocast in this dtype, so that layer norms,
    # softmax and the residual stream stay in fp32 as in the official LAVIS code.
    autocast_dtype: torch.dtype | None = None

    def __init__(self, config: SPRCConfig, tokenizer=None):
        super().__init__()
        config.validate()
        self.config = config
        q = config.qformer
        self.vision_model = Blip2VisionModel(_vision_hf_config(config))
        # LAVIS's ln_vision is a plain LayerNorm (eps 1e-5), unlike the EVA blocks (1e-6).
        self.vision_model.post_layernorm.eps = config.vision.ln_vision_eps
        self.qformer = Blip2QFormerModel(_qformer_hf_config(config))
        self.embeddings = Blip2TextEmbeddings(self.qformer.config)
        self.query_tokens = nn.Parameter(torch.randn(1, q.num_query_tokens, q.hidden_size) * 0.02)
        self.prompt_tokens = nn.Parameter(torch.randn(1, q.num_query_tokens, q.hidden_size) * 0.02)
        self.vision_projection = nn.Linear(q.hidden_size, config.embed_dim)
        self.text_projection = nn.Linear(q.hidden_size, config.embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(config.temp_init)))
        # (1, T, W) or None; starts as a 2D sine-cosine table so positions are told apart from step one.
        self.readout_positions = (nn.Parameter(readout_position_table(
            config.vision, config.vision.readout_position_scale))
                                  if config.vision.readout_positions else None)
        if config.query_mode == "pseudo_word":
            self.pseudo_word_projection = nn.Sequential(
                nn.Linear(q.hidden_size, q.hidden_size), nn.GELU(), nn.Linear(q.hidden_size, q.hidden_size))
        nn.init.normal_(self.embeddings.word_embeddings.weight, std=0.02)
        nn.init.normal_(self.embeddings.position_embeddings.weight, std=0.02)
        self.set_attn_implementation(config.attn_implementation)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(expected_size=q.vocab_size)
        if len(self.tokenizer) != q.vocab_size:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens, config expects {q.vocab_size}")

    # ------------------------------------------------------------------ utilities
    @property
    def num_query_tokens(self) -> int:
        return self.config.qformer.num_query_tokens

    @property
    def device(self) -> torch.device:
        return self.query_tokens.device

    def autocast(self):
        """The autocast context the model computes in (none unless `autocast_dtype` is set)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def set_attn_implementation(self, name: str) -> None:
        """The attention of grad-enabled (training) calls, "eager" or "sdpa"; calls without gradients
        run the faster one for their device and calls asking for maps eager (`cir_core.attention`)."""
        self.vision_model.set_attn_implementation(registered_name(name))
        self.qformer.set_attn_implementation(registered_name(name))

    def tokenize(self, captions: list[str] | str) -> TextBatch:
        p = self.config.preprocess
        return tokenize(self.tokenizer, captions, p.max_caption_words, p.max_caption_tokens).to(self.device)

    def _as_text(self, captions: list[str] | str | TextBatch) -> TextBatch:
        return captions.to(self.device) if isinstance(captions, TextBatch) else self.tokenize(captions)

    def _as_vision_features(self, reference: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, S, S) go through the vision encoder; features (B, T, W) pass as they are."""
        if reference.dim() == 4:
            return self.vision_features(reference)
        if reference.dim() == 3 and reference.shape[-1] == self.config.vision.hidden_size:
            return reference.to(self.device, dtype=self.query_tokens.dtype)
        raise ValueError(
            f"reference must be pixels (B, 3, S, S) or vision features (B, T, {self.config.vision.hidden_size}); "
            f"got shape {tuple(reference.shape)}"
        )

    # ------------------------------------------------------------------ building blocks (grad-enabled)
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, T, W): ViT then ln_vision."""
        vision_dtype = self.vision_model.embeddings.patch_embedding.weight.dtype
        with self.autocast():
            output = self.vision_model(pixel_values=pixel_values.to(self.device, dtype=vision_dtype))
        features = output.last_hidden_state
        if self.readout_positions is not None:
            features = features + self.readout_positions.to(features.dtype)
        return features.to(self.query_tokens.dtype)

    def query_states(self, vision_features: torch.Tensor, output_attentions: bool = False):
        """The Q-Former query pass over an image, no text: (B, T, W) -> (B, Q, H) [, cross-attentions]."""
        queries = self.query_tokens.expand(vision_features.shape[0], -1, -1)
        with self.autocast():
            output = self.qformer(query_embeds=queries, query_length=self.num_query_tokens,
                                  encoder_hidden_states=vision_features, output_attentions=output_attentions)
        if output_attentions:
            return output.last_hidden_state, tuple(output.cross_attentions or ())
        return output.last_hidden_state

    def target_vectors(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, T, W) -> (B, Q, D) L2-normalised: the query pass over an image, projected."""
        hidden = self.query_states(vision_features)
        with self.autocast():
            return F.normalize(self.vision_projection(hidden), dim=-1)

    def sentence_prompt(self, vision_features: torch.Tensor, text: TextBatch, output_attentions: bool = False):
        """Prompt pass: [queries ; caption] with image cross-attention -> P (B, Q, H) [, cross-attentions]."""
        batch, num_queries = vision_features.shape[0], self.num_query_tokens
        queries = self.query_tokens.expand(batch, -1, -1)
        embeds = self.embeddings(input_ids=text.input_ids, query_embeds=queries)  # (B, Q+L, H)
        mask = _prefixed_mask(text.attention_mask, num_queries)
        with self.autocast():
            output = self.qformer(query_embeds=embeds, query_length=num_queries, attention_mask=mask,
                                  encoder_hidden_states=vision_features, output_attentions=output_attentions)
        prompt = output.last_hidden_state[:, :num_queries]
        if output_attentions:
            return prompt, tuple(output.cross_attentions or ())
        return prompt

    def query_prompt(self, vision_features: torch.Tensor, text: TextBatch, output_attentions: bool = False):
        """The prompt pass of a prompt mode -> P (B, Q, H) [, cross-attentions]. "image_prompt" runs the
        query pass over the reference alone: SPRC's prompt pass with the caption left out, so that
        the prompt depends on the image only and everything after it is SPRC's."""
        if self.config.query_mode == "image_prompt":
            return self.query_states(vision_features, output_attentions)
        return self.sentence_prompt(vision_features, text, output_attentions)

    def compose(self, prompt: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Compose pass: [P ; caption] without the image -> query (B, D), the caption [CLS] after P."""
        num_prompt = prompt.shape[1]
        embeds = self.embeddings(input_ids=text.input_ids, query_embeds=prompt)  # (B, Q+L, H)
        mask = _prefixed_mask(text.attention_mask, num_prompt)
        with self.autocast():
            hidden = self.qformer(query_embeds=embeds, query_length=0, attention_mask=mask).last_hidden_state
            return F.normalize(self.text_projection(hidden[:, num_prompt]), dim=-1)

    def auxiliary_query(self, text: TextBatch) -> torch.Tensor:
        """[CLS ; P' ; caption words] with positions over the whole sequence -> (B, D)."""
        batch = text.input_ids.shape[0]
        words = self.embeddings.word_embeddings(text.input_ids)  # (B, L, H)
        prompt = self.prompt_tokens.expand(batch, -1, -1).to(words.dtype)
        sequence = torch.cat([words[:, :1], prompt, words[:, 1:]], dim=1)  # (B, 1+Q+L-1, H)
        positions = torch.arange(sequence.shape[1], device=self.device)
        sequence = sequence + self.embeddings.position_embeddings(positions)[None]
        mask = _prefixed_mask(text.attention_mask, prompt.shape[1], after_cls=True)
        with self.autocast():
            hidden = self.qformer(query_embeds=sequence, query_length=0, attention_mask=mask).last_hidden_state
            return F.normalize(self.text_projection(hidden[:, 0]), dim=-1)

    def tokenize_descriptions(self, texts: list[str]) -> TextBatch:
        """Image descriptions, which run longer than relative captions, up to DESCRIPTION_TOKENS pieces."""
        limit = min(DESCRIPTION_TOKENS, self.config.qformer.max_position_embeddings)
        return tokenize(self.tokenizer, texts, limit, limit).to(self.device)

    def text_vectors(self, text: TextBatch) -> torch.Tensor:
        """Texts alone, [CLS ; words] without image or prompt -> (B, D) at [CLS]: BLIP-2's text side of
        image-text contrast, in the space of the composed queries (the same projection)."""
        with self.autocast():
            hidden = self.qformer(query_embeds=self.embeddings(input_ids=text.input_ids), query_length=0,
                                  attention_mask=text.attention_mask).last_hidden_state
            return F.normalize(self.text_projection(hidden[:, 0]), dim=-1)

    def prompt_vectors(self, prompt: torch.Tensor) -> torch.Tensor:
        """The sentence prompt alone: the compose pass over [P ; empty caption] -> (B, D)."""
        empty = self.tokenize([""] * prompt.shape[0])
        return self.compose(prompt, empty)

    @staticmethod
    def score(query: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, D) x (N, Q, D) -> (B, N): max over each target's Q vectors of the dot product."""
        return max_over_queries(query, targets)

    # ------------------------------------------------------------------ inference API
    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> ImageEncoding:
        """Gallery images -> vision features (reusable as references) and target vectors."""
        features = self.vision_features(pixel_values)
        return ImageEncoding(vision_features=features, targets=self.target_vectors(features))

    @torch.inference_mode()
    def encode_target(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels (N, 3, S, S) or vision features (N, T, W) -> (N, Q, D) L2-normalised."""
        return self.target_vectors(self._as_vision_features(images))

    @torch.inference_mode()
    def encode_query(self, reference: torch.Tensor, captions: list[str] | str | TextBatch,
                     output_attentions: bool = False) -> QueryEncoding:
        """Reference pixels or cached vision features plus relative captions -> composed query."""
        features = self._as_vision_features(reference)
        text = self._as_text(captions)
        if text.input_ids.shape[0] != features.shape[0]:
            raise ValueError(f"{features.shape[0]} references but {text.input_ids.shape[0]} captions")
        return self.compose_query(features, text, output_attentions)

    def compose_query(self, features: torch.Tensor, text: TextBatch, output_attentions: bool = False) -> QueryEncoding:
        """The composed query of `config.query_mode` (grad-enabled; `encode_query` is the inference wrapper)."""
        mode = self.config.query_mode
        if mode in PROMPT_MODES:
            if output_attentions:
                prompt, attentions = self.query_prompt(features, text, output_attentions=True)
            else:
                prompt, attentions = self.query_prompt(features, text), None
            return QueryEncoding(query=self.compose(prompt, text), prompt=prompt, cross_attentions=attentions)
        if mode == "static_prompt":
            return QueryEncoding(query=self.static_prompt_query(features, text), prompt=None)
        if mode == "pseudo_word":
            return QueryEncoding(query=self.pseudo_word_query(features, text), prompt=None)
        image = F.normalize(self.target_vectors(features).mean(dim=1), dim=-1)
        if mode == "image_only":
            return QueryEncoding(query=image, prompt=None)
        words = self.auxiliary_query(text)
        if mode == "text_only":
            return QueryEncoding(query=words, prompt=None)
        return QueryEncoding(query=F.normalize(image + words, dim=-1), prompt=None)  # late_fusion

    def static_prompt_query(self, features: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Baseline: the learned prompt P' (shared) reads the image; output at the caption's [CLS] -> (B, D)."""
        batch, num_queries = features.shape[0], self.num_query_tokens
        embeds = self.embeddings(input_ids=text.input_ids, query_embeds=self.prompt_tokens.expand(batch, -1, -1))
        mask = _prefixed_mask(text.attention_mask, num_queries)
        with self.autocast():
            hidden = self.qformer(query_embeds=embeds, query_length=num_queries, attention_mask=mask,
                                  encoder_hidden_states=features).last_hidden_state
            return F.normalize(self.text_projection(hidden[:, num_queries]), dim=-1)

    def pseudo_word_query(self, features: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Baseline: [CLS ; image pseudo-word ; caption words], no image cross-attention -> (B, D)."""
        image = self.query_states(features).mean(dim=1)  # (B, H)
        words = self.embeddings.word_embeddings(text.input_ids)  # (B, L, H)
        pseudo = self.pseudo_word_projection(image).unsqueeze(1).to(words.dtype)
        sequence = torch.cat([words[:, :1], pseudo, words[:, 1:]], dim=1)
        positions = torch.arange(sequence.shape[1], device=self.device)
        sequence = sequence + self.embeddings.position_embeddings(positions)[None]
        mask = _prefixed_mask(text.attention_mask, 1, after_cls=True)
        with self.autocast():
            hidden = self.qformer(query_embeds=sequence, query_length=0, attention_mask=mask).last_hidden_state
            return F.normalize(self.text_projection(hidden[:, 0]), dim=-1)

    # ------------------------------------------------------------------ training
    def forward(self, reference: torch.Tensor, captions: list[str] | TextBatch, target: torch.Tensor,
                negatives: torch.Tensor | None = None, descriptions: TextBatch | None = None) -> SPRCLossOutput:
        """Training forward over B aligned (reference, caption, target) triplets.

        `negatives` (pixels or vision features of H extra images) are added to every
        query's candidates as non-matches, e.g. look-alikes of the targets.
        `descriptions` (B texts describing the targets) add BLIP-2's image-text contrastive
        term, weighted by `loss.description_weight`: each description against every
        candidate image (max over its Q vectors) and each target against every description,
        so that a text describing an image lands near that image's vectors, and near the
        composed queries that retrieve it.

        Only the prompt modes ("sprc", "image_prompt") have the auxiliary-prompt (rtc) and
        alignment losses; the other baselines train their query with the contrastive loss alone.
        """
        text = self._as_text(captions)
        reference_features = self._as_vision_features(reference)
        candidates = target if negatives is None else torch.cat([target, negatives.to(target.dtype)])
        targets = self.target_vectors(self._as_vision_features(candidates))  # (B [+ H], Q, D)
        encoding = self.compose_query(reference_features, text)
        labels = torch.arange(encoding.query.shape[0], device=self.device)
        logits = self.score(encoding.query, targets) / self.temp
        itc = F.cross_entropy(logits, labels)
        weights = self.config.loss
        description = self._description_loss(descriptions, targets, labels) if descriptions is not None else None
        extra = weights.description_weight * description if description is not None else 0.0
        if self.config.query_mode not in PROMPT_MODES:
            zero = itc.new_zeros(())
            return SPRCLossOutput(loss=weights.itc_weight * itc + extra, itc=itc, rtc=zero, align=zero, logits=logits,
                                  query=encoding.query, targets=targets, description=description)
        auxiliary = self.auxiliary_query(text)
        rtc = F.cross_entropy(self.score(auxiliary, targets) / self.temp, labels)
        prompt_mean = encoding.prompt.mean(dim=1)  # (B, H)
        auxiliary_mean = self.prompt_tokens.mean(dim=1).detach().expand_as(prompt_mean)
        align = F.mse_loss(prompt_mean, auxiliary_mean.to(prompt_mean.dtype))
        loss = weights.itc_weight * itc + weights.rtc_weight * rtc + weights.align_weight * align + extra
        return SPRCLossOutput(loss=loss, itc=itc, rtc=rtc, align=align, logits=logits,
                              query=encoding.query, targets=targets, description=description)

    def _description_loss(self, descriptions: TextBatch, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Symmetric image-text contrast between the B targets (of B + H candidates) and their descriptions."""
        texts = self.text_vectors(descriptions.to(self.device))  # (B, D)
        text_to_image = self.score(texts, targets) / self.temp  # (B, B + H)
        image_to_text = text_to_image[:, :texts.shape[0]].t()  # (B, B): each target against every description
        return (F.cross_entropy(text_to_image, labels) + F.cross_entropy(image_to_text, labels)) / 2
