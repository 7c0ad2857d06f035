"""Typed configuration for the SPRC model, its preprocessing and its losses.

A configuration round-trips through plain JSON (`to_dict` / `from_dict`), which is
what a checkpoint folder stores next to its weights, and what the named presets in
`cir_core/presets/*.json` hold.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PRESET_DIR = Path(__file__).parent / "presets"

# How a model forms its composed query ("sprc" is the method; the rest are baselines).
QUERY_MODE_DESCRIPTIONS = {
    "sprc": "composed query: sentence-level prompt from image + caption",
    "image_prompt": "SPRC's two passes, but the prompt reads the reference alone, never the caption",
    "static_prompt": "one learned prompt shared by all queries reads the image (BLIP4CIR+Bi-like)",
    "pseudo_word": "the image as one pseudo-word inside the caption (Pic2Word/SEARLE-like)",
    "image_only": "the reference alone",
    "text_only": "the caption alone (auxiliary-prompt text query)",
    "late_fusion": "normalised sum of the image-only and text-only queries",
}
QUERY_MODES = tuple(QUERY_MODE_DESCRIPTIONS)
# Modes whose query is composed from a per-query prompt: only these have a prompt to explain or to
# align with the auxiliary prompt P'.
PROMPT_MODES = ("sprc", "image_prompt")


@dataclass
class VisionConfig:
    """The ViT image encoder (EVA ViT-g/14 in the official model)."""

    image_size: int = 224  # input side in pixels (square)
    patch_size: int = 14  # side of one patch in pixels
    hidden_size: int = 1408  # token width
    intermediate_size: int = 6144  # MLP width
    num_hidden_layers: int = 39  # transformer blocks
    num_attention_heads: int = 16  # heads per block
    layer_norm_eps: float = 1e-6  # eps of the per-block LayerNorms (EVA uses 1e-6)
    ln_vision_eps: float = 1e-5  # eps of the trailing `ln_vision` LayerNorm (torch default in LAVIS)
    qkv_bias: bool = True  # q and v biases (k has none), as EVA
    hidden_act: str = "gelu"  # MLP activation
    # Not in BLIP-2: a learned 2D position table added to the tokens the Q-Former reads, so
    # that its read-out (which weighs tokens by content) can say where things are.
    readout_positions: bool = False
    # Size of the sines and cosines that table starts from, per channel (the tokens are
    # layer-normed, about unit size per channel); training hardly changes it.
    readout_position_scale: float = 0.5

    @property
    def num_tokens(self) -> int:
        """Tokens out of the encoder: one per patch plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass
class QFormerConfig:
    """The BERT-style Q-Former that reads the image and the caption."""

    hidden_size: int = 768  # token width
    num_hidden_layers: int = 12  # transformer layers
    num_attention_heads: int = 12  # heads per layer
    intermediate_size: int = 3072  # feed-forward width (query FFN and text FFN alike)
    cross_attention_frequency: int = 2  # layer i cross-attends to the image when i % frequency == 0
    max_position_embeddings: int = 512  # position table size
    vocab_size: int = 30523  # bert-base-uncased WordPiece plus [DEC]
    layer_norm_eps: float = 1e-12  # BERT LayerNorm eps
    hidden_dropout_prob: float = 0.1  # dropout after attention and FFN (training only)
    attention_probs_dropout_prob: float = 0.1  # dropout on attention weights (training only)
    hidden_act: str = "gelu"  # FFN activation
    num_query_tokens: int = 32  # learned queries = sentence-prompt length = vectors per gallery image


@dataclass
class PreprocessConfig:
    """Image and caption preprocessing; stored with the model so nothing can drift."""

    image_size: int = 224  # final square side fed to the vision encoder
    target_pad_ratio: float = 1.25  # TargetPad: pad the short side when long/short exceeds this
    resample: str = "bicubic"  # PIL resampling filter for the resize
    mean: tuple[float, float, float] = CLIP_MEAN  # per-channel normalisation mean
    std: tuple[float, float, float] = CLIP_STD  # per-channel normalisation std
    max_caption_words: int = 50  # words kept after cleaning
    max_caption_tokens: int = 32  # WordPiece tokens kept, [CLS] and [SEP] included


