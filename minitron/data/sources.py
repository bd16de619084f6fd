"""Text sources: where documents come from, read one document at a time.

``data.source`` is one of

* ``embedded:<name>``: a corpus built from a Debian package (see ``corpus.py``);
* a file: ``.jsonl`` (one JSON object per line), ``.json`` (a list of objects), both with
  the text under ``data.text_key``; ``.txt`` (documents separated by blank lines, or the
  whole file as one document with ``data.txt_documents=file``); ``.parquet`` (read with the
  ``datasets`` library, when it is installed);
* a folder: every such file under it, recursively, in sorted order (other files ignored);
* ``hf:<dataset>[:<config>]``: a Hugging Face dataset through ``datasets.load_dataset``
  (needs the hub, or a local dataset folder); every split of it is read, one row per document,
  except wikitext, whose rows are lines: its lines are joined back into whole articles.

A document is a whole unit of text (an article, a page, a row), never a piece of one, so no
text can be split between training and held-out data. When the source has its own splits
(a dataset's ``validation``/``test``; a folder's ``train*``/``validation*``/``test*`` files or
subfolders) those are used as they are (`Document.split`) and never mixed into training.

Every problem names the file (and line) and says what to do.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from minitron.data.corpus import corpus_source, embedded_corpus
from minitron.errors import MinitronError

FILE_FORMATS = (".txt", ".jsonl", ".json", ".parquet")


#: Split names sources use -> ours.
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
# Held-out splits are read first, so a training document that duplicates one is the copy dropped.
_READ_ORDER = {"test": 0, "validation": 1}


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    split: str | None = None  # the source's own split ("train", "validation", "test"), None when it has none


def iter_documents(cfg) -> Iterator[Document]:
    """All documents of ``cfg.source`` (a DataConfig), in a stable order, held-out splits first."""
    kind, arg = parse_source(cfg.source)
    if kind == "embedded":
        yield from _read_jsonl(embedded_corpus(arg), "text", "")
    elif kind == "hf":
        yield from _read_hf(arg)
    else:
        files = local_files(Path(arg))
        for path, rel in sorted(files, key=lambda f: _READ_ORDER.get(split_of_path(f[1]), 2)):
            split = split_of_path(rel)
            for doc in _read_file(path, cfg, rel):
                yield Document(doc.id, doc.text, split)


def source_splits(cfg) -> set[str]:
    """The splits the source itself provides (empty when it has none: every document is assigned by hash)."""
    kind, arg = parse_source(cfg.source)
    if kind == "hf":
        return {SPLIT_NAMES[s] for s in _hf_dataset(arg) if s in SPLIT_NAMES}
    if kind == "path" and Path(arg).is_dir():
        return {split for _, rel in local_files(Path(arg)) if (split := split_of_path(rel))}
    return set()


def split_of_path(rel: str) -> str | None:
    """A folder source's file ``validation.jsonl``, ``test-00001.parquet`` or ``train/part1.txt`` -> its split."""
    if not rel:
        return None
    first = rel.rstrip(":").split("/")[0]
    return SPLIT_NAMES.get(re.split(r"[.\-_]", first, maxsplit=1)[0].lower())


def parse_source(source: str) -> tuple[str, str]:
    """("embedded", name) | ("hf", dataset[:config]) | ("path", path)."""
    if source.startswith("embedded:"):
        return "embedded", source.split(":", 1)[1]
    if source.startswith("hf:"):
        return "hf", source.split(":", 1)[1]
    return "path", source


def local_files(path: Path) -> list[tuple[Path, str]]:
    """(file, id prefix) pairs of a file or folder source; ids are relative to the folder."""
    if path.is_file():
        _check_format(path)
        return [(path, "")]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_FORMATS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise MinitronError(f"{path}: folder has no {'/'.join(FILE_FORMATS)} files; "
                                "pass data.source=<file or folder of such files>")
        return [(p, p.relative_to(path).as_posix() + ":") for p in files]
    raise MinitronError(f"{path}: data.source not found (no such file or folder); pass "
                        "embedded:python-docs, hf:<dataset>, or a .txt/.jsonl/.json/.parquet file or folder")


def _check_format(path: Path) -> None:
    if path.suffix.lower() not in FILE_FORMATS:
        raise MinitronError(f"{path}: unknown data format {path.suffix or '(no extension)'!r}; "
                            f"use one of {', '.join(FILE_FORMATS)}")


def _read_file(path: Path, cfg, prefix: str) -> Iterator[Document]:
    """Documents of one local file; an empty or unreadable file is an error naming it."""
    suffix = path.suffix.lower()
    readers = {".txt": lambda: _read_txt(path, cfg.txt_documents, prefix),
               ".jsonl": lambda: _read_jsonl(path, cfg.text_key, prefix),
               ".json": lambda: _read_json(path, cfg.text_key, prefix),
               ".parquet": lambda: _read_parquet(path, cfg.text_key, prefix)}
    count = 0
    try:
        for doc in readers[suffix]():
            count += 1
            yield doc
    except (UnicodeDecodeError, OSError) as e:
        raise MinitronError(f"{path}: cannot read ({type(e).__name__}: {e}); "
                            "files must be UTF-8 text") from None
    if count == 0:
        raise MinitronError(f"{path}: no documents (empty file or only blank text)")


