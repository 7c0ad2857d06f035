"""Import official weights into our checkpoint format.

Two sources are understood:

- LAVIS pickles: the released SPRC checkpoints (`sprc_cirr.pt`, `sprc_fiq.pt`, ...), stored as
  `{"epoch": n, "Blip2QformerCirAlignPrompt": state_dict}`, and LAVIS's BLIP-2 stage-1 file
  (`{"model": state_dict}`), or a bare state dict with LAVIS names.
- BLIP-2 stage-1 weights in transformers' `Blip2ForImageTextRetrieval` layout
  (`Salesforce/blip2-itm-vit-g`): a folder with `model.safetensors` (possibly sharded, with an
  index), `pytorch_model.bin`, or one such file. Our parameter names follow that class, so the
  names map one to one.

Decisions:

- Every key is accounted for. Keys that are known to be unused (`Qformer.cls.*`, the LM head
  of the LAVIS BertLMHeadModel; `itm_head.*`, the image-text matching head; the
  `position_ids` buffer) are dropped and reported. Any other key we cannot place is an error:
  it means another architecture variant, and ignoring it would give a different model.
- Model parameters missing from a file are an error, except for an explicit allow-list
  that is initialised and reported: `prompt_tokens` (SPRC's auxiliary prompt P', absent from
  plain BLIP-2 stage-1 weights; initialised N(0, 0.02) as SPRC does before training) and,
  for the transformers layout only, `temp` (transformers' class has no temperature; it gets
  the config's `temp_init`). Initialisation uses a fixed seed so a conversion is repeatable.
- The word-embedding table must have exactly `qformer.vocab_size` rows (30523: bert-base-
  uncased plus `[DEC]`). A 30522-row table is refused rather than padded: every BLIP-2
  stage-1 Q-Former carries the `[DEC]` row, so a table without it comes from another model.
- Nothing is half-loaded: names and shapes are checked against a weightless (meta-device)
  model first; the real model is only built once every check has passed, and the output
  folder is only written (atomically) after that.
- Memory: LAVIS keeps the ViT in fp16, our model is fp32. Renaming shares storage, and the
  fp32 cast replaces one tensor at a time, so at most two copies of the weights are alive
  (the converted state and the model being filled), about 9.4 GB for ViT-g.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cir_core.checkpoints import CONFIG_FILE, CheckpointError, build_with_weights, save_model
from cir_core.config import SPRCConfig, load_preset
from cir_core.model import SPRCModel
from cir_core.text import load_tokenizer

logger = logging.getLogger(__name__)

LAVIS_WRAPPER_KEYS = ("Blip2QformerCirAlignPrompt", "model")
PROMPT_INIT_STD = 0.02  # SPRC initialises P' like BERT weights (initializer_range)
INIT_SEED = 0  # fixed so that converting the same file twice gives identical folders

_VISION_BLOCK = r"visual_encoder\.blocks\.(\d+)\."
_QFORMER_LAYER = r"Qformer\.bert\.encoder\.layer\.(\d+)\."
# LAVIS name pattern -> our name (`re` replacement syntax). Anything not listed is unexpected.
LAVIS_RENAMES = [
    (r"visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (_VISION_BLOCK + r"norm([12])\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
    (_VISION_BLOCK + r"attn\.qkv\.weight", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (_VISION_BLOCK + r"attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (_VISION_BLOCK + r"mlp\.(fc[12])\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"ln_vision\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.layernorm.\1"),
    (r"Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight", r"embeddings.\1_embeddings.weight"),
    (_QFORMER_LAYER + r"(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (_QFORMER_LAYER + r"(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.output.\3.\4"),
    (_QFORMER_LAYER + r"(intermediate|intermediate_query)\.dense\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.dense.\3"),
    (_QFORMER_LAYER + r"(output|output_query)\.(dense|LayerNorm)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.\3.\4"),
    (r"(query_tokens|prompt_tokens|temp)", r"\1"),
    (r"vision_proj\.(weight|bias)", r"vision_projection.\1"),
    (r"text_proj\.(weight|bias)", r"text_projection.\1"),
]
# EVA keeps separate q and v biases (k has none); transformers fuses them into qkv.bias.
LAVIS_QV_BIAS = re.compile(_VISION_BLOCK + r"attn\.([qv])_bias")
LAVIS_DROPPED = re.compile(r"Qformer\.cls\..*|itm_head\..*|Qformer\.bert\.embeddings\.position_ids")
TRANSFORMERS_DROPPED = re.compile(r"itm_head\..*|embeddings\.position_ids")

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
TRANSFORMERS_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TRANSFORMERS_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ConversionError(CheckpointError):
    """Weights that cannot be imported; the message says why. `report` is set when keys were checked."""

    def __init__(self, message: str, report: ConversionReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class ConversionReport:
    """What a conversion did with every key of the source."""

    source: str  # file or folder the weights came from
    source_format: str  # "lavis" or "transformers"
    preset: str  # name of the model config the weights were fitted to
    mapped: int = 0  # model parameters filled from the source
    dropped: list[str] = field(default_factory=list)  # source keys discarded on purpose (unused heads, buffers)
    initialised: list[str] = field(default_factory=list)  # parameters absent from the source, freshly initialised
    missing: list[str] = field(default_factory=list)  # parameters absent from the source that cannot be initialised
    unexpected: list[str] = field(default_factory=list)  # source keys with no place in the model
    mismatched: list[str] = field(default_factory=list)  # "name: source shape vs model shape"
    output: str | None = None  # checkpoint folder written, once saved

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int | None = 20) -> str:
        """Human-readable summary; each key list is cut to `limit` entries (None: all)."""
        lines = [f"{self.source_format} weights from {self.source} -> preset {self.preset!r}: "
                 f"{self.mapped} parameters mapped"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatches", self.mismatched), ("dropped (unused)", self.dropped),
                            ("initialised (not in the source)", self.initialised)):
            lines.append(f"{title}: {len(keys)}")
            shown = keys if limit is None else keys[:limit]
            lines.extend(f"  {key}" for key in shown)
            if len(shown) < len(keys):
                lines.append(f"  ... and {len(keys) - len(shown)} more")
        if self.output:
            lines.append(f"written to {self.output}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- reading files
def _torch_load(path: Path) -> object:
    """torch.load with weights_only; any failure to read the file is a ConversionError naming the problem."""
    if not path.exists():
        raise ConversionError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:
            raise ConversionError(_unreadable(path, error)) from error
        raise ConversionError(
            f"{path} holds pickled Python objects besides tensors ({found.group(1)}); only plain state dicts are "
            "loaded, because unpickling arbitrary objects can run code. Re-save it as a dict of tensors."
        ) from error
    except Exception as error:  # random or cut bytes fail deep in torch's readers: IndexError, UnicodeDecodeError, ...
        raise ConversionError(_unreadable(path, error)) from error


def _unreadable(path: Path, error: Exception) -> str:
    """One line for a file torch cannot read: its last non-empty message line says the most."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "WeightsUnpickler error" not in line]
    detail = next((line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation",
                                                                   "Please file an issue"))), "")
    return (f"{path} is not a readable checkpoint (truncated or corrupt: {type(error).__name__}"
            f"{': ' + detail[:200] if detail else ''})")