@dataclass
class LossConfig:
    """Weights of the three SPRC training losses (official CIRR recipe by default)."""

    itc_weight: float = 1.0  # composed query vs target contrastive loss
    rtc_weight: float = 0.4  # auxiliary-prompt query vs target contrastive loss
    align_weight: float = 0.4  # MSE between mean sentence prompt and mean auxiliary prompt
    description_weight: float = 0.0  # target image vs its description contrastive loss (datasets that describe images)


@dataclass
class SPRCConfig:
    """Everything needed to build an SPRC model (weights aside)."""

    name: str = "blip2-vitg"  # preset or model name, shown in the app and the index info
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    embed_dim: int = 256  # width of the projected retrieval vectors
    temp_init: float = 0.07  # initial contrastive temperature (learned, not clamped)
    attn_implementation: str = "eager"  # attention of grad-enabled (training) calls, "eager" or "sdpa" (cir_core.attention)
    query_mode: str = "sprc"  # how the composed query is formed; see QUERY_MODES (baselines use the others)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint_dict(self) -> dict[str, Any]:
        """`to_dict()` with the retired options at their no-op values, in the order they were
        written: what the weights fingerprint hashes, unchanged when an unused option goes."""
        data = self.to_dict()
        for section, value in data.items():
            if isinstance(value, dict):
                cls = type(getattr(self, section))
                value.update(RETIRED_OPTIONS.get(cls.__name__, {}))
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SPRCConfig:
        return build_dataclass(cls, data, "config")

    @classmethod
    def from_json_file(cls, path: str | Path) -> SPRCConfig:
        return cls.from_dict(read_json(path, "model config"))

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of its range or inconsistent with another.

        Every field is checked before any is used, so a hostile or mistyped config file is one
        clear error instead of a division by zero, a NaN model or an allocation of terabytes.
        """
        if not isinstance(self.name, str) or not MODEL_NAME.fullmatch(self.name):
            # the name becomes part of cache file names, and a config file can come from anywhere
            raise ValueError(f"invalid model config: the name must be 1 to 64 letters, digits, '.', '_' or '-', "
                             f"starting with a letter or digit, got {str(self.name)[:80]!r}")
        try:
            _check_field_ranges(self)
        except ValueError as error:
            raise ValueError(f"invalid model config {self.name!r}: {error}") from None
        v, q, p = self.vision, self.qformer, self.preprocess
        checks = [
            (v.hidden_size % v.num_attention_heads == 0, "vision.hidden_size must divide by vision.num_attention_heads"),
            (q.hidden_size % q.num_attention_heads == 0, "qformer.hidden_size must divide by qformer.num_attention_heads"),
            (v.image_size % v.patch_size == 0, "vision.image_size must be a multiple of vision.patch_size"),
            (p.image_size == v.image_size, "preprocess.image_size must equal vision.image_size"),
            (q.num_query_tokens >= 1, "qformer.num_query_tokens must be >= 1"),
            (q.max_position_embeddings >= q.num_query_tokens + p.max_caption_tokens,
             "qformer.max_position_embeddings must cover the auxiliary prompt plus a caption"),
            (p.max_caption_tokens >= 3, "preprocess.max_caption_tokens must be >= 3"),
            (self.attn_implementation in ("eager", "sdpa"), "attn_implementation must be 'eager' or 'sdpa'"),
            (self.query_mode in QUERY_MODES, f"query_mode must be one of {QUERY_MODES}"),
            (estimated_parameters(self) <= MAX_PARAMETERS,
             f"the model would have about {estimated_parameters(self):,} parameters, more than the "
             f"{MAX_PARAMETERS:,} this code builds"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid model config {self.name!r}: {message}")
        try:  # checked even while the table is off, so a config never carries a value it cannot build
            checked_position_scale(v.readout_position_scale)
        except ValueError as error:
            raise ValueError(f"invalid model config {self.name!r}: {error}") from None


# A model's name: what cache file names may take from a config file.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Upper bounds that no real model reaches (BLIP-2's EVA ViT-g has 39 blocks and about 1.2
# billion parameters in all): a config past them is a mistake, refused before anything is allocated.
MAX_LAYERS = 256
MAX_PARAMETERS = 5_000_000_000
RESAMPLE_FILTERS = ("bicubic", "bilinear", "lanczos", "nearest")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(value: Any, where: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{where} must be a whole number {bound}, got {value!r}")


def _check_float(value: Any, where: str, low: float, high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> None:
    ok = _is_number(value) and math.isfinite(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bound = ("> " if low_open else ">= ") + f"{low:g}"
        if high is not None:
            bound += (" and < " if high_open else " and <= ") + f"{high:g}"
        raise ValueError(f"{where} must be a finite number {bound}, got {value!r}")


def _check_choice(value: Any, where: str, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where} must be one of {sorted(choices)}, got {value!r}")


def _check_triple(value: Any, where: str, positive: bool) -> None:
    if (isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3
            or not all(_is_number(x) and math.isfinite(x) and (x > 0 or not positive) for x in value)):
        kind = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"{where} must be 3 {kind} (one per RGB channel), got {value!r}")


def _check_field_ranges(config: SPRCConfig) -> None:
    """ValueError naming the first field whose type or range is wrong (consistency is checked after)."""
    from transformers.activations import ACT2FN

    v, q, p, loss = config.vision, config.qformer, config.preprocess, config.loss
    if not isinstance(config.name, str):
        raise ValueError(f"name must be text, got {config.name!r}")
    for prefix, section in (("vision", v), ("qformer", q)):
        _check_int(section.hidden_size, f"{prefix}.hidden_size", 1)
        _check_int(section.intermediate_size, f"{prefix}.intermediate_size", 1)
        _check_int(section.num_hidden_layers, f"{prefix}.num_hidden_layers", 1, MAX_LAYERS)
        _check_int(section.num_attention_heads, f"{prefix}.num_attention_heads", 1)
        _check_float(section.layer_norm_eps, f"{prefix}.layer_norm_eps", 0, low_open=True)
        _check_choice(section.hidden_act, f"{prefix}.hidden_act", ACT2FN)
    _check_int(v.image_size, "vision.image_size", 1)
    _check_int(v.patch_size, "vision.patch_size", 1)
    _check_float(v.ln_vision_eps, "vision.ln_vision_eps", 0, low_open=True)
    for name in ("qkv_bias", "readout_positions"):
        if not isinstance(getattr(v, name), bool):
            raise ValueError(f"vision.{name} must be true or false, got {getattr(v, name)!r}")
    _check_int(q.cross_attention_frequency, "qformer.cross_attention_frequency", 1)
    _check_int(q.max_position_embeddings, "qformer.max_position_embeddings", 1)
    _check_int(q.vocab_size, "qformer.vocab_size", 1)
    _check_int(q.num_query_tokens, "qformer.num_query_tokens", 1)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        _check_float(getattr(q, name), f"qformer.{name}", 0, 1, high_open=True)
    _check_int(p.image_size, "preprocess.image_size", 1)
    # TargetPad pads the short side up to long / ratio: a ratio below 1 would crop instead.
    _check_float(p.target_pad_ratio, "preprocess.target_pad_ratio", 1)
    _check_choice(p.resample, "preprocess.resample", RESAMPLE_FILTERS)
    _check_triple(p.mean, "preprocess.mean", positive=False)
    _check_triple(p.std, "preprocess.std", positive=True)  # pixels are divided by it
    _check_int(p.max_caption_words, "preprocess.max_caption_words", 1)
    _check_int(p.max_caption_tokens, "preprocess.max_caption_tokens", 1)
    for name in ("itc_weight", "rtc_weight", "align_weight", "description_weight"):
        _check_float(getattr(loss, name), f"loss.{name}", 0)
    _check_int(config.embed_dim, "embed_dim", 1)
    _check_float(config.temp_init, "temp_init", 0, low_open=True)  # logits are divided by it
    _check_choice(config.attn_implementation, "attn_implementation", ("eager", "sdpa"))
    _check_choice(config.query_mode, "query_mode", QUERY_MODES)


def estimated_parameters(config: SPRCConfig) -> int:
    """About the parameter count of the model `config` builds (within 0.1%), from its sizes alone."""
    v, q = config.vision, config.qformer
    width, height = v.hidden_size, q.hidden_size
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    vision_block = 4 * width * width + 2 * width * v.intermediate_size + v.intermediate_size + 8 * width
    vision = (3 * v.patch_size ** 2 * width + 2 * width + tokens * width + v.num_hidden_layers * vision_block
              + 2 * width + (tokens * width if v.readout_positions else 0))
    self_attention = 4 * height * height + 6 * height
    cross_attention = 2 * height * height + 2 * width * height + 6 * height
    feed_forward = 2 * (2 * height * q.intermediate_size + q.intermediate_size + 3 * height)  # text and query FFNs
    cross_layers = len(range(0, q.num_hidden_layers, q.cross_attention_frequency))
    qformer = (q.num_hidden_layers * (self_attention + feed_forward) + cross_layers * cross_attention + 2 * height
               + (q.vocab_size + q.max_position_embeddings) * height + 2 * height)
    heads = 2 * q.num_query_tokens * height + 2 * (height * config.embed_dim + config.embed_dim) + 1
    if config.query_mode == "pseudo_word":
        heads += 2 * (height * height + height)
    return vision + qformer + heads


def checked_position_scale(scale: Any) -> float:
    """`scale` as a float; ValueError unless it is a positive finite number."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"vision.readout_position_scale must be a positive number, got {scale!r}")
    return float(scale)


