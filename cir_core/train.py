"""The one training loop, for every dataset (shapes, CIRR, FashionIQ).

What differs between datasets (their reader, evaluator, headline metric and any training
extras) comes from the dataset registry, `cir_core.data.registry.DATASETS`.

`cir train --config FILE [--key=value ...] [--resume]`, or `main(argv)` from Python.
A run folder holds `metrics.jsonl` (one JSON object per log line), `last/` (a model
checkpoint plus `trainer_state.pt` for --resume) and `best/` (the checkpoint with the
best validation metric so far).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from cir_core.checkpoints import load_model, save_model
from cir_core.config import apply_overrides, load_preset
from cir_core.data.registry import dataset_spec
from cir_core.data.triplets import Triplet, TripletSplit
from cir_core.evaluation.protocols import evaluate_protocol
from cir_core.model import SPRCModel
from cir_core.precision import resolve_train_precision
from cir_core.data.folders import data_fingerprint
from cir_core.provenance import code_version, describe_device
from cir_core.train_config import TrainConfig
from cir_core.transforms import ImageTransform

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.pt"
TRAINER_STATE_KEYS = ("step", "best", "optimizer", "scheduler", "torch_rng", "sampler", "caption_rng")
# What a run writes into its folder; their presence means the folder holds a run.
RUN_FILES = ("train_config.json", "metrics.jsonl", "last", "best")


# ---------------------------------------------------------------------- data
def evaluate(config: TrainConfig, model: SPRCModel, validation) -> dict[str, float]:
    """Run the dataset's own protocol; returns flat metrics (percent)."""
    return flatten_metrics(evaluate_protocol(dataset_spec(config.data.kind).protocol, model, validation).to_dict())


def flatten_metrics(report: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in report.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


class ImageStore:
    """Preprocessed training images as uint8 (3, S, S), decoded once and kept in memory."""

    def __init__(self, split: TripletSplit, transform: ImageTransform, cache: bool, progress: bool):
        self.split, self.transform, self.cache = split, transform, cache
        self._images: dict[str, torch.Tensor] = {}
        if cache:
            ids = sorted({t.reference for t in split.triplets} | {t.target for t in split.triplets if t.target})
            with ThreadPoolExecutor(max_workers=4) as pool:
                loaded = pool.map(self._load, ids)
                for image_id, tensor in tqdm(zip(ids, loaded), total=len(ids), desc="loading images",
                                             disable=not progress, unit="img"):
                    self._images[image_id] = tensor

    def _load(self, image_id: str) -> torch.Tensor:
        path = self.split.path(image_id)
        try:
            with Image.open(path) as image:
                return self.transform.to_uint8(image)
        except OSError as error:
            raise ValueError(f"cannot read training image {path}: {error}") from error

    def batch(self, image_ids: list[str], rendered: list[Image.Image] = ()) -> torch.Tensor:
        """(B, 3, S, S) normalised float pixels of stored images, then of `rendered` ones."""
        images = [self._images[i] if i in self._images else self._load(i) for i in image_ids]
        images += [self.transform.to_uint8(image) for image in rendered]
        return self.transform.normalize(torch.stack(images))


class TripletSampler:
    """Batches of `per_reference` triplets sharing a reference (hard negatives for each other)."""

    def __init__(self, triplets: list[Triplet], batch_size: int, per_reference: int, seed: int,
                 repeats: list[int] | None = None):
        self.batch_size, self.rng = batch_size, random.Random(seed)
        self.targets = [t.target for t in triplets]
        if repeats is not None and (len(repeats) != len(triplets) or min(repeats, default=1) < 1):
            raise ValueError("repeats needs one count >= 1 per triplet")
        # Draws of each triplet per pass over the data (None: once each); extra draws come in
        # later rounds of the pass, so a batch never holds a triplet twice.
        self.repeats = repeats
        groups: dict[str, list[int]] = {}
        for index, triplet in enumerate(triplets):
            if triplet.target is not None:
                groups.setdefault(triplet.reference, []).append(index)
        self.groups = list(groups.values())
        if not self.groups:
            raise ValueError("no training triplets with targets")
        distinct = len(set(self.targets) - {None})
        if distinct < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {distinct} distinct training targets")
        self.per_reference = max(1, per_reference)
        self._order: list[int] = []

    def _refill(self) -> None:
        chunks = []
        for round_number in range(max(self.repeats) if self.repeats else 1):
            for group in self.groups:
                group = [i for i in group if self.repeats is None or self.repeats[i] > round_number]
                if not group:
                    continue
                self.rng.shuffle(group)
                chunks.extend(group[i:i + self.per_reference] for i in range(0, len(group), self.per_reference))
        self.rng.shuffle(chunks)
        self._order = [index for chunk in chunks for index in chunk]

    def next_batch(self) -> list[int]:
        """Indices of one batch; distinct targets only, since duplicates would be false negatives."""
        batch, targets_seen = [], set()
        while len(batch) < self.batch_size:
            if not self._order:
                self._refill()
            index = self._order.pop()
            if self.targets[index] not in targets_seen:
                targets_seen.add(self.targets[index])
                batch.append(index)
        return batch

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self._order)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self._order = list(state["order"])


