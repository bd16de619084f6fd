"""Text -> tokenized Megatron indexed datasets (.bin/.idx), one per split, cached by content.

Each distinct document (exact duplicates dropped) is tokenized with the model's HF tokenizer
(no BOS, EOS appended, as Megatron's ``preprocess_data --append-eod`` does) and written to
the split chosen by the sha256 of its text. The output folder

    <cache>/<source slug>-<key>/{train,validation,test}.{bin,idx}, summary.json

is named by a hash of everything that decides its content (source files with sizes and
mtimes, tokenizer files, split fractions, reader options, format version), so a second
``prepare`` with the same inputs reuses it, and any change builds a new one. It is written
beside its final name and renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from minitron.data.config import SPLITS, DataConfig
from minitron.data.corpus import corpus_source
from minitron.data.publish import building
from minitron.data.sources import (
    Document,
    iter_documents,
    parse_source,
    source_identity,
    source_slug,
    source_splits,
)
from minitron.data.tokenizer import load_tokenizer, max_token_id, tokenizer_hash
from minitron.errors import MinitronError
from minitron.io import cache_dir, write_json_atomic

FORMAT_VERSION = 2  # 2: whole wikitext articles, sources' own splits used as they are
SUMMARY = "summary.json"
_BATCH_DOCS = 64  # documents per tokenizer call: the fast tokenizer parallelizes within a batch


@dataclass
class PreparedData:
    """Prepared data: per split, one Megatron indexed dataset, or several with blend weights (`data.blend`)."""

    root: Path                    # the dataset folder; for a blend, the folder of its sample index cache
    tokenizer_dir: Path
    prefixes: dict[str, list[str]]  # split -> .bin/.idx path prefixes (one per blended dataset)
    tokens: dict[str, int]        # split -> tokens (EOS included), summed over the blend
    documents: dict[str, int]     # split -> documents
    info: dict = field(default_factory=dict)  # source, duplicates, tokenizer facts, build time
    weights: list[float] | None = None  # training blend weights (None: one dataset)

    def summary(self) -> dict:
        return {"root": str(self.root), "tokenizer_dir": str(self.tokenizer_dir),
                "splits": {s: {"documents": self.documents[s], "tokens": self.tokens[s],
                               "prefixes": self.prefixes[s]} for s in SPLITS},
                "weights": self.weights, **self.info}

    @classmethod
    def load(cls, root: str | Path, tokenizer_dir: str | Path | None = None) -> "PreparedData":
        root = Path(root)
        try:
            summary = json.loads((root / SUMMARY).read_text())
        except (OSError, json.JSONDecodeError):
            raise MinitronError(f"{root}: not a prepared dataset (no readable {SUMMARY})") from None
        splits = summary.pop("splits")
        summary.pop("root", None)
        stored_tokenizer = summary.pop("tokenizer_dir")
        return cls(root=root, tokenizer_dir=Path(tokenizer_dir or stored_tokenizer),
                   prefixes={s: [str(root / s)] for s in SPLITS},  # the folder may have moved
                   tokens={s: v["tokens"] for s, v in splits.items()},
                   documents={s: v["documents"] for s, v in splits.items()}, info=summary)


def prepare(data_cfg: DataConfig, tokenizer_dir: str | Path, target: str | Path | None = None) -> PreparedData:
    """Tokenize ``data_cfg.source`` into train/validation/test indexed datasets (cached), or load
    ``data_cfg.blend``. `target`: write there instead of the cache (`minitron data prepare --output`)."""
    tokenizer_dir = Path(tokenizer_dir)
    if data_cfg.blend:
        return load_blend(data_cfg, tokenizer_dir)
    target = Path(target) if target else prepared_dir(data_cfg, tokenizer_dir)
    if data_cfg.cache and (target / SUMMARY).is_file():
        return PreparedData.load(target, tokenizer_dir)
    with building(target, SUMMARY, replace=not data_cfg.cache) as tmp:
        _build(data_cfg, tokenizer_dir, tmp)
    return PreparedData.load(target, tokenizer_dir)


def load_blend(data_cfg: DataConfig, tokenizer_dir: Path) -> PreparedData:
    """``data.blend: [w1, dir1, ...]``: prepared folders sampled for training in proportion to the weights
    (Megatron's BlendedDataset); validation and test take every folder's held-out split as it is."""
    weights = [float(w) for w in data_cfg.blend[0::2]]
    # An embedded corpus is prepared (or found in the cache) as data.source would be, with this recipe's split.
    embedded = {p for p in data_cfg.blend[1::2] if p.startswith("embedded:")}
    missing = [p for p in data_cfg.blend[1::2] if p not in embedded and not (Path(p).expanduser() / SUMMARY).is_file()]
    if missing:
        raise MinitronError(f"data.blend: {', '.join(missing)}: not prepared datasets (no {SUMMARY}); write each "
                            "with `minitron data prepare --config <recipe> data.source=<its text> --output <dir>`")
    parts = [prepare(dataclasses.replace(data_cfg, source=path, blend=[]), tokenizer_dir) if path in embedded
             else PreparedData.load(Path(path).expanduser(), tokenizer_dir) for path in data_cfg.blend[1::2]]
    expected = tokenizer_hash(tokenizer_dir)
    for path, part in zip(data_cfg.blend[1::2], parts):
        if part.info.get("tokenizer_sha256") != expected:
            raise MinitronError(f"data.blend: {path} was tokenized with another tokenizer than {tokenizer_dir}; "
                                f"prepare it again: minitron data prepare --config <recipe> data.source=<its text> "
                                f"--output {path}")
    key = hashlib.sha256(json.dumps([weights, [str(p.root.resolve()) for p in parts]]).encode()).hexdigest()[:16]
    base = Path(data_cfg.cache_dir) if data_cfg.cache_dir else _default_cache()
    info = {**parts[0].info, "source": "blend", "blend": [[w, str(p.root)] for w, p in zip(weights, parts)]}
    return PreparedData(root=base / f"blend-{key}", tokenizer_dir=tokenizer_dir,
                        prefixes={s: [pre for p in parts for pre in p.prefixes[s]] for s in SPLITS},
                        tokens={s: sum(p.tokens[s] for p in parts) for s in SPLITS},
                        documents={s: sum(p.documents[s] for p in parts) for s in SPLITS},
                        info=info, weights=weights)


def prepared_dir(data_cfg: DataConfig, tokenizer_dir: Path) -> Path:
    """Where the prepared data for these inputs lives (named by the hash of the inputs)."""
    key = {"format": FORMAT_VERSION, "source": source_identity(data_cfg),
           "tokenizer": tokenizer_hash(tokenizer_dir), "split": [float(f) for f in data_cfg.split],
           "text_key": data_cfg.text_key, "txt_documents": data_cfg.txt_documents,
           "max_documents": data_cfg.max_documents}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(data_cfg.cache_dir) if data_cfg.cache_dir else _default_cache()
    return base / f"{source_slug(data_cfg.source)}-{digest}"


def _default_cache() -> Path:
    return cache_dir() / "data"


def split_of(text: str, bounds: list[tuple[str, float]]) -> str:
    """The split of a document: a uniform number from the sha256 of its text, cut at `bounds`."""
    return _split_of_digest(_digest(text), bounds)


def _split_of_digest(digest: bytes, bounds: list[tuple[str, float]]) -> str:
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return next((name for name, upper in bounds if u < upper), bounds[-1][0])


def _digest(text: str) -> bytes:
    # Surrounding whitespace does not make a document different.
    return hashlib.sha256(text.strip().encode("utf-8")).digest()


def split_bounds(data_cfg: DataConfig, provided: set[str] = frozenset()) -> list[tuple[str, float]]:
    """(split, cumulative upper bound) for `split_of`; splits with no share are left out.

    Held-out splits the source provides itself are not drawn by hash: training documents are spread
    only over train and the held-out splits the source lacks (fractions renormalized over those).
    """
    shares = {name: f for name, f in data_cfg.fractions().items()
              if f > 0 and (name == "train" or name not in provided)}
    total, upper, bounds = sum(shares.values()), 0.0, []
    for name, fraction in shares.items():
        upper += fraction / total
        bounds.append((name, upper))
    return bounds


def assign_split(doc_split: str | None, digest: bytes, bounds: list[tuple[str, float]],
                 provided: set[str]) -> str:
    """A held-out document of the source stays in its split; everything else is assigned by hash."""
    if doc_split in provided and doc_split != "train":
        return doc_split
    return _split_of_digest(digest, bounds)


def _build(data_cfg: DataConfig, tokenizer_dir: Path, out: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder, get_bin_path
    from tqdm import tqdm

    start = time.time()
    tokenizer = load_tokenizer(tokenizer_dir)
    top_id = max_token_id(tokenizer)
    # uint16 halves the files for vocabularies up to 65536 (SmolLM2); Llama 3.1 needs int32.
    dtype = np.uint16 if top_id < 2 ** 16 else np.int32
    builders = {s: IndexedDatasetBuilder(get_bin_path(str(out / s)), dtype=dtype) for s in SPLITS}
    stats = {s: {"documents": 0, "tokens": 0} for s in SPLITS}
    counts, provided = {"duplicates": 0}, source_splits(data_cfg)
    batches = _batches(split_documents(data_cfg, counts, provided))
    desc = f"tokenize {data_cfg.source}" + (f" ({data_cfg.workers} workers)" if data_cfg.workers > 1 else "")
    with tqdm(desc=desc, unit="doc", total=_document_count_hint(data_cfg)) as progress:
        for splits, documents in _tokenized(batches, tokenizer_dir, data_cfg.workers):
            for split, tokens in zip(splits, documents):  # in corpus order, whatever the worker count
                builders[split].add_document(tokens, [len(tokens)])
                stats[split]["documents"] += 1
                stats[split]["tokens"] += len(tokens)
            progress.update(len(splits))
    if not any(stats[s]["documents"] for s in SPLITS):
        raise MinitronError(f"data.source={data_cfg.source}: no documents (all empty)")
    for split, builder in builders.items():
        builder.finalize(str(out / f"{split}.idx"))
    _write_summary(out, data_cfg, tokenizer_dir, tokenizer, stats, counts["duplicates"], dtype,
                   time.time() - start, sorted(provided))


def split_documents(data_cfg: DataConfig, counts: dict | None = None,
                    provided: set[str] | None = None) -> Iterator[tuple[Document, str]]:
    """Every distinct document of the source with its split (exact duplicates dropped, counted in
    ``counts["duplicates"]``); `data.max_documents` stops after that many. The one rule for training
    data and for held-out evaluation text alike. `provided`: the source's own splits, when known already."""
    provided = source_splits(data_cfg) if provided is None else provided
    bounds, seen = split_bounds(data_cfg, provided), set()
    for doc in iter_documents(data_cfg):
        digest = _digest(doc.text)
        if digest in seen:
            if counts is not None:
                counts["duplicates"] += 1
            continue
        if data_cfg.max_documents is not None and len(seen) >= data_cfg.max_documents:
            return
        seen.add(digest)
        yield doc, assign_split(doc.split, digest, bounds, provided)


def _batches(documents: Iterator[tuple[Document, str]]) -> Iterator[tuple[list[str], list[str]]]:
    """(texts, splits) of _BATCH_DOCS documents at a time: one tokenizer call, one unit of work for a worker."""
    texts, splits = [], []
    for doc, split in documents:
        texts.append(doc.text)
        splits.append(split)
        if len(texts) == _BATCH_DOCS:
            yield texts, splits
            texts, splits = [], []
    if texts:
        yield texts, splits


_WORKER_TOKENIZER = None


def _init_worker(tokenizer_dir: str, one_thread: bool = False) -> None:
    global _WORKER_TOKENIZER
    if one_thread:  # N workers x N Rust threads each would oversubscribe the cores
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = load_tokenizer(tokenizer_dir)


def _tokenize(batch: tuple[list[str], list[str]]) -> tuple[list[str], list[np.ndarray]]:
    """Token ids of each document, EOS appended (Megatron's preprocess_data --append-eod)."""
    texts, splits = batch
    ids = _WORKER_TOKENIZER(texts, add_special_tokens=False)["input_ids"]
    eos = _WORKER_TOKENIZER.eos_token_id
    return splits, [np.asarray(doc + [eos], dtype=np.int64) for doc in ids]


def _tokenized(batches, tokenizer_dir: Path, workers: int):
    """Tokenized batches in input order: here, or on `workers` processes (spawned: forking a process that
    holds tokenizer threads can deadlock)."""
    if workers == 1:
        _init_worker(str(tokenizer_dir))
        yield from map(_tokenize, batches)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (str(tokenizer_dir), True)) as pool:
        yield from pool.imap(_tokenize, batches, chunksize=4)


def _document_count_hint(data_cfg: DataConfig) -> int | None:
    """Number of documents when cheaply known (embedded corpora), for the progress bar's ETA."""
    kind, name = parse_source(data_cfg.source)
    if kind != "embedded":
        return data_cfg.max_documents
    total = corpus_source(name)["documents"]
    return min(total, data_cfg.max_documents or total)


def _write_summary(out, data_cfg, tokenizer_dir, tokenizer, stats, duplicates, dtype, seconds, provided) -> None:
    summary = {"format": FORMAT_VERSION, "source": data_cfg.source, "tokenizer_dir": str(tokenizer_dir),
               "splits": {s: {**stats[s], "prefix": s} for s in SPLITS},  # relative: the folder is renamed
               "split_fractions": data_cfg.fractions(), "source_splits": provided,
               "duplicates_dropped": duplicates,
               "eos_token_id": tokenizer.eos_token_id, "tokenizer_size": len(tokenizer),
               "max_token_id": max_token_id(tokenizer), "token_dtype": np.dtype(dtype).name,
               "tokenizer_sha256": tokenizer_hash(tokenizer_dir), "build_seconds": round(seconds, 1)}
    write_json_atomic(out / SUMMARY, summary)

