"""Typed training configuration: one file describes a whole run (JSON).

`cir train --config FILE --optim.lr=1e-4 ...` overrides any field by its dotted name.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_KINDS = ("shapes", "cirr", "fashioniq")
SAVE_DTYPES = ("float32", "float16", "bfloat16")

from cir_core.config import _build, _check_float, _check_int, read_json, set_dotted


@dataclass
class DataConfig:
    """Which benchmark to train and validate on."""

    kind: str = "shapes"  # "shapes", "cirr" or "fashioniq"
    root: str = ""  # dataset folder (shapes: the `cir data shapes` output; cirr/fashioniq: --data-root)
    train_split: str = "train"  # split read for training
    val_split: str = "val"  # split evaluated during training
    categories: tuple[str, ...] = ("dress", "shirt", "toptee")  # FashionIQ categories trained jointly
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
    head_lr: float = 0.0  # peak learning rate of training-only auxiliary heads (0 = lr)
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
    hard_negatives: int = 0  # extra look-alike negative targets per batch (datasets that list them)
    position_negatives: int = 0  # rendered negatives per batch: a target's objects in another layout (shapes)
    edit_negatives: int = 0  # rendered negatives per batch: a reference edited the same way, another outcome (shapes)
    position_negative_spread: str = "even"  # who gets the layout ones: "even" or "inverse_objects" (1/n per n objects)
    lone_target_repeats: int = 1  # draws per pass of each triplet whose target is one object (shapes; 1 = once)
    region_weight: float = 0.0  # weight of the auxiliary per-region vision loss (datasets with region labels)
    locate_patches: bool = False  # the region head also makes every patch token say where it is
    scene_weight: float = 0.0  # weight of decoding the target scene from query and target vectors (region labels)
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
        return _build(cls, data, "train config")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_json(path, "training config"))

    def validate(self) -> None:
        """Raise ValueError naming the first option out of its range, before any work is done
        (a bad value found only at the first checkpoint would cost the whole run)."""
        data, model, optim = self.data, self.model, self.optim
        for name in ("out_dir", "precision", "position_negative_spread"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be non-empty text, got {getattr(self, name)!r}")
        if data.kind not in DATA_KINDS:
            raise ValueError(f"data.kind must be one of {', '.join(DATA_KINDS)}, got {data.kind!r}")
        if not isinstance(data.train_split, str) or not data.train_split:
            raise ValueError(f"data.train_split must name a split, got {data.train_split!r}")
        _check_int(data.val_max_queries, "data.val_max_queries", 0)
        if not isinstance(model.overrides, dict) or not all(isinstance(key, str) for key in model.overrides):
            raise ValueError(f"model.overrides must be an object of dotted model config keys, got {model.overrides!r}")
        for name in ("lr", "pretrained_lr", "vision_lr", "head_lr", "weight_decay", "clip_grad_norm"):
            _check_float(getattr(optim, name), f"optim.{name}", 0)
        _check_float(optim.eps, "optim.eps", 0, low_open=True)
        _check_float(optim.pct_start, "optim.pct_start", 0, 1, low_open=True, high_open=True)
        betas = optim.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {betas!r}")
        for beta in betas:
            _check_float(beta, "optim.betas", 0, 1, high_open=True)
        for name, low in (("batch_size", 1), ("edits_per_reference", 1), ("max_steps", 1), ("eval_every", 0),
                          ("checkpoint_every", 1), ("hard_negatives", 0), ("position_negatives", 0),
                          ("edit_negatives", 0), ("lone_target_repeats", 1), ("num_threads", 0)):
            _check_int(getattr(self, name), name, low)
        for name in ("region_weight", "scene_weight"):
            _check_float(getattr(self, name), name, 0)
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
            head, found, model_key = key.partition("model.overrides.")
            if found and not head:
                # model config keys stay dotted: they are applied to the preset by apply_overrides
                if not isinstance(data["model"]["overrides"], dict):
                    raise ValueError(f"model.overrides must be an object to take {key!r}")
                data["model"]["overrides"][model_key] = value
                continue
            set_dotted(data, key, value, "training option")
        return TrainConfig.from_dict(data)