def read_json(path: str | Path, what: str) -> Any:
    """Parsed JSON of a file; ValueError naming `what` and the file when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from error
    except RecursionError:
        raise ValueError(f"cannot read {what} {path}: it is nested too deeply to be a {what}") from None


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str) -> None:
    """data["a"]["b"] = value for key "a.b"; ValueError "unknown <what>" when the path does not exist."""
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ValueError(f"unknown {what} {key!r}")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"unknown {what} {key!r}")
    node[leaf] = value


# Options that no longer exist, at the value that made them do nothing. Files written while they
# existed still read (the key is dropped when it holds that value, refused otherwise), and the
# weights fingerprint hashes them back in (`SPRCConfig.fingerprint_dict`), so indexes and seeds
# built before an option went stay tied to their model.
RETIRED_OPTIONS: dict[str, dict[str, Any]] = {"VisionConfig": {"readout_position_wavelengths": None}}


def _without_retired(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
    retired = RETIRED_OPTIONS.get(cls.__name__, {})
    for name, inert in retired.items():
        if name in data and data[name] != inert:
            raise ValueError(f"{where}.{name}: this option no longer exists; only {inert!r} (its no-op value) "
                             f"still reads, got {data[name]!r}")
    return {name: value for name, value in data.items() if name not in retired}


def build_dataclass(cls, data: Any, where: str):
    """Build dataclass `cls` from a dict, refusing unknown keys (a wrong file is loud)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    data = _without_retired(cls, data, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (not a {cls.__name__})")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = build_dataclass(sub, value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = _checked_scalar(value, f.type, f"{where}.{name}")
    return cls(**kwargs)


# Declared scalar field types -> accepted Python types (a whole number is a fine float).
_SCALAR_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _checked_scalar(value: Any, declared: Any, where: str) -> Any:
    """`value` when it fits a bool/int/float/str field; other field types pass unchecked."""
    accepted = _SCALAR_TYPES.get(declared if isinstance(declared, str) else getattr(declared, "__name__", ""))
    if accepted is None:
        return value
    wrong_bool = isinstance(value, bool) and bool not in accepted  # True is an int to Python, not to a config
    if wrong_bool or not isinstance(value, accepted):
        raise ValueError(f"{where}: expected {declared if isinstance(declared, str) else declared.__name__}, "
                         f"got {value!r}")
    return float(value) if accepted == (int, float) else value


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> SPRCConfig:
    """The named preset (`blip2-vitg`, `tiny-test`, ...) as a config."""
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    config = SPRCConfig.from_json_file(path)
    config.validate()
    return config


def apply_overrides(config: SPRCConfig, overrides: dict[str, Any]) -> SPRCConfig:
    """Return a copy with dotted-key overrides applied, e.g. {"qformer.num_query_tokens": 8}."""
    data = config.to_dict()
    for key, value in overrides.items():
        set_dotted(data, key, value, "config key")
    new = SPRCConfig.from_dict(data)
    new.validate()
    return new
