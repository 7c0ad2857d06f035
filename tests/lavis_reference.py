"""An independent SPRC forward pass in plain torch, on tensors with the official LAVIS names.

It is written from the method description (EVA ViT, ln_vision, the BERT Q-Former with
query/text feed-forward routing, the three SPRC passes), not from our model code, and uses
no transformers module, so a wrong name mapping in the converter cannot pass unnoticed.
Shapes: B batch, T vision tokens, W vision width, Q query tokens, H Q-Former width,
L caption tokens, D projection width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cir_core.config import SPRCConfig

EVA_LN_EPS = 1e-6  # EVA ViT blocks
LN_VISION_EPS = 1e-5  # LAVIS ln_vision is a default nn.LayerNorm
BERT_LN_EPS = 1e-12
MASKED = -10000.0  # BERT's additive mask value


def random_lavis_state_dict(config: SPRCConfig, std: float = 0.2, seed: int = 0,
                            vit_dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A full SPRC state dict with LAVIS key names, junk heads included, ViT stored in `vit_dtype`."""
    generator = torch.Generator().manual_seed(seed)
    v, q = config.vision, config.qformer
    W, H, V = v.hidden_size, q.hidden_size, q.vocab_size
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "visual_encoder.cls_token": (1, 1, W),
        "visual_encoder.pos_embed": (1, tokens, W),
        "visual_encoder.patch_embed.proj.weight": (W, 3, v.patch_size, v.patch_size),
        "visual_encoder.patch_embed.proj.bias": (W,),
    }
    for i in range(v.num_hidden_layers):
        block = f"visual_encoder.blocks.{i}."
        shapes.update({
            block + "norm1.weight": (W,), block + "norm1.bias": (W,),
            block + "attn.q_bias": (W,), block + "attn.v_bias": (W,),
            block + "attn.qkv.weight": (3 * W, W),
            block + "attn.proj.weight": (W, W), block + "attn.proj.bias": (W,),
            block + "norm2.weight": (W,), block + "norm2.bias": (W,),
            block + "mlp.fc1.weight": (v.intermediate_size, W), block + "mlp.fc1.bias": (v.intermediate_size,),
            block + "mlp.fc2.weight": (W, v.intermediate_size), block + "mlp.fc2.bias": (W,),
        })
    shapes.update({"ln_vision.weight": (W,), "ln_vision.bias": (W,)})
    bert = "Qformer.bert."
    shapes.update({
        bert + "embeddings.word_embeddings.weight": (V, H),
        bert + "embeddings.position_embeddings.weight": (q.max_position_embeddings, H),
        bert + "embeddings.LayerNorm.weight": (H,), bert + "embeddings.LayerNorm.bias": (H,),
    })
    for i in range(q.num_hidden_layers):
        layer = f"{bert}encoder.layer.{i}."
        kinds = ["attention"] + (["crossattention"] if i % q.cross_attention_frequency == 0 else [])
        for kind in kinds:
            source_width = W if kind == "crossattention" else H
            for proj, width in (("query", H), ("key", source_width), ("value", source_width)):
                shapes[f"{layer}{kind}.self.{proj}.weight"] = (H, width)
                shapes[f"{layer}{kind}.self.{proj}.bias"] = (H,)
            shapes[f"{layer}{kind}.output.dense.weight"] = (H, H)
            shapes[f"{layer}{kind}.output.dense.bias"] = (H,)
            shapes[f"{layer}{kind}.output.LayerNorm.weight"] = (H,)
            shapes[f"{layer}{kind}.output.LayerNorm.bias"] = (H,)
        for suffix in ("", "_query"):
            shapes[f"{layer}intermediate{suffix}.dense.weight"] = (q.intermediate_size, H)
            shapes[f"{layer}intermediate{suffix}.dense.bias"] = (q.intermediate_size,)
            shapes[f"{layer}output{suffix}.dense.weight"] = (H, q.intermediate_size)
            shapes[f"{layer}output{suffix}.dense.bias"] = (H,)
            shapes[f"{layer}output{suffix}.LayerNorm.weight"] = (H,)
            shapes[f"{layer}output{suffix}.LayerNorm.bias"] = (H,)
    D, Q = config.embed_dim, q.num_query_tokens
    shapes.update({
        # the LM head of LAVIS's BertLMHeadModel and the ITM head: present in the file, unused by SPRC
        "Qformer.cls.predictions.bias": (V,),
        "Qformer.cls.predictions.transform.dense.weight": (H, H),
        "Qformer.cls.predictions.transform.dense.bias": (H,),
        "Qformer.cls.predictions.transform.LayerNorm.weight": (H,),
        "Qformer.cls.predictions.transform.LayerNorm.bias": (H,),
        "Qformer.cls.predictions.decoder.weight": (V, H),
        "Qformer.cls.predictions.decoder.bias": (V,),
        "query_tokens": (1, Q, H), "prompt_tokens": (1, Q, H),
        "vision_proj.weight": (D, H), "vision_proj.bias": (D,),
        "text_proj.weight": (D, H), "text_proj.bias": (D,),
        "itm_head.weight": (2, H), "itm_head.bias": (2,),
    })
    state = {}
    for name, shape in shapes.items():
        value = torch.randn(shape, generator=generator) * std
        if "norm" in name.lower() and name.endswith("weight"):
            value = value + 1.0  # LayerNorm gains around 1 keep the signal alive through the layers
        state[name] = value.to(vit_dtype) if name.startswith("visual_encoder.") else value
    state[bert + "embeddings.position_ids"] = torch.arange(q.max_position_embeddings)[None]
    state["temp"] = torch.tensor(0.07)
    return state