# ---------------------------------------------------------------------- model and optimiser
def build_model(config: TrainConfig) -> tuple[SPRCModel, set[str]]:
    """The model to train and the names of parameters that came pretrained."""
    init = config.model
    pretrained: set[str] = set()
    if init.checkpoint:
        model = load_model(init.checkpoint)
        pretrained = {name for name, _ in model.named_parameters()}
        if init.overrides:
            model = with_config(model, checkpoint_overrides(model.config, init.overrides))
    else:
        model_config = load_preset(init.preset)
        if init.overrides:
            model_config = apply_overrides(model_config, init.overrides)
        model = SPRCModel(model_config)
    if init.qformer_from_bert:
        from cir_core.pretrained import init_qformer_from_bert

        pretrained |= set(init_qformer_from_bert(model, None if init.qformer_from_bert == "minilm" else init.qformer_from_bert))
    return model, pretrained


def checkpoint_overrides(config, overrides: dict):
    """Loss weights and the query mode may change when fine-tuning a checkpoint; its sizes may not."""
    allowed = ("loss.", "name")
    fixed = [key for key in overrides if not key.startswith(allowed) and key != "query_mode"]
    if fixed:
        raise ValueError(f"cannot override {fixed} when starting from a checkpoint (architecture is fixed)")
    return apply_overrides(config, overrides)


def with_config(model: SPRCModel, config) -> SPRCModel:
    """`model` under `config`, which may name another query mode than the checkpoint's.

    Another mode gets a model built afresh holding every weight of the checkpoint it has:
    parameters only the new mode has (pseudo_word's projection) start from their
    initialisation, those only the old mode had are dropped. The build draws from a fork of
    torch's random stream, so that runs of one seed in different modes share what they draw next.
    """
    if config.query_mode == model.config.query_mode:
        model.config = config
        return model
    with torch.random.fork_rng(devices=[]):
        rebuilt = SPRCModel(config, tokenizer=model.tokenizer)
    state, expected = model.state_dict(), rebuilt.state_dict()
    rebuilt.load_state_dict({name: tensor for name, tensor in state.items() if name in expected}, strict=False)
    fresh, dropped = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    logger.info("query mode %s -> %s: %d tensors start fresh %s, %d dropped %s", model.config.query_mode,
                config.query_mode, len(fresh), fresh, len(dropped), dropped)
    return rebuilt


def parameter_groups(model: SPRCModel, config: TrainConfig, pretrained: set[str]) -> list[dict]:
    optim = config.optim
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        frozen_vision = optim.freeze_vision and name.startswith("vision_model.") and "post_layernorm" not in name
        frozen_words = optim.freeze_word_embeddings and name == "embeddings.word_embeddings.weight"
        if frozen_vision or frozen_words:
            param.requires_grad_(False)
            continue
        if name.startswith("vision_model."):
            lr = optim.pretrained_lr if name in pretrained else optim.vision_lr
        else:
            lr = optim.pretrained_lr if name in pretrained else optim.lr
        no_decay = param.dim() < 2 or "embeddings" in name or name in ("query_tokens", "prompt_tokens", "temp",
                                                                         "readout_positions")
        decay = 0.0 if no_decay else optim.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