def _require_tensors(state: dict, source: str) -> dict[str, torch.Tensor]:
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ConversionError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                                  "expected a state dict of named tensors")
    if not state:
        raise ConversionError(f"{source}: the state dict is empty")
    return state


def load_lavis_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a LAVIS/SPRC pickle (wrapped under a model key, or bare)."""
    path = Path(path)
    content = _torch_load(path)
    if not isinstance(content, dict):
        raise ConversionError(f"{path} holds a {type(content).__name__}, not a checkpoint dict")
    for key in LAVIS_WRAPPER_KEYS:
        if isinstance(content.get(key), dict):
            return _require_tensors(content[key], f"{path}[{key!r}]")
    if content and all(isinstance(value, torch.Tensor) for value in content.values()):
        return _require_tensors(content, str(path))
    raise ConversionError(
        f"{path}: no state dict found; expected a dict of tensors, or one under "
        f"{' or '.join(repr(k) for k in LAVIS_WRAPPER_KEYS)}; top-level keys are {sorted(map(str, content))[:10]}"
    )


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConversionError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError, ValueError) as error:
            raise ConversionError(f"{path} is truncated or corrupt: not a readable safetensors file ({error})") from error
    content = _torch_load(path)
    if not isinstance(content, dict):
        raise ConversionError(f"{path} holds a {type(content).__name__}, not a state dict")
    wrapped = [key for key in LAVIS_WRAPPER_KEYS if isinstance(content.get(key), dict)]
    if wrapped:
        raise ConversionError(f"{path} is not a transformers Blip2 state dict: its weights sit under {wrapped[0]!r} "
                              "as in LAVIS checkpoints; import it with convert_lavis (`cir convert --from-lavis`)")
    return _require_tensors(content, str(path))


def _read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConversionError(f"{index_path} is not a valid weight index (needs a 'weight_map'): {error}") from error
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = _read_weight_file(index_path.parent / shard)
        absent = sorted(k for k, v in weight_map.items() if v == shard and k not in part)
        if absent:
            raise ConversionError(f"shard {shard} lacks {len(absent)} tensors its index lists (e.g. {absent[:3]})")
        state.update(part)
    return state


def load_transformers_blip2(path: str | Path) -> dict[str, torch.Tensor]:
    """A transformers-layout state dict from a folder (single, sharded or .bin weights) or one file."""
    path = Path(path)
    if path.is_dir():
        for name in TRANSFORMERS_INDEX_FILES:
            if (path / name).is_file():
                return _read_sharded(path / name)
        for name in TRANSFORMERS_WEIGHT_FILES:
            if (path / name).is_file():
                return _read_weight_file(path / name)
        raise ConversionError(
            f"{path} holds no transformers weights: expected one of "
            f"{', '.join(TRANSFORMERS_INDEX_FILES + TRANSFORMERS_WEIGHT_FILES)}"
        )
    if path.suffix == ".json":
        return _read_sharded(path)
    return _read_weight_file(path)


# ---------------------------------------------------------------------------- mapping names
def _rename_lavis(key: str) -> str | None:
    for pattern, replacement in LAVIS_RENAMES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(replacement)
    return None


def _refuse_foreign(state: dict[str, torch.Tensor], source: str, wanted: tuple[str, ...], other: tuple[str, ...],
                    layout: str, hint: str) -> None:
    """A clear error for a state dict of another architecture, before any key-by-key report."""
    if any(key.startswith(wanted) for key in state):
        return
    looks_other = any(key.startswith(other) for key in state)
    raise ConversionError(
        f"{source} is not a {layout} state dict: none of its {len(state)} keys start with "
        f"{' or '.join(wanted)} (first keys: {list(state)[:5]})" + (f"; {hint}" if looks_other else "")
    )


def expected_shapes(config: SPRCConfig) -> dict[str, torch.Size]:
    """Every parameter name of the model for `config` with its shape, without allocating weights."""
    tokenizer = load_tokenizer(expected_size=config.qformer.vocab_size)
    with torch.device("meta"):
        model = SPRCModel(config, tokenizer=tokenizer)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _initial_value(name: str, shape: torch.Size, config: SPRCConfig, generator: torch.Generator) -> torch.Tensor:
    if name == "prompt_tokens":
        return torch.randn(shape, generator=generator) * PROMPT_INIT_STD
    if name == "temp":
        return torch.full(shape, float(config.temp_init))
    raise KeyError(name)


def _mismatch(name: str, found: torch.Size, wanted: torch.Size, config: SPRCConfig) -> str:
    if name == WORD_EMBEDDINGS and found[1:] == wanted[1:]:
        return (f"{name}: {found[0]} rows but the tokenizer (bert-base-uncased + [DEC]) has {wanted[0]} ids; "
                "every BLIP-2 Q-Former table has the [DEC] row, so this text model is not BLIP-2's")
    return f"{name}: source {tuple(found)} vs model {tuple(wanted)} (preset {config.name!r})"


def _fit(ours: dict[str, torch.Tensor], report: ConversionReport, config: SPRCConfig,
         initialisable: tuple[str, ...]) -> None:
    """Compare mapped names and shapes with the model; fill allowed gaps; record every problem."""
    shapes = expected_shapes(config)
    generator = torch.Generator().manual_seed(INIT_SEED)
    report.unexpected.extend(sorted(set(ours) - set(shapes)))
    report.mapped = sum(name in ours for name in shapes)
    for name, shape in shapes.items():
        if name in ours:
            if ours[name].shape != shape:
                report.mismatched.append(_mismatch(name, ours[name].shape, shape, config))
        elif name in initialisable:
            ours[name] = _initial_value(name, shape, config, generator)
            report.initialised.append(name)
        else:
            report.missing.append(name)


def convert_lavis_state_dict(state: dict[str, torch.Tensor], config: SPRCConfig,
                             source: str = "state dict") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """LAVIS names -> ours (tensors shared, not copied) and a report of every key; nothing raises for
    missing/unexpected/mismatched keys (see `report.ok`), only for a state dict of another architecture."""
    _refuse_foreign(state, source, ("visual_encoder.", "Qformer."), ("vision_model.", "qformer."),
                    "LAVIS BLIP-2/SPRC", "it looks like transformers' Blip2 layout: import it with "
                    "convert_transformers_blip2 (`cir convert --from-transformers`)")
    report = ConversionReport(source=source, source_format="lavis", preset=config.name)
    ours: dict[str, torch.Tensor] = {}
    qv_biases: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        bias = LAVIS_QV_BIAS.fullmatch(key)
        if bias:
            qv_biases.setdefault(bias.group(1), {})[bias.group(2)] = tensor
            continue
        if LAVIS_DROPPED.fullmatch(key):
            report.dropped.append(key)
            continue
        name = _rename_lavis(key)
        if name is None:
            report.unexpected.append(key)
        else:
            ours[name] = tensor
    for block, parts in qv_biases.items():
        if set(parts) != {"q", "v"}:  # half a bias has no place; qkv.bias then shows as missing
            report.unexpected.extend(f"visual_encoder.blocks.{block}.attn.{part}_bias" for part in parts)
            continue
        q_bias, v_bias = parts["q"], parts["v"]
        ours[f"vision_model.encoder.layers.{block}.self_attn.qkv.bias"] = torch.cat(
            [q_bias, torch.zeros_like(v_bias), v_bias])
    _fit(ours, report, config, initialisable=("prompt_tokens",))
    return ours, report


def convert_transformers_state_dict(state: dict[str, torch.Tensor], config: SPRCConfig,
                                    source: str = "state dict") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """transformers `Blip2ForImageTextRetrieval` names map 1:1; `itm_head` dropped, `prompt_tokens`/`temp` filled."""
    _refuse_foreign(state, source, ("vision_model.", "qformer."), ("visual_encoder.", "Qformer."),
                    "transformers Blip2", "it looks like a LAVIS checkpoint: import it with convert_lavis "
                    "(`cir convert --from-lavis`)")
    report = ConversionReport(source=source, source_format="transformers", preset=config.name)
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if TRANSFORMERS_DROPPED.fullmatch(key):
            report.dropped.append(key)
        else:
            ours[key] = tensor
    _fit(ours, report, config, initialisable=("prompt_tokens", "temp"))
    return ours, report


# ---------------------------------------------------------------------------- end to end
def _preset_config(preset: str) -> SPRCConfig:
    try:
        return load_preset(preset)
    except ValueError as error:
        raise ConversionError(str(error)) from error


def _check_output(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a checkpoint (saving swaps the whole folder)."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file())):
        raise ConversionError(f"output {out_dir} exists and is not a checkpoint folder; refusing to replace it")


def _build_and_save(ours: dict[str, torch.Tensor], report: ConversionReport, config: SPRCConfig,
                    out_dir: Path, dtype: torch.dtype | None) -> ConversionReport:
    if not report.ok:
        problems = [f"{len(keys)} {title} (e.g. {keys[:3]})" for title, keys in
                    (("shape mismatches", report.mismatched), ("missing keys", report.missing),
                     ("unexpected keys", report.unexpected)) if keys]
        raise ConversionError(f"{report.source} does not fit preset {config.name!r}: " + "; ".join(problems), report)
    for name in list(ours):  # one tensor at a time, so the fp16 original is freed as its copy appears
        if ours[name].is_floating_point():
            ours[name] = ours[name].to(torch.float32)
    tokenizer = load_tokenizer(expected_size=config.qformer.vocab_size)
    model = build_with_weights(config, ours, tokenizer, report.source)
    ours.clear()  # the model holds its own copy now
    report.output = str(save_model(model, out_dir, dtype=dtype))
    logger.info("converted %s weights from %s into %s", report.source_format, report.source, report.output)
    return report


def convert_lavis(path: str | Path, preset: str, out_dir: str | Path,
                  dtype: torch.dtype | None = None) -> ConversionReport:
    """An official SPRC / LAVIS BLIP-2 pickle -> our checkpoint folder `out_dir` (weights stored in `dtype`)."""
    config, out_dir = _preset_config(preset), Path(out_dir)
    _check_output(out_dir)
    state = load_lavis_checkpoint(path)
    ours, report = convert_lavis_state_dict(state, config, source=str(path))
    del state  # `ours` shares the tensors; dropping the original lets the fp32 cast free them
    return _build_and_save(ours, report, config, out_dir, dtype)


def convert_transformers_blip2(path: str | Path, preset: str, out_dir: str | Path,
                               dtype: torch.dtype | None = None) -> ConversionReport:
    """transformers `Blip2ForImageTextRetrieval` weights (folder or file) -> our checkpoint folder."""
    config, out_dir = _preset_config(preset), Path(out_dir)
    _check_output(out_dir)
    state = load_transformers_blip2(path)
    ours, report = convert_transformers_state_dict(state, config, source=str(path))
    del state
    return _build_and_save(ours, report, config, out_dir, dtype)