class LavisReference:
    """SPRC inference written directly on a LAVIS-named state dict."""

    def __init__(self, state: dict[str, torch.Tensor], config: SPRCConfig):
        self.w = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        self.config = config

    # ---------------------------------------------------------------- vision
    def _eva_block(self, x: torch.Tensor, i: int) -> torch.Tensor:
        w, heads = self.w, self.config.vision.num_attention_heads
        p = f"visual_encoder.blocks.{i}."
        B, T, W = x.shape
        h = F.layer_norm(x, (W,), w[p + "norm1.weight"], w[p + "norm1.bias"], EVA_LN_EPS)
        bias = torch.cat([w[p + "attn.q_bias"], torch.zeros_like(w[p + "attn.v_bias"]), w[p + "attn.v_bias"]])
        qkv = (h @ w[p + "attn.qkv.weight"].T + bias).reshape(B, T, 3, heads, W // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, W/heads)
        weights = ((q * (W // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(B, T, W)
        x = x + attended @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        h = F.layer_norm(x, (W,), w[p + "norm2.weight"], w[p + "norm2.bias"], EVA_LN_EPS)
        h = F.gelu(h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        return x + h @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, T, W) after ln_vision."""
        w, v = self.w, self.config.vision
        patches = F.conv2d(pixels, w["visual_encoder.patch_embed.proj.weight"],
                           w["visual_encoder.patch_embed.proj.bias"], stride=v.patch_size)
        x = patches.flatten(2).transpose(1, 2)  # (B, T-1, W)
        x = torch.cat([w["visual_encoder.cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
        x = x + w["visual_encoder.pos_embed"]
        for i in range(v.num_hidden_layers):
            x = self._eva_block(x, i)
        return F.layer_norm(x, (v.hidden_size,), w["ln_vision.weight"], w["ln_vision.bias"], LN_VISION_EPS)

    # ---------------------------------------------------------------- Q-Former
    def _attention(self, prefix: str, x: torch.Tensor, source: torch.Tensor,
                   additive_mask: torch.Tensor | None) -> torch.Tensor:
        """BERT attention block (post-LN): softmax(QK^T/sqrt(d) + mask) V, dense, residual, LayerNorm."""
        w, heads = self.w, self.config.qformer.num_attention_heads
        B, N, H = x.shape
        d = H // heads

        def project(name: str, inputs: torch.Tensor) -> torch.Tensor:
            out = inputs @ w[f"{prefix}.self.{name}.weight"].T + w[f"{prefix}.self.{name}.bias"]
            return out.reshape(B, inputs.shape[1], heads, d).transpose(1, 2)  # (B, heads, n, d)

        q, k, v = project("query", x), project("key", source), project("value", source)
        scores = q @ k.transpose(-2, -1) / d ** 0.5
        if additive_mask is not None:
            scores = scores + additive_mask
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, H)
        out = context @ w[f"{prefix}.output.dense.weight"].T + w[f"{prefix}.output.dense.bias"]
        return F.layer_norm(out + x, (H,), w[f"{prefix}.output.LayerNorm.weight"],
                            w[f"{prefix}.output.LayerNorm.bias"], BERT_LN_EPS)

    def _feed_forward(self, layer: str, x: torch.Tensor, query: bool) -> torch.Tensor:
        w, H = self.w, self.config.qformer.hidden_size
        suffix = "_query" if query else ""
        h = F.gelu(x @ w[f"{layer}intermediate{suffix}.dense.weight"].T + w[f"{layer}intermediate{suffix}.dense.bias"])
        h = h @ w[f"{layer}output{suffix}.dense.weight"].T + w[f"{layer}output{suffix}.dense.bias"]
        return F.layer_norm(h + x, (H,), w[f"{layer}output{suffix}.LayerNorm.weight"],
                            w[f"{layer}output{suffix}.LayerNorm.bias"], BERT_LN_EPS)

    def qformer(self, embeddings: torch.Tensor, mask: torch.Tensor | None, query_length: int,
                image: torch.Tensor | None) -> torch.Tensor:
        """embeddings (B, N, H) before the embedding LayerNorm -> last hidden states (B, N, H).

        The first `query_length` positions cross-attend to `image` (every `frequency`-th layer)
        and use the query FFN; the rest use the text FFN.
        """
        w, q = self.w, self.config.qformer
        x = F.layer_norm(embeddings, (q.hidden_size,), w["Qformer.bert.embeddings.LayerNorm.weight"],
                         w["Qformer.bert.embeddings.LayerNorm.bias"], BERT_LN_EPS)
        additive = None if mask is None else (1.0 - mask[:, None, None, :].float()) * MASKED
        for i in range(q.num_hidden_layers):
            layer = f"Qformer.bert.encoder.layer.{i}."
            x = self._attention(layer + "attention", x, x, additive)
            queries, texts = x[:, :query_length], x[:, query_length:]
            parts = []
            if query_length > 0:
                if i % q.cross_attention_frequency == 0:
                    queries = self._attention(layer + "crossattention", queries, image, None)
                parts.append(self._feed_forward(layer, queries, query=True))
            if texts.shape[1] > 0:
                parts.append(self._feed_forward(layer, texts, query=False))
            x = torch.cat(parts, dim=1)
        return x

    def _text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1])
        return (self.w["Qformer.bert.embeddings.word_embeddings.weight"][input_ids]
                + self.w["Qformer.bert.embeddings.position_embeddings.weight"][positions])

    # ---------------------------------------------------------------- SPRC
    def target_vectors(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, Q, D) normalised: query-only pass over the image."""
        image = self.image_features(pixels)
        queries = self.w["query_tokens"].expand(pixels.shape[0], -1, -1)
        hidden = self.qformer(queries, None, queries.shape[1], image)
        return F.normalize(hidden @ self.w["vision_proj.weight"].T + self.w["vision_proj.bias"], dim=-1)

    def composed_query(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Prompt pass (queries + caption, image) then compose pass ([P ; caption], no image) -> (B, D)."""
        image = self.image_features(pixels)
        B, Q = pixels.shape[0], self.w["query_tokens"].shape[1]
        mask = torch.cat([torch.ones(B, Q, dtype=attention_mask.dtype), attention_mask], dim=1)
        text = self._text_embeddings(input_ids)
        queries = self.w["query_tokens"].expand(B, -1, -1)
        prompt = self.qformer(torch.cat([queries, text], dim=1), mask, Q, image)[:, :Q]
        hidden = self.qformer(torch.cat([prompt, text], dim=1), mask, 0, None)
        return F.normalize(hidden[:, Q] @ self.w["text_proj.weight"].T + self.w["text_proj.bias"], dim=-1)

    def auxiliary_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[CLS word ; P' ; caption words] with positions 0..n-1 over the whole sequence -> (B, D)."""
        w, B = self.w, input_ids.shape[0]
        words = w["Qformer.bert.embeddings.word_embeddings.weight"][input_ids]  # (B, L, H)
        prompt = w["prompt_tokens"].expand(B, -1, -1)
        sequence = torch.cat([words[:, :1], prompt, words[:, 1:]], dim=1)
        sequence = sequence + w["Qformer.bert.embeddings.position_embeddings.weight"][torch.arange(sequence.shape[1])]
        mask = torch.cat([attention_mask[:, :1], torch.ones(B, prompt.shape[1], dtype=attention_mask.dtype),
                          attention_mask[:, 1:]], dim=1)
        hidden = self.qformer(sequence, mask, 0, None)
        return F.normalize(hidden[:, 0] @ w["text_proj.weight"].T + w["text_proj.bias"], dim=-1)

    @staticmethod
    def scores(query: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, D), (N, Q, D) -> (B, N): best of the Q target vectors for each query."""
        return torch.stack([(targets @ vector).max(dim=-1).values for vector in query])
