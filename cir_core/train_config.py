"""Typed training configuration: one file describes a whole run (JSON).

`cir train --config FILE --optim.lr=1e-4 ...` overrides any field by its dotted name.
Options that only one dataset can serve live in `data.options`, which that dataset's own
option type reads and checks (`DatasetSpec.parse_options`, when the trainer starts).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir_core.config import _check_float, _check_int, build_dataclass, read_json, set_dotted

SAVE_DTYPES = ("float32", "float16", "bfloat16")
DATASET_OPTIONS = "data.options."
# Options that moved into the dataset's own options (first a top-level `shapes` section, now
# `data.options`): files and overrides written before still read.
_SHAPES_OPTIONS = ("position_negatives", "edit_negatives", "position_negative_spread", "lone_target_repeats",
                   "region_weight")
MOVED_KEYS = {**{name: f"{DATASET_OPTIONS}{name}" for name in _SHAPES_OPTIONS},
              **{f"shapes.{name}": f"{DATASET_OPTIONS}{name}" for name in _SHAPES_OPTIONS},
              "data.categories": f"{DATASET_OPTIONS}categories"}
# Their values when they were config fields of every run: a file written then lists them at these
# values whatever the dataset, which says nothing, so they are dropped rather than handed to a
# dataset that takes no such option.
MOVED_DEFAULTS = {"position_negatives": 0, "edit_negatives": 0, "position_negative_spread": "even",
                  "lone_target_repeats": 1, "region_weight": 0.0, "categories": ["dress", "shirt", "toptee"]}
# Options that no longer exist, with the value that meant "off": files written before their
# removal list them with it and still read; any other value asked for what this code no longer does.
REMOVED_KEYS = {"hard_negatives": 0, "scene_weight": 0.0, "locate_patches": False, "optim.head_lr": 0.0}


@dataclass
class DataConfig:
    """Which benchmark to train and validate on."""

    kind: str = "shapes"  # a name in cir_core.data.registry.DATASETS: "shapes", "cirr", "fashioniq", "scenes3d"
    root: str = ""  # dataset folder (shapes: the `cir data shapes` output; cirr/fashioniq: --data-root)
    train_split: str = "train"  # split read for training
    val_split: str = "val"  # split evaluated during training
    options: dict[str, Any] = field(default_factory=dict)  # the dataset's own options (e.g. FashionIQ's categories)
    val_max_queries: int = 0  # evaluate on at most this many validation queries (0 = all)
    cache_images: bool = True  # keep preprocessed training images in memory (uint8)


@dataclass
class ModelInitConfig:
    """Where the weights of the model to train come from."""

    preset: str = "shapes-mini"  # preset name for a fresh model
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config overrides, e.g. {"qformer.num_query_tokens": 16}
    checkpoint: str = ""  # start from this model URI instead of a fresh preset (e.g. converted BLIP-2 weights)
    qformer_from_bert: str = ""  # "minilm" (bundled MiniLM-L6) or a BERT folder; "" = keep as built


@dataclass
class OptimConfig:
    """AdamW + OneCycle as the official recipe, with per-group learning rates."""

    lr: float = 2e-4  # peak learning rate of newly initialised Q-Former parts and projections
    pretrained_lr: float = 5e-5  # peak learning rate of weights taken from a pretrained BERT / checkpoint
    vision_lr: float = 3e-4  # peak learning rate of the vision encoder (when trained)
    weight_decay: float = 0.05  # AdamW weight decay (not applied to norms, biases, embeddings)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    eps: float = 1e-7  # AdamW epsilon
    pct_start: float = 0.1  # OneCycle warm-up share
    clip_grad_norm: float = 1.0  # gradient clipping (0 = off)
    freeze_vision: bool = False  # official: the ViT is frozen (ln_vision stays trainable)
    freeze_word_embeddings: bool = True  # keep the pretrained vocabulary table fixed


@dataclass
class TrainConfig:
    """A complete training run."""

    out_dir: str = "runs/shapes-mini"  # checkpoints and metrics.jsonl go here
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64  # triplets per step
    edits_per_reference: int = 4  # triplets sharing a reference in one batch (hard negatives); 1 = random batches
    max_steps: int = 4000  # optimisation steps (the OneCycle length)
    eval_every: int = 500  # steps between validations (and best-checkpoint checks)
    checkpoint_every: int = 500  # steps between resumable checkpoints
    best_metric: str = ""  # flat validation metric deciding the best checkpoint ("" = the dataset's headline)
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto" (bf16 where the device computes it natively)
    num_threads: int = 0  # torch threads (0 = leave torch's default)
    seed: int = 0  # sampling and initialisation seed
    device: str = "cpu"  # "cpu" or "cuda"
    progress: bool = True  # show progress bars
    save_dtype: str = "float32"  # dtype of saved model weights ("float16" for shipping)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return build_dataclass(cls, _current_keys(data), "train config")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_json(path, "training config"))

    def validate(self) -> None:
        """Raise ValueError naming the first option out of its range, before any work is done
        (a bad value found only at the first checkpoint would cost the whole run)."""
        data, model, optim = self.data, self.model, self.optim
        for name in ("out_dir", "precision"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be non-empty text, got {getattr(self, name)!r}")
        if not isinstance(data.kind, str) or not data.kind:
            raise ValueError(f"data.kind must name a dataset, got {data.kind!r}")
        if not isinstance(data.options, dict):
            raise ValueError(f"data.options must be an object of the dataset's options, got {data.options!r}")
        if not isinstance(data.train_split, str) or not data.train_split:
            raise ValueError(f"data.train_split must name a split, got {data.train_split!r}")
        _check_int(data.val_max_queries, "data.val_max_queries", 0)
        if not isinstance(model.overrides, dict) or not all(isinstance(key, str) for key in model.overrides):
            raise ValueError(f"model.overrides must be an object of dotted model config keys, got {model.overrides!r}")
        for name in ("lr", "pretrained_lr", "vision_lr", "weight_decay", "clip_grad_norm"):
            _check_float(getattr(optim, name), f"optim.{name}", 0)
        _check_float(optim.eps, "optim.eps", 0, low_open=True)
        _check_float(optim.pct_start, "optim.pct_start", 0, 1, low_open=True, high_open=True)
        betas = optim.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {betas!r}")
        for beta in betas:
            _check_float(beta, "optim.betas", 0, 1, high_open=True)
        for name, low in (("batch_size", 1), ("edits_per_reference", 1), ("max_steps", 1), ("eval_every", 0),
                          ("checkpoint_every", 1), ("num_threads", 0)):
            _check_int(getattr(self, name), name, low)
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype must be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}")

    def with_overrides(self, overrides: dict[str, str]) -> TrainConfig:
        """Apply dotted `key=value` overrides; values are parsed as JSON when possible."""
        data = self.to_dict()
        for key, raw in overrides.items():
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if _is_removed(key, value):
                continue
            key = MOVED_KEYS.get(key, key)
            head, found, model_key = key.partition("model.overrides.")
            if found and not head:
                # model config keys stay dotted: they are applied to the preset by apply_overrides
                if not isinstance(data["model"]["overrides"], dict):
                    raise ValueError(f"model.overrides must be an object to take {key!r}")
                data["model"]["overrides"][model_key] = value
                continue
            if key.startswith(DATASET_OPTIONS):  # checked by the dataset's own option type
                if not isinstance(data["data"].setdefault("options", {}), dict):
                    raise ValueError(f"data.options must be an object to take {key!r}")
                data["data"]["options"][key[len(DATASET_OPTIONS):]] = value
                continue
            set_dotted(data, key, value, "training option")
        return TrainConfig.from_dict(data)


def _is_removed(key: str, value: Any) -> bool:
    """Whether `key` is a removed option given its "off" value (to be skipped); ValueError for another value."""
    if key not in REMOVED_KEYS:
        return False
    off = REMOVED_KEYS[key]
    if value != off or isinstance(value, bool) != isinstance(off, bool):
        raise ValueError(f"train config: {key} has been removed; only its default {json.dumps(off)} is still read, "
                         f"got {value!r}")
    return True


def _current_keys(data: Any) -> Any:
    """`data` with moved options in their section and removed ones (at their "off" value) dropped."""
    if not isinstance(data, dict):
        return data
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for key in REMOVED_KEYS:
        section, _, name = key.rpartition(".")
        holder = data.get(section) if section else data
        if isinstance(holder, dict) and name in holder and _is_removed(key, holder[name]):
            del holder[name]
    moved = {f"shapes.{name}": value for name, value in data.pop("shapes").items()} if isinstance(
        data.get("shapes"), dict) else {}  # the section the shapes options had before `data.options`
    for old in MOVED_KEYS:
        section, _, name = old.rpartition(".")
        holder = data.get(section) if section else data
        if section != "shapes" and isinstance(holder, dict) and name in holder:
            moved[old] = holder.pop(name)
    if not moved:
        return data
    data_section = data.setdefault("data", {})
    if not isinstance(data_section, dict) or not isinstance(data_section.get("options", {}), dict):
        return data  # the section's own error is clearer
    options = data_section["options"] = dict(data_section.get("options", {}))
    given_as = {name: f"{DATASET_OPTIONS}{name}" for name in options}
    for old, value in moved.items():
        new = MOVED_KEYS.get(old, DATASET_OPTIONS + old.partition(".")[2])
        target = new[len(DATASET_OPTIONS):]
        default = MOVED_DEFAULTS.get(target)
        if default is not None and (list(value) if isinstance(value, (list, tuple)) else value) == default \
                and type(value) is not bool:
            continue
        if target in options:
            raise ValueError(f"train config: {given_as[target]} and {old} both given; {new} is its name now")
        options[target], given_as[target] = value, old
    return data
