"""The embedded corpora: real English text available offline from Debian packages.

``embedded:python-docs`` (the default) is the Python 3.11 documentation (tutorial, library and language
reference, HOWTOs, FAQs, "What's New" essays) from Debian's ``python3.11-doc`` package, converted from
HTML to plain text. ``embedded:fortunes`` is general English outside that domain: the quotations, poems,
jokes and definitions of Debian's ``fortunes`` package, one document per fortune. Each is fetched with
``apt-get download`` (no model or dataset hub) and unpacked with ``dpkg-deb -x``. The result is cached as

    <cache_dir()>/corpora/python-docs/documents.jsonl   {"id": "<html path>", "text": ...} per line
    <cache_dir()>/corpora/python-docs/SOURCE.json       package, version, documents, characters

and the folder appears only once complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from minitron.data.html_text import html_to_text
from minitron.data.publish import building
from minitron.errors import MinitronError
from minitron.io import cache_dir, write_json_atomic

_FALLBACK_HINT = "pass data.source=<path to .txt/.jsonl/.json/.parquet or folder> instead"


@dataclass(frozen=True)
class DebianCorpus:
    package: str
    root: str                    # folder inside the package that holds the text
    format: Literal["html", "fortune"] = "html"  # html: a document per page; fortune: per `%`-ended entry
    skip: tuple[str, ...] = ()   # prefixes of relative paths to leave out
    min_chars: int = 200         # documents with less text are link lists or stubs


# What is left out of python3.11-doc and why:
#   genindex*, py-modindex, search: generated indexes, lists of names with no prose;
#   contents.html: the whole table of contents; _static/_sources/_images/_downloads: assets,
#   and the reST sources repeat the HTML text; whatsnew/changelog is only shipped gzipped
#   (changelog.html.gz, ~5 MB of issue numbers) and is therefore not an .html page.
EMBEDDED = {
    "python-docs": DebianCorpus(
        package="python3.11-doc",
        root="usr/share/doc/python3.11/html",
        skip=("genindex", "py-modindex.html", "search.html", "contents.html",
              "_static/", "_sources/", "_images/", "_downloads/"),
    ),
    # Left out of fortunes: the .dat indexes and .u8 links (not text), ascii-art (pictures) and translate-me
    # (not English). Fortunes are short (median ~60 tokens), so no length floor beyond a few words.
    "fortunes": DebianCorpus(
        package="fortunes",
        root="usr/share/games/fortunes",
        format="fortune",
        skip=("ascii-art", "translate-me"),
        min_chars=20,
    ),
}


def embedded_names() -> list[str]:
    return sorted(EMBEDDED)


def corpus_dir(name: str) -> Path:
    return cache_dir() / "corpora" / name


def embedded_corpus(name: str) -> Path:
    """Path of the corpus's documents.jsonl, building it on first use."""
    if name not in EMBEDDED:
        raise MinitronError(f"data.source=embedded:{name}: unknown embedded corpus; known: "
                            f"{', '.join('embedded:' + n for n in embedded_names())}")
    target = corpus_dir(name)
    if not (target / "SOURCE.json").is_file():
        build_corpus(name, target)
    return target / "documents.jsonl"


def build_corpus(name: str, target: Path) -> dict:
    """Download, unpack and convert the package; write the corpus folder atomically."""
    spec = EMBEDDED[name]
    work = cache_dir() / "downloads"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{spec.package}-", dir=work) as tmp:
        tmp = Path(tmp)
        deb = _apt_download(spec.package, tmp)
        package, version = _deb_fields(deb, "Package", "Version")
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], f"dpkg-deb -x {deb.name}")
        documents = list(_READERS[spec.format](tmp / "root" / spec.root, spec))
        if not documents:
            raise MinitronError(f"{deb.name}: no {spec.format} documents under {spec.root}; {_FALLBACK_HINT}")
        source = {"corpus": name, "package": package, "version": version, "deb": deb.name,
                  "documents": len(documents), "characters": sum(len(d["text"]) for d in documents),
                  "root": spec.root, "format": spec.format, "skipped": list(spec.skip), "min_chars": spec.min_chars}
        _write_corpus(target, documents, source)
    return source


def _apt_download(package: str, folder: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise MinitronError(f"the embedded corpus needs apt-get (Debian/Ubuntu) to download {package}; "
                            f"{_FALLBACK_HINT}")
    # apt drops privileges to the _apt user while downloading; let it write here.
    os.chmod(folder, 0o755)
    proc = _apt(["apt-get", "download", package], folder)
    if proc.returncode and "Unable to locate" in proc.stderr + proc.stdout:
        # No package lists yet (a fresh container): fetch them once and retry.
        _apt(["apt-get", "update", "-qq"], folder)
        proc = _apt(["apt-get", "download", package], folder)
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if proc.returncode or not debs:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise MinitronError(f"apt-get download {package} failed ({last}); {_FALLBACK_HINT}")
    return debs[0]


def _apt(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _deb_fields(deb: Path, *fields: str) -> list[str]:
    out = _run(["dpkg-deb", "-f", str(deb), *fields], f"dpkg-deb -f {deb.name}")
    values = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return [values.get(f, "unknown") for f in fields]


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MinitronError(f"{what} failed ({last}); {_FALLBACK_HINT}")
    return proc.stdout


def _html_documents(root: Path, spec: DebianCorpus):
    """{"id", "text"} for every kept page, in sorted path order (stable across builds)."""
    from tqdm import tqdm

    pages = sorted(p for p in root.rglob("*.html") if not _skipped(p.relative_to(root).as_posix(), spec))
    for page in tqdm(pages, desc=f"html -> text ({spec.package})", unit="page"):
        text = html_to_text(page.read_text(encoding="utf-8", errors="replace"))
        if len(text) >= spec.min_chars:
            yield {"id": page.relative_to(root).as_posix(), "text": text}


def _fortune_documents(root: Path, spec: DebianCorpus):
    """{"id": "<file>/<n>", "text"} for every entry of every fortune file (entries end at a line "%")."""
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix
                   and not _skipped(p.name, spec))
    for path in files:
        entries = re.split(r"^%\n", path.read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE)
        for n, entry in enumerate(entries):
            text = entry.strip("\n")
            if len(text.strip()) >= spec.min_chars:
                yield {"id": f"{path.name}/{n}", "text": text}


_READERS = {"html": _html_documents, "fortune": _fortune_documents}


def _skipped(rel: str, spec: DebianCorpus) -> bool:
    return rel.startswith(spec.skip)


def _write_corpus(target: Path, documents: list[dict], source: dict) -> None:
    with building(target, "SOURCE.json") as tmp:
        with open(tmp / "documents.jsonl", "w", encoding="utf-8") as f:
            for doc in documents:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        write_json_atomic(tmp / "SOURCE.json", source)


def corpus_source(name: str) -> dict:
    """SOURCE.json of a built embedded corpus."""
    return json.loads((corpus_dir(name) / "SOURCE.json").read_text())