def _read_txt(path: Path, unit: str, prefix: str) -> Iterator[Document]:
    text = path.read_text(encoding="utf-8")
    # Paragraph mode: blank lines (possibly holding spaces) separate documents.
    blocks = [text] if unit == "file" else re.split(r"\n[ \t]*\n", text)
    for i, block in enumerate(blocks):
        if block.strip():
            yield Document(f"{prefix}{path.name}#{i}", block.strip())


def _read_jsonl(path: Path, text_key: str, prefix: str) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MinitronError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            doc = _row_document(row, text_key, f"{path}:{lineno}", f"{prefix}{lineno}")
            if doc:
                yield doc


def _read_json(path: Path, text_key: str, prefix: str) -> Iterator[Document]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MinitronError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(rows, list):
        raise MinitronError(f"{path}: a .json source must be a list of objects with a {text_key!r} field "
                            "(or use .jsonl, one object per line)")
    for i, row in enumerate(rows):
        doc = _row_document(row, text_key, f"{path}[{i}]", f"{prefix}{i}")
        if doc:
            yield doc


def _read_parquet(path: Path, text_key: str, prefix: str) -> Iterator[Document]:
    dataset = _load_dataset("parquet", data_files=str(path), split="train", what=str(path))
    if text_key not in dataset.column_names:
        raise MinitronError(f"{path}: no column {text_key!r} (columns: {dataset.column_names}); "
                            "set data.text_key")
    for i, text in enumerate(dataset[text_key]):
        if isinstance(text, str) and text.strip():
            yield Document(f"{prefix}{i}", text)


def _row_document(row, text_key: str, where: str, doc_id: str) -> Document | None:
    if not isinstance(row, dict) or text_key not in row:
        keys = list(row) if isinstance(row, dict) else type(row).__name__
        raise MinitronError(f"{where}: no {text_key!r} field (found {keys}); set data.text_key "
                            "to the field that holds the text")
    text = row[text_key]
    if not isinstance(text, str):
        raise MinitronError(f"{where}: field {text_key!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        return None
    return Document(str(row.get("id", doc_id)), text)


@functools.lru_cache(maxsize=2)  # splits, then documents: one load_dataset per source and process
def _hf_dataset(spec: str) -> dict:
    name, _, config = spec.partition(":")
    dataset = _load_dataset(name, config or None, what=f"hf:{spec}")
    return dataset if hasattr(dataset, "keys") else {"train": dataset}


def _hf_splits(splits: dict) -> list[str]:
    """A dataset's split names, held-out ones first."""
    return sorted(splits, key=lambda s: (_READ_ORDER.get(SPLIT_NAMES.get(s), 2), s))


def _read_hf(spec: str) -> Iterator[Document]:
    splits = _hf_dataset(spec)
    wikitext = "wikitext" in spec.lower()
    for split in _hf_splits(splits):
        column = "text" if "text" in splits[split].column_names else None
        if column is None:
            raise MinitronError(f"hf:{spec}: split {split!r} has no 'text' column "
                                f"(columns: {splits[split].column_names})")
        texts = wikitext_articles(splits[split][column]) if wikitext else splits[split][column]
        for i, text in enumerate(texts):
            if isinstance(text, str) and text.strip():
                yield Document(f"{split}/{i}", text, SPLIT_NAMES.get(split))


_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(lines) -> Iterator[str]:
    """Wikitext's rows are lines (headings, paragraphs, blanks); an article starts at a top-level
    heading `` = Title = `` (sections are `` = = Section = = ``). Yields each article whole."""
    article: list[str] = []
    for line in lines:
        if _WIKITEXT_TITLE.match(line.rstrip("\n")) and any(x.strip() for x in article):
            yield "".join(article).strip()
            article = []
        article.append(line)
    if any(x.strip() for x in article):
        yield "".join(article).strip()


def _load_dataset(*args, what: str, **kwargs):
    try:
        import datasets
    except ImportError:
        raise MinitronError(f"{what}: reading it needs the 'datasets' package (pip install datasets); "
                            "or convert it to .jsonl") from None
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as e:  # hub unreachable, unknown name, bad file: all end the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MinitronError(f"{what}: datasets.load_dataset failed ({first})") from None


def source_identity(cfg) -> dict:
    """What the prepared data depends on, for the cache key: names, sizes, mtimes, versions."""
    kind, arg = parse_source(cfg.source)
    if kind == "embedded":
        path = embedded_corpus(arg)
        return {"embedded": arg, "source": corpus_source(arg), "file": _stat(path)}
    if kind == "hf":
        return {"hf": arg}
    return {"files": [[rel or p.name, *_stat(p)] for p, rel in local_files(Path(arg))],
            "root": str(Path(arg).resolve())}


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def source_slug(source: str) -> str:
    """A short readable folder-name part for a source: 'python-docs', 'mydata', 'wikitext'."""
    kind, arg = parse_source(source)
    name = arg if kind != "path" else Path(arg).stem or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.split(":")[0]).strip("-")[-40:] or "data"
