"""Checkpoint folders and model URIs.

A checkpoint is a folder holding `model.safetensors`, `config.json` (an SPRCConfig)
and the tokenizer files (`vocab.txt`, `tokenizer_config.json`), so loading needs
nothing else. Sources are URIs:

- `local-dir:PATH` (a bare existing path works too),
- `hf-hub:org/name[@revision]` (downloaded with huggingface_hub; offline, this fails at
  once with a clear message instead of retrying).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cir_core.atomic import staged_folder
from cir_core.config import SPRCConfig
from cir_core.model import SPRCModel
from cir_core.text import TOKENIZER_CONFIG_FILE, VOCAB_FILE, load_tokenizer, save_tokenizer

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_FILES = (WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE)


class CheckpointError(ValueError):
    """A model source that cannot be loaded; the message says why."""


def save_model(model: SPRCModel, path: str | Path, dtype: torch.dtype | None = None,
               extra_files: dict[str, str] | None = None) -> Path:
    """Write a checkpoint folder atomically (a crash never leaves a half-written folder).

    `dtype` (e.g. torch.float16) stores floating-point weights in that precision.
    `extra_files` maps file names to text written beside the weights (a model card).
    """
    path = Path(path)
    with staged_folder(path) as staging:
        state = {}
        for name, tensor in model.state_dict().items():
            tensor = tensor.detach().cpu()
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[name] = tensor.contiguous()
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "model": "sprc"})
        (staging / CONFIG_FILE).write_text(model.config.to_json())
        save_tokenizer(model.tokenizer, staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return path


def resolve_uri(uri: str) -> Path:
    """A model URI -> a local checkpoint folder (downloading from the hub if needed)."""
    if uri.startswith("local-dir:"):
        return Path(uri[len("local-dir:"):]).expanduser()
    if uri.startswith("hf-hub:"):
        return _download_from_hub(uri[len("hf-hub:"):])
    if "://" in uri or (":" in uri and not Path(uri).exists() and not Path(uri).drive):
        raise CheckpointError(f"unknown model source {uri!r}; use local-dir:PATH or hf-hub:org/name[@revision]")
    return Path(uri).expanduser()


def _download_from_hub(spec: str) -> Path:
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1:
        raise CheckpointError(f"hf-hub source must look like org/name[@revision], got {spec!r}")
    from huggingface_hub import snapshot_download

    patterns = [WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE, TOKENIZER_CONFIG_FILE, "*.md"]
    revision = revision or None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: try the network below (unless offline)
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CheckpointError(
            f"hf-hub:{spec} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it on a machine with internet access or use local-dir:PATH"
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, etag_timeout=5))
    except Exception as error:
        raise CheckpointError(f"cannot download hf-hub:{spec}: {type(error).__name__}: {error}") from error


def load_config(folder: str | Path) -> SPRCConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder: {CONFIG_FILE} is missing")
    try:
        config = SPRCConfig.from_json_file(path)
        config.validate()
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from error
    return config


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from error


def build_with_weights(config: SPRCConfig, state: dict[str, torch.Tensor], tokenizer, source: str) -> SPRCModel:
    """A fresh model with every parameter taken from `state`; refuses incomplete or mismatched weights."""
    model = SPRCModel(config, tokenizer=tokenizer)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:2]})")
    if problems:
        raise CheckpointError(f"weights in {source} do not fit config {config.name!r}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model


def load_model(uri: str | Path, device: str | torch.device = "cpu") -> SPRCModel:
    """Load a checkpoint folder from a URI; the model comes back in eval mode, fp32."""
    folder = resolve_uri(str(uri))
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist")
    config = load_config(folder)
    try:
        tokenizer = load_tokenizer(folder, expected_size=config.qformer.vocab_size)
    except (FileNotFoundError, ValueError) as error:
        raise CheckpointError(f"{folder}: tokenizer problem: {error}") from error
    state = read_weights(folder / WEIGHTS_FILE)
    model = build_with_weights(config, state, tokenizer, str(folder / WEIGHTS_FILE))
    model.source = str(uri)
    return model.to(device).eval()


def weights_fingerprint(model: SPRCModel) -> str:
    """A short hash of the weights (and config), to tie an index to the model that built it.

    A model whose weights were halved for a GPU (`cir_core.device.place_model`) answers with
    the fingerprint of its full-precision weights, taken before."""
    recorded = getattr(model, "source_fingerprint", None)
    if recorded is not None:
        return recorded
    digest = hashlib.sha256(json.dumps(model.config.fingerprint_dict(), indent=2).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
