"""Tokenization throughput of `minitron data prepare` with 1..N worker processes (same output bytes for each).

Run: make bench-data-prepare   (or: .venv/bin/python benchmarks/bench_data_prepare.py [--workers 1 2 4])

The corpus is the embedded Python-docs corpus (~2.4M SmolLM2 tokens; --copies distinct copies of it) written out
as jsonl shards, tokenized
with SmolLM2's tokenizer into fresh folders, so nothing is cached between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, nargs="+", default=sorted({1, 2, os.cpu_count() or 1}))
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--copies", type=int, default=4, help="distinct copies of the corpus (a larger job)")
    args = p.parse_args()

    from minitron.data import DataConfig, prepare
    from minitron.data.prepare import split_documents
    from minitron.models import resolve_hf_source

    tokenizer = resolve_hf_source("embedded:smollm2-135m-instruct")
    texts = [f"{doc.text}\n(copy {k})" for k in range(args.copies) for doc, _ in split_documents(DataConfig())]
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores; {len(texts):,} documents")
    rows, digests = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        shards.mkdir()
        for i in range(args.shards):
            (shards / f"part-{i:05d}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                                for t in texts[i::args.shards]))
        for workers in args.workers:
            cfg = DataConfig(source=str(shards), workers=workers, cache_dir=str(Path(tmp) / "cache"))
            start = time.perf_counter()
            prepared = prepare(cfg, tokenizer, target=Path(tmp) / f"w{workers}")
            seconds = time.perf_counter() - start
            tokens = sum(prepared.tokens.values())
            digests.add((Path(tmp) / f"w{workers}" / "train.bin").read_bytes())
            rows.append((workers, seconds, len(texts) / seconds, tokens / seconds))
    base = rows[0][1]
    print("| workers | seconds | documents/s | tokens/s | speed-up |\n|---|---|---|---|---|")
    for workers, seconds, docs, toks in rows:
        print(f"| {workers} | {seconds:.1f} | {docs:,.0f} | {toks:,.0f} | {base / seconds:.2f}x |")
    print("identical output for every worker count:", len(digests) == 1)


if __name__ == "__main__":
    main()