# ---------------------------------------------------------------------- the loop
class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False):
        """`resume` continues the run in `config.out_dir`; without it, a folder that already holds
        a run is refused unless `overwrite` (its checkpoints and log are then replaced when `run` starts)."""
        config.validate()
        self.dataset = dataset_spec(config.data.kind)  # refuses an unknown dataset or options before any work
        self.dataset_options = self.dataset.parse_options(config.data.options)
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} was asked for, but this torch sees no CUDA device")
        self.config = config
        self.out_dir = Path(config.out_dir)
        self._replace_run = self._check_out_dir(resume, overwrite)
        self.precision = resolve_train_precision(config.precision, config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)
        self.model, pretrained = build_model(config)
        self.model.to(config.device).train()
        self.transform = ImageTransform(self.model.config.preprocess)
        self.describe_targets = self.model.config.loss.description_weight > 0
        root = Path(config.data.root)
        self.train_split = self.dataset.read_split(root, config.data.train_split, self.dataset_options, True,
                                                   self.describe_targets)
        if self.describe_targets and not self.train_split.image_captions:
            raise ValueError(f"loss.description_weight needs image descriptions, which {config.data.kind} "
                             "does not provide (shapes does)")
        self.extras = self.dataset.training_extras(self.dataset_options, root, self.model, self.train_split,
                                                   config.device)
        self.val_split = self._validation_split()
        self.images = ImageStore(self.train_split, self.transform, config.data.cache_images, config.progress)
        self.sampler = TripletSampler(self.train_split.triplets, config.batch_size, config.edits_per_reference,
                                      config.seed, self.extras.triplet_repeats())
        self.caption_rng = random.Random(config.seed + 1)
        groups = parameter_groups(self.model, config, pretrained)
        head_parameters = self.extras.parameters()
        if head_parameters:  # training-only heads, learning as fast as the model's new parts, never decayed
            groups.append({"params": head_parameters, "lr": config.optim.lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups,
                                           betas=tuple(config.optim.betas), eps=config.optim.eps)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=[g["lr"] for g in self.optimizer.param_groups],
            total_steps=config.max_steps, pct_start=config.optim.pct_start)
        self.step = 0
        self.best = -math.inf
        if resume:
            self._resume()

    def _check_out_dir(self, resume: bool, overwrite: bool) -> bool:
        """Whether an earlier run in the output folder is to be replaced; refuses to mix two runs."""
        if resume and overwrite:
            raise ValueError("choose one of resume (continue the run) and overwrite (replace it)")
        earlier = [name for name in RUN_FILES if (self.out_dir / name).exists()]
        if earlier and not resume and not overwrite:
            raise ValueError(f"{self.out_dir} already holds a run ({', '.join(earlier)}); continue it with --resume, "
                             "replace it with --overwrite or choose another --out_dir")
        return bool(earlier) and overwrite

    def _validation_split(self):
        if not self.config.data.val_split or self.config.eval_every <= 0:
            return None
        data = self.config.data
        return self.dataset.read_validation(self.dataset, Path(data.root), data.val_split, self.dataset_options,
                                            data.val_max_queries)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=torch.device(self.config.device).type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> dict[str, float]:
        indices = self.sampler.next_batch()
        triplets = [self.train_split.triplets[i] for i in indices]
        captions = [t.training_caption(self.caption_rng) for t in triplets]
        extra_negatives = self.extras.extra_negatives(triplets, self.caption_rng)
        extra = {}
        with self._autocast():
            reference, target, negatives = self.batch_features(triplets, extra_negatives)
            descriptions = (self.model.tokenize_descriptions([self.train_split.image_captions[t.target]
                                                              for t in triplets]) if self.describe_targets else None)
            out = self.model(reference, captions, target, negatives=negatives, descriptions=descriptions)
            loss = out.loss
            if out.description is not None:
                extra["description"] = float(out.description.detach())
            for name, weight, term in self.extras.auxiliary_losses(reference, target, triplets):
                loss = loss + weight * term
                extra[name] = float(term.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.config.optim.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"loss": float(loss.detach()), "itc": float(out.itc.detach()), "rtc": float(out.rtc.detach()),
                "align": float(out.align.detach()), **extra, "temp": float(self.model.temp.detach()),
                "lr": self.scheduler.get_last_lr()[0]}

    def batch_features(self, triplets: list[Triplet], negatives: list[Image.Image] = ()
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Vision features of the batch's references, targets and extra negative images (None without any).

        A batch holds each reference `edits_per_reference` times; the vision encoder has no
        dropout, so each distinct image is encoded once and its features are repeated, which
        gives the same values and gradients for a quarter of the reference images' cost.
        """
        references = [t.reference for t in triplets]
        distinct = list(dict.fromkeys(references))
        parts = [self.images.batch(distinct), self.images.batch([t.target for t in triplets])]
        if negatives:
            parts.append(self.images.batch([], list(negatives)))
        features = self.model.vision_features(torch.cat(parts).to(self.config.device))
        position = {image_id: row for row, image_id in enumerate(distinct)}
        reference = features[torch.tensor([position[i] for i in references], device=features.device)]
        end = len(distinct) + len(triplets)
        negatives = features[end:] if len(parts) == 3 else None
        return reference, features[len(distinct):end], negatives

    def run(self) -> dict[str, float]:
        config = self.config
        if self._replace_run:
            for name in RUN_FILES:
                path = self.out_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            self._replace_run = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        start = time.monotonic()
        logger.info("training under %s autocast (precision %r) on %s with %d threads", self.precision,
                    config.precision, config.device, torch.get_num_threads())
        commit, dirty = code_version()
        # The run records where it came from: each (re)start adds such a line to metrics.jsonl.
        self._log({"step": self.step, "precision": self.precision, "threads": torch.get_num_threads(),
                   "device": describe_device(config.device), "code_commit": commit, "code_dirty": dirty,
                   "data_sha256": data_fingerprint(Path(config.data.root)), "torch": torch.__version__})
        last_metrics: dict[str, float] = {}
        bar = tqdm(total=config.max_steps, initial=self.step, desc="training", disable=not config.progress,
                   unit="step", dynamic_ncols=True)
        while self.step < config.max_steps:
            stats = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", itc=f"{stats['itc']:.3f}")
            if self.step % 25 == 0 or self.step == config.max_steps:
                self._log({"step": self.step, "elapsed_s": round(time.monotonic() - start, 1), **stats})
            if self.val_split is not None and (self.step % config.eval_every == 0 or self.step == config.max_steps):
                last_metrics = self.validate(elapsed=time.monotonic() - start)
            if self.step % config.checkpoint_every == 0 or self.step == config.max_steps:
                self.save_last()
        bar.close()
        if self.val_split is None:
            save_model(self.model, self.out_dir / "best", dtype=self._save_dtype())
        return last_metrics

    def validate(self, elapsed: float) -> dict[str, float]:
        self.model.eval()
        metrics = evaluate(self.config, self.model, self.val_split)
        self.model.train()
        name = self.config.best_metric or self.dataset.headline_metric
        value = metrics.get(name)
        if value is None:
            raise ValueError(f"best_metric {name!r} not among {sorted(metrics)}")
        improved = value > self.best
        if improved:
            self.best = value
            save_model(self.model, self.out_dir / "best", dtype=self._save_dtype())
        self._log({"step": self.step, "elapsed_s": round(elapsed, 1), "val": metrics, "best": self.best,
                   "improved": improved})
        logger.info("step %d: val %s = %.2f (best %.2f)", self.step, name, value, self.best)
        return metrics

    def _save_dtype(self):
        return {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.config.save_dtype]

    def _log(self, record: dict) -> None:
        with open(self.out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def save_last(self) -> None:
        folder = save_model(self.model, self.out_dir / "last")
        state = {"step": self.step, "best": self.best, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                 "sampler": self.sampler.state_dict(), "caption_rng": self.caption_rng.getstate(),
                 **self.extras.state_dict()}
        tmp = folder / (TRAINER_STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(folder / TRAINER_STATE_FILE)

    def _resume(self) -> None:
        folder = self.out_dir / "last"
        state_path = folder / TRAINER_STATE_FILE
        if not state_path.is_file():
            raise FileNotFoundError(f"cannot resume: {state_path} does not exist")
        state = read_trainer_state(state_path)
        resumed = load_model(folder)
        self.model.load_state_dict(resumed.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.sampler.load_state_dict(state["sampler"])
        self.caption_rng.setstate(state["caption_rng"])
        self.extras.load_state_dict(state)
        self.step, self.best = state["step"], state["best"]
        logger.info("resumed from %s at step %d", folder, self.step)


def read_trainer_state(path: Path) -> dict:
    """The resumable state of a run, read without running any code the file might carry.

    `weights_only=True` admits tensors and plain containers only; the states saved by
    `Trainer.save_last` are made of nothing else (Python RNG states are tuples of ints).
    """
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # a truncated zip, a pickle of other objects, random bytes, ...
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot resume: {path} is not a readable trainer state ({reason})") from None
    missing = [key for key in TRAINER_STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"cannot resume: {path} lacks {', '.join(missing)}")
    return state


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="cir train", description="Train SPRC with the one training loop.")
    add_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    return config_from_args(args, extra), args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config JSON (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in OUT_DIR (its checkpoints and metrics.jsonl)")


def config_from_args(args: argparse.Namespace, extra: list[str]) -> TrainConfig:
    overrides = {}
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"unrecognised argument {item!r}; overrides look like --optim.lr=1e-4")
        key, value = item[2:].split("=", 1)
        overrides[key] = value
    config = TrainConfig.from_file(args.config).with_overrides(overrides)
    config.validate()
    dataset_spec(config.data.kind).parse_options(config.data.options)  # before the model is built
    return config


def main(argv: list[str] | None = None) -> dict[str, float]:
    config, args = parse_args(argv)
    return Trainer(config, resume=args.resume, overwrite=args.overwrite).run()
