"""How faithful the sentence prompt is: the captions nearest the composed query and the prompt.

For each test query, the gallery's descriptions are ranked by similarity to (a) the
composed query and (b) the sentence prompt alone (`SPRCModel.prompt_vectors`). The
measure is the share of queries whose target's description is among the 5 nearest,
and, for `remove` edits, how often the removed object is still named in the composed
query's nearest description (a prompt that keeps what the caption removes).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from cir_core.caption_bank import CaptionBank
from cir_core.data.triplets import TripletSplit

TOP = 5  # "among the nearest captions" means among these many


@dataclass
class PromptFaithfulness:
    """Percentages over the split's queries (`cir eval shapes --json` reports them under "prompt")."""

    queries: int  # queries measured
    composed_top5: float  # % whose target description is among the 5 captions nearest the composed query
    prompt_top5: float  # % whose target description is among the 5 captions nearest the prompt alone
    remove_queries: int  # queries of the remove edit
    removed_in_first: float  # % of those whose nearest caption (composed query) still names the removed object

    def to_dict(self) -> dict:
        return asdict(self)


def faithfulness_from_vectors(query_vectors: torch.Tensor, prompt_vectors: torch.Tensor, bank: CaptionBank,
                              target_ids: list[str], removed_phrases: list[list[str] | None]) -> PromptFaithfulness:
    """The measure from (Nq, D) composed-query and prompt vectors and a bank of described images.

    `removed_phrases[i]` lists the words naming each object query i removes (None: not a
    remove edit); an object "still appears" when its phrase is one of the nearest
    description's "; "-separated parts.
    """
    row_of = {image_id: row for row, image_id in enumerate(bank.image_ids)}
    missing = sorted({t for t in target_ids if t not in row_of})
    if missing:
        raise ValueError(f"{len(missing)} targets have no description in the caption bank (first: {missing[0]!r})")
    targets = torch.tensor([row_of[t] for t in target_ids])
    bank_vectors = torch.from_numpy(bank.vectors)
    shares = []
    for vectors in (query_vectors, prompt_vectors):
        top = (vectors.float() @ bank_vectors.T).topk(min(TOP, len(bank.texts)), dim=1).indices  # (Nq, TOP)
        shares.append(100.0 * float((top == targets[:, None]).any(dim=1).float().mean()) if len(targets) else 0.0)
    first = (query_vectors.float() @ bank_vectors.T).argmax(dim=1).tolist()
    removals = [(phrases, first[i]) for i, phrases in enumerate(removed_phrases) if phrases is not None]
    still = sum(any(phrase in bank.texts[row].split("; ") for phrase in phrases) for phrases, row in removals)
    return PromptFaithfulness(queries=len(target_ids), composed_top5=shares[0], prompt_top5=shares[1],
                              remove_queries=len(removals),
                              removed_in_first=100.0 * still / len(removals) if removals else 0.0)


def described_prompt_faithfulness(model, split: TripletSplit, descriptions: dict[str, str],
                                  removed_phrases: list[list[str] | None] | None = None, batch_size: int = 64,
                                  progress: bool = True) -> PromptFaithfulness:
    """The measure on a split whose gallery images are described (`descriptions`: id -> text)."""
    from cir_core.evaluation.features import _image_batches

    bank = CaptionBank.build(model, [descriptions[i] for i in split.gallery], split.gallery, key=split.name,
                             progress=progress)
    queries, prompts = [], []
    with torch.inference_mode():
        for start in tqdm(range(0, len(split.triplets), batch_size), desc=f"{split.name} prompts", unit="batch",
                          disable=not progress):
            batch = split.triplets[start:start + batch_size]
            pixels = next(iter(_image_batches(model, [split.path(t.reference) for t in batch], len(batch), 0)))
            encoding = model.encode_query(pixels, [t.caption for t in batch])
            queries.append(encoding.query.float().cpu())
            prompts.append(model.prompt_vectors(encoding.prompt).float().cpu())
    removed = removed_phrases if removed_phrases is not None else [None] * len(split.triplets)
    return faithfulness_from_vectors(torch.cat(queries), torch.cat(prompts), bank, [t.target for t in split.triplets],
                                     removed)


def shapes_prompt_faithfulness(model, split: TripletSplit, scenes: dict, batch_size: int = 64,
                               progress: bool = True) -> PromptFaithfulness:
    """The measure on a shapes split: its gallery's scene descriptions form the bank."""
    from cir_core.data.shapes_scene import describe_object, describe_scene

    removed = []
    for t in split.triplets:
        if t.edit != "remove":
            removed.append(None)
            continue
        kept = set(scenes[t.target].objects)
        removed.append([describe_object(o) for o in scenes[t.reference].objects if o not in kept])
    return described_prompt_faithfulness(model, split, {i: describe_scene(scenes[i]) for i in split.gallery}, removed,
                                         batch_size, progress)
