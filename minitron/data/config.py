"""The ``data`` section of a recipe: which text, how it is split, how samples are cut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from minitron.config import doc

SPLITS = ("train", "validation", "test")


@dataclass
class DataConfig:
    source: str = doc("embedded:python-docs",
                      "text to train, calibrate and evaluate on: embedded:python-docs or embedded:fortunes "
                      "(docs/data.md), a .txt/.jsonl/.json/.parquet file or folder, or hf:<dataset>[:<config>]")
    text_key: str = doc("text", "field that holds the text in .jsonl/.json/.parquet rows")
    txt_documents: Literal["paragraphs", "file"] = doc(
        "paragraphs", ".txt files: 'paragraphs' makes every blank-line-separated block a document; "
                      "'file' makes the whole file one document")
    split: list[float] = doc([0.9, 0.05, 0.05],
                             "train/validation/test fractions; each document goes to one split by the "
                             "sha256 of its text (duplicates removed first), so no text is in two splits")
    seq_length: int = doc(1024, "tokens per packed sample (each sample holds seq_length+1 tokens: "
                                "inputs plus next-token labels)")
    seed: int = doc(1234, "seed for the order of training samples (validation/test order is fixed)")
    max_documents: Optional[int] = doc(None, "read only the first N distinct documents (quick runs); "
                                             "null reads all")
    cache: bool = doc(True, "reuse prepared (tokenized) data with the same source, tokenizer and split; "
                            "false rebuilds it")
    cache_dir: Optional[str] = doc(None, "folder for prepared data; null means $MINITRON_CACHE/data "
                                         "(default ~/.cache/minitron/data)")
    blend: list = doc([], "weighted blend of `minitron data prepare` folders or embedded corpora, as Megatron's "
                          "--data-path: [w1, dir1, w2, embedded:fortunes, ...]; replaces `source` when set (docs/data.md)")
    workers: int = doc(1, "tokenizer processes when preparing `source` (`minitron data prepare --workers N`); the "
                          "output is the same for any N")

    def check(self) -> list[str]:
        problems = []
        if not self.source.strip():
            problems.append("data.source must not be empty")
        if not self.text_key:
            problems.append("data.text_key must not be empty")
        if len(self.split) != len(SPLITS) or any(f < 0 for f in self.split) or self.split[0] <= 0:
            problems.append(f"data.split={self.split} must be 3 fractions [train, validation, test], "
                            "none negative, train > 0")
        if self.seq_length < 1:
            problems.append(f"data.seq_length={self.seq_length} must be >= 1")
        if self.workers < 1:
            problems.append(f"data.workers={self.workers} must be >= 1")
        problems += self._blend_problems()
        if self.max_documents is not None and self.max_documents < 1:
            problems.append(f"data.max_documents={self.max_documents} must be >= 1 or null")
        return problems

    def _blend_problems(self) -> list[str]:
        if not self.blend:
            return []
        weights, paths = self.blend[0::2], self.blend[1::2]
        if len(self.blend) % 2 or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
                                          for w in weights) or not all(isinstance(p, str) for p in paths):
            return [f"data.blend={self.blend} must alternate positive weights and folders: [0.7, /data/web, "
                    "0.3, /data/code]"]
        return []  # the folders are checked when read: a cluster's paths need not exist where jobs are submitted

    def fractions(self) -> dict[str, float]:
        """The split fractions, normalized to sum to 1."""
        total = sum(self.split)
        return {name: f / total for name, f in zip(SPLITS, self.split)}
