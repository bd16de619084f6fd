"""The model's Hugging Face tokenizer: loading it, fingerprinting it, checking it fits a model."""

from __future__ import annotations

import hashlib
from pathlib import Path

from minitron.errors import MinitronError

# Files that decide how text becomes ids (the chat template and model weights do not).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model")


def byte_level_tokenizer():
    """A real 256-token byte-level tokenizer (no merges): reads any text, needs no download. For
    random-weight models (tests, `benchmarks/bench_kd_step.py`), where no model's tokenizer exists."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=alphabet[2])


def load_tokenizer(tokenizer_dir: str | Path):
    from transformers import AutoTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise MinitronError(f"{tokenizer_dir}: tokenizer folder not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MinitronError(f"{tokenizer_dir}: cannot load a Hugging Face tokenizer ({first})") from None
    if tokenizer.eos_token_id is None:
        raise MinitronError(f"{tokenizer_dir}: tokenizer has no EOS token; documents need one to be "
                            "separated in packed samples")
    return tokenizer


def tokenizer_hash(tokenizer_dir: str | Path) -> str:
    """sha256 over the tokenizer's files, so a changed tokenizer never reuses old token ids."""
    tokenizer_dir = Path(tokenizer_dir)
    digest = hashlib.sha256()
    found = False
    for name in _TOKENIZER_FILES:
        path = tokenizer_dir / name
        if path.is_file():
            found = True
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    if not found:
        raise MinitronError(f"{tokenizer_dir}: no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...)")
    return digest.hexdigest()


def max_token_id(tokenizer) -> int:
    """Largest id the tokenizer can produce (vocabulary, added and special tokens)."""
    ids = list(tokenizer.get_vocab().values()) + list(tokenizer.all_special_ids)
    return max(ids)


def check_tokenizer_matches(tokenizer_dir: str | Path, vocab_size: int) -> None:
    """Raise MinitronError unless every id the tokenizer makes indexes the model's embedding."""
    tokenizer = load_tokenizer(tokenizer_dir)
    size, top = len(tokenizer), max_token_id(tokenizer)
    if size > vocab_size or top >= vocab_size:
        raise MinitronError(f"{tokenizer_dir}: tokenizer has {size} tokens (largest id {top}) but the model's "
                            f"vocab_size is {vocab_size}; use the model's own tokenizer")
