"""Data pipeline: sources, document-level splits, caching, packed samples, bad input.

Fast tests use the 256-token byte-level tokenizer (one token per UTF-8 byte, so decoded
samples can be compared with the source text exactly) and real English text from the
standard library's own documentation topics (``pydoc_data.topics``).
"""

import json
import os

import numpy as np
import pytest
import torch

from conftest import byte_tokenizer
from minitron.config import build
from minitron.data import (SPLITS, DataConfig, PreparedData, batches, check_tokenizer_matches, prepare,
                           samples)
from minitron.errors import MinitronError


def topic_texts(n=None):
    from pydoc_data.topics import topics

    distinct = dict.fromkeys(topics[k].strip() for k in sorted(topics))  # two topics share a text
    return list(distinct)[:n]


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("byte_tok")
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def eos(byte_tok):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(byte_tok).eos_token_id


def write_jsonl(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts))
    return path


def cfg(source, tmp_path, **kw):
    return DataConfig(source=str(source), cache_dir=str(tmp_path / "cache"), **kw)


def split_documents(prepared: PreparedData, tokenizer_dir) -> dict[str, list[str]]:
    """Decode every document back out of the .bin/.idx files."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = {}
    for split in SPLITS:
        ds = IndexedDataset(prepared.prefixes[split][0])
        docs = [ds[i] for i in range(len(ds))]
        assert all(d[-1] == tok.eos_token_id for d in docs)  # every document ends with EOS
        out[split] = [tok.decode(d[:-1].tolist()) for d in docs]
    return out


@pytest.fixture(scope="module")
def topics_prepared(tmp_path_factory, byte_tok):
    """78 distinct documents plus 5 exact duplicates (one with extra surrounding whitespace)."""
    tmp = tmp_path_factory.mktemp("topics")
    texts = topic_texts()
    source = write_jsonl(tmp / "docs.jsonl", texts + texts[:4] + ["\n  " + texts[10] + "  \n"])
    prepared = prepare(cfg(source, tmp, split=[0.6, 0.2, 0.2]), byte_tok)
    return prepared, texts


def test_splits_are_disjoint_and_cover_every_distinct_document(topics_prepared, byte_tok):
    prepared, texts = topics_prepared
    docs = split_documents(prepared, byte_tok)
    sets = {s: set(d) for s, d in docs.items()}
    assert all(len(sets[s]) == len(docs[s]) > 0 for s in SPLITS)  # no duplicates inside a split either
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    assert set().union(*sets.values()) == set(texts)
    assert prepared.summary()["duplicates_dropped"] == 5
    assert prepared.documents == {s: len(docs[s]) for s in SPLITS}
    # byte tokenizer: tokens = UTF-8 bytes + one EOS per document
    assert prepared.tokens == {s: sum(len(t.encode()) + 1 for t in docs[s]) for s in SPLITS}


def test_split_is_by_document_text_not_by_position(topics_prepared, byte_tok, tmp_path):
    prepared, texts = topics_prepared
    reversed_source = write_jsonl(tmp_path / "reversed.jsonl", texts[::-1])
    again = prepare(cfg(reversed_source, tmp_path, split=[0.6, 0.2, 0.2]), byte_tok)
    first, second = split_documents(prepared, byte_tok), split_documents(again, byte_tok)
    assert {s: set(d) for s, d in first.items()} == {s: set(d) for s, d in second.items()}


def test_samples_are_contiguous_text_with_labels_shifted_by_one(topics_prepared, byte_tok, eos):
    from transformers import AutoTokenizer

    prepared, texts = topics_prepared
    tok = AutoTokenizer.from_pretrained(byte_tok)
    rows = samples(prepared, "train", seq_length=128, num_samples=40, seed=7)
    assert len(rows) == 40
    for i in range(len(rows)):
        row = rows[i]
        assert row.dtype == torch.long and row.shape == (129,)
        item = rows.dataset[i]  # Megatron's own view of the same sample
        assert torch.equal(row[:-1], item["tokens"]) and torch.equal(row[1:], item["labels"])
        # Packed across documents: every piece between EOS tokens is a piece of one document.
        pieces = [tok.decode(p) for p in _split_on(row.tolist(), eos)]
        assert all(any(p in t for t in texts) for p in pieces if p)
    assert any(eos in rows[i].tolist() for i in range(len(rows)))  # some sample crosses a boundary


def _split_on(ids, sep):
    piece = []
    for t in ids:
        if t == sep:
            yield piece
            piece = []
        else:
            piece.append(t)
    yield piece


def test_batches_shape_and_order(topics_prepared):
    prepared, _ = topics_prepared
    rows = samples(prepared, "train", 64, num_samples=10, seed=3)
    got = list(batches(prepared, "train", 64, batch_size=4, num_samples=10, seed=3))
    assert [tuple(b.shape) for b in got] == [(4, 65), (4, 65), (2, 65)]
    assert torch.equal(torch.cat(got), torch.stack(list(rows)))
    dropped = list(batches(prepared, "train", 64, batch_size=4, num_samples=10, seed=3, drop_last=True))
    assert [tuple(b.shape) for b in dropped] == [(4, 65), (4, 65)]


def test_training_samples_deterministic_per_seed(topics_prepared):
    prepared, _ = topics_prepared
    a = torch.stack(list(samples(prepared, "train", 64, num_samples=30, seed=11)))
    b = torch.stack(list(samples(prepared, "train", 64, num_samples=30, seed=11)))
    c = torch.stack(list(samples(prepared, "train", 64, num_samples=30, seed=12)))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_more_training_samples_than_an_epoch_repeat_the_data(topics_prepared):
    prepared, _ = topics_prepared
    epoch = len(samples(prepared, "train", 256, seed=1))
    assert epoch == (prepared.tokens["train"] - 1) // 256
    longer = samples(prepared, "train", 256, num_samples=epoch * 2 + 5, seed=1)
    assert len(longer) == epoch * 2 + 5
    assert longer[-1].shape == (257,)


def test_validation_samples_fixed_whatever_the_seed(topics_prepared):
    prepared, _ = topics_prepared
    full = torch.stack(list(samples(prepared, "validation", 64, seed=1)))
    other_seed = torch.stack(list(samples(prepared, "validation", 64, seed=999)))
    first10 = torch.stack(list(samples(prepared, "validation", 64, num_samples=10, seed=5)))
    assert torch.equal(full, other_seed)
    assert torch.equal(first10, full[:10])
    assert len(full) == (prepared.tokens["validation"] - 1) // 64
    with pytest.raises(MinitronError, match="validation split has"):
        samples(prepared, "validation", 64, num_samples=len(full) + 1)


def test_cache_reused_and_invalidated(tmp_path, byte_tok):
    source = write_jsonl(tmp_path / "docs.jsonl", topic_texts(30))
    first = prepare(cfg(source, tmp_path), byte_tok)
    summary = first.root / "summary.json"
    stamp = summary.stat().st_mtime_ns
    again = prepare(cfg(source, tmp_path), byte_tok)
    assert again.root == first.root and summary.stat().st_mtime_ns == stamp  # not re-tokenized
    rebuilt = prepare(cfg(source, tmp_path, cache=False), byte_tok)
    assert rebuilt.root == first.root and summary.stat().st_mtime_ns != stamp
    assert rebuilt.tokens == first.tokens
    write_jsonl(source, topic_texts(31))  # the source changed: a new prepared folder
    changed = prepare(cfg(source, tmp_path), byte_tok)
    assert changed.root != first.root
    assert sum(changed.documents.values()) == 31
    other_split = prepare(cfg(source, tmp_path, split=[0.5, 0.25, 0.25]), byte_tok)
    assert other_split.root != changed.root
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary or replaced folders left behind


def test_txt_paragraphs_or_whole_file_and_folders(tmp_path, byte_tok):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("First paragraph.\n\nSecond paragraph.\n   \nThird.\n")
    write_jsonl(folder / "sub" / "b.jsonl", ["Fourth document.", "Fifth document."], key="body")
    (folder / "notes.md").write_text("ignored: not a data format")
    paragraphs = prepare(cfg(folder, tmp_path, text_key="body", split=[1, 0, 0]), byte_tok)
    assert paragraphs.documents == {"train": 5, "validation": 0, "test": 0}
    (folder / "sub" / "b.jsonl").unlink()
    whole = prepare(cfg(folder, tmp_path, txt_documents="file", split=[1, 0, 0]), byte_tok)
    assert whole.documents["train"] == 1
    with pytest.raises(MinitronError, match="validation split has 0 tokens"):
        samples(whole, "validation", 8)


def test_json_list_source(tmp_path, byte_tok):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"text": t} for t in topic_texts(6)]))
    prepared = prepare(cfg(path, tmp_path, split=[1, 0, 0]), byte_tok)
    assert prepared.documents["train"] == 6


def test_max_documents(tmp_path, byte_tok):
    source = write_jsonl(tmp_path / "docs.jsonl", topic_texts(20))
    prepared = prepare(cfg(source, tmp_path, max_documents=7), byte_tok)
    assert sum(prepared.documents.values()) == 7


@pytest.mark.parametrize("name,content,expected", [
    ("empty.txt", "  \n\n \n", "no documents"),
    ("empty.jsonl", "", "no documents"),
    ("data.csv", "text\nhello\n", "unknown data format '.csv'"),
    ("no_key.jsonl", '{"text": "fine"}\n{"content": "wrong key"}\n', ":2: no 'text' field"),
    ("broken.jsonl", '{"text": "fine"}\n{"text": \n', ":2: invalid JSON"),
    ("not_list.json", '{"text": "a single object"}', "must be a list of objects"),
    ("number.jsonl", '{"text": 42}\n', "must be a string"),
    ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "cannot read"),
])
def test_bad_sources_name_the_file(tmp_path, byte_tok, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(MinitronError, match=expected) as err:
        prepare(cfg(path, tmp_path), byte_tok)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing half-written


def test_missing_source_and_empty_folder(tmp_path, byte_tok):
    with pytest.raises(MinitronError, match="not found") as err:
        prepare(cfg(tmp_path / "nope.jsonl", tmp_path), byte_tok)
    assert "nope.jsonl" in str(err.value)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(MinitronError, match="folder has no") as err:
        prepare(cfg(tmp_path / "empty_dir", tmp_path), byte_tok)
    assert "empty_dir" in str(err.value)


def test_unknown_embedded_corpus(tmp_path, byte_tok):
    with pytest.raises(MinitronError, match="unknown embedded corpus.*embedded:python-docs"):
        prepare(DataConfig(source="embedded:nope", cache_dir=str(tmp_path)), byte_tok)


def test_embedded_corpus_without_apt_get_says_what_to_pass(tmp_path, monkeypatch):
    from minitron.data.corpus import embedded_corpus

    monkeypatch.setenv("MINITRON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without apt-get
    with pytest.raises(MinitronError, match=r"needs apt-get.*pass data.source=<path to \.txt"):
        embedded_corpus("python-docs")
    assert not (tmp_path / "cache" / "corpora" / "python-docs").exists()


def test_concurrent_builders_keep_one_complete_copy(tmp_path):
    from minitron.data.publish import building

    target = tmp_path / "prepared"
    with building(target, "done") as slow:
        (slow / "done").write_text("slow")
        with building(target, "done") as fast:  # e.g. another rank, finishing first
            (fast / "done").write_text("fast")
    assert (target / "done").read_text() == "fast"
    with building(target, "done", replace=True) as again:
        (again / "done").write_text("rebuilt")
    assert (target / "done").read_text() == "rebuilt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temporary folders left


def test_parquet_and_hf_need_datasets(tmp_path, byte_tok):
    try:
        import datasets  # noqa: F401
        pytest.skip("datasets is installed; this checks the message given without it")
    except ImportError:
        pass
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(MinitronError, match="needs the 'datasets' package") as err:
        prepare(cfg(path, tmp_path), byte_tok)
    assert str(path) in str(err.value)
    with pytest.raises(MinitronError, match="hf:Salesforce/wikitext"):
        prepare(DataConfig(source="hf:Salesforce/wikitext:wikitext-103-raw-v1", cache_dir=str(tmp_path)),
                byte_tok)


def test_tokenizer_mismatch_detected(byte_tok, tmp_path):
    check_tokenizer_matches(byte_tok, 256)
    check_tokenizer_matches(byte_tok, 512)  # a padded embedding is fine
    with pytest.raises(MinitronError, match="256 tokens.*vocab_size is 255") as err:
        check_tokenizer_matches(byte_tok, 255)
    assert str(byte_tok) in str(err.value)
    with pytest.raises(MinitronError, match="tokenizer folder not found"):
        check_tokenizer_matches(tmp_path / "missing", 256)


def test_data_config_checked_through_recipe_loader():
    ok = build(DataConfig, {"source": "x.jsonl", "split": [8, 1, 1], "max_documents": 5})
    assert ok.fractions() == {"train": 0.8, "validation": 0.1, "test": 0.1}
    with pytest.raises(MinitronError, match=r"unknown key 'sorce' \(did you mean 'source'\?\).*'lines'"):
        build(DataConfig, {"txt_documents": "lines", "sorce": "x"})
    with pytest.raises(MinitronError) as err:  # check() runs once the types are right
        build(DataConfig, {"split": [0.5, 0.5], "seq_length": 0, "max_documents": 0})
    for part in ("data.split=[0.5, 0.5]", "data.seq_length=0", "data.max_documents=0"):
        assert part in str(err.value)


def test_html_to_text_keeps_prose_and_code_drops_navigation():
    from minitron.data.html_text import html_to_text

    html = """<html><head><style>p {}</style><script>var x;</script></head><body>
    <div class="related" role="navigation"><a href="x">previous</a></div>
    <div class="body" role="main"><section><h1>Title<a class="headerlink" href="#t">¶</a></h1>
    <p>Some   <em>inline</em>
    text.</p><div class="highlight"><pre>def f():
        return 1
</pre></div><div class="toctree-wrapper"><ul><li>link list</li></ul></div>
    <table><tr><td><p>a</p></td><td><p>b</p></td></tr></table></section></div>
    <div class="footer">Copyright</div></body></html>"""
    assert html_to_text(html) == "Title\n\nSome inline text.\n\ndef f():\n        return 1\n\na | b"


@pytest.mark.smollm2
def test_embedded_corpus_with_smollm2(smollm2_hf):
    """Builds the default corpus (first run: apt-get download python3.11-doc, ~15 s) and tokenizes it."""
    from transformers import AutoTokenizer

    prepared = prepare(DataConfig(), smollm2_hf)
    info = prepared.summary()
    assert info["source"] == "embedded:python-docs" and info["token_dtype"] == "uint16"
    assert sum(prepared.tokens.values()) > 2_000_000
    assert prepared.tokens["validation"] > 50_000 and prepared.tokens["test"] > 50_000
    check_tokenizer_matches(smollm2_hf, 49152)
    rows = samples(prepared, "validation", 256, num_samples=4)
    text = AutoTokenizer.from_pretrained(smollm2_hf).decode(rows[0])
    assert len(text.split()) > 20 and np.mean([c.isascii() for c in text]) > 0.95
    assert os.path.isfile(prepared.prefixes["train"][0] + ".bin")


@pytest.mark.smollm2
def test_blend_of_embedded_corpora_with_smollm2(smollm2_hf):
    """data.blend takes embedded corpora by name (first run: apt-get download fortunes, a few seconds)."""
    blend = prepare(DataConfig(blend=[0.8, "embedded:python-docs", 0.2, "embedded:fortunes"]), smollm2_hf)
    docs = prepare(DataConfig(), smollm2_hf)
    fortunes = prepare(DataConfig(source="embedded:fortunes"), smollm2_hf)
    assert blend.weights == [0.8, 0.2] and fortunes.info["source"] == "embedded:fortunes"
    assert fortunes.documents["train"] > 5_000 and fortunes.tokens["test"] > 10_000
    assert blend.prefixes["test"] == docs.prefixes["test"] + fortunes.prefixes["test"]
    assert blend.tokens["train"] == docs.tokens["train"] + fortunes.tokens["train"]


def test_fortune_files_give_one_document_per_entry(tmp_path):
    """embedded:fortunes reads Debian's fortune files: entries end at a line `%`; indexes, links, skipped files and
    stubs are not documents."""
    from minitron.data.corpus import EMBEDDED, _fortune_documents

    root = tmp_path / "fortunes"
    root.mkdir()
    (root / "wisdom").write_text("A stitch in time\nsaves nine.\n%\nLook before you leap, twice.\n%\nHm.\n%\n")
    (root / "people").write_text("  He said: %d percent of it.\n   -- someone quoted at length\n")
    (root / "wisdom.dat").write_bytes(b"\x00\x02%\n")           # strfile's index
    (root / "wisdom.u8").symlink_to("wisdom")                       # the same text again
    (root / "ascii-art").write_text("   /\\_/\\  a picture of a cat, not prose\n%\n")
    docs = list(_fortune_documents(root, EMBEDDED["fortunes"]))
    assert [d["id"] for d in docs] == ["people/0", "wisdom/0", "wisdom/1"]
    assert docs[1]["text"] == "A stitch in time\nsaves nine." and docs[0]["text"].startswith("  He said: %d")


# ---- whole documents, sources' own splits ----------------------------------------------------------
def wikitext_rows(titles: list[str]) -> list[str]:
    """Rows as wikitext-103-raw has them: one line per row, headings ` = T = `, sections ` = = S = = `."""
    rows = []
    for t in titles:
        rows += ["", f" = {t} = \n", "", f" {t} is a subject with a long history . \n", "",
                 " = = History = = \n", "", f" The history of {t} began long ago . \n"]
    return rows


def test_wikitext_lines_become_whole_articles():
    from minitron.data.sources import wikitext_articles

    articles = list(wikitext_articles(wikitext_rows(["Apple", "Pear"])))
    assert len(articles) == 2
    assert articles[0].startswith("= Apple =") and "= = History = =" in articles[0]
    assert "The history of Apple began" in articles[0] and "Pear" not in articles[0]


def test_hf_dataset_splits_are_used_as_they_are(tmp_path, byte_tok):
    """A dataset with its own validation/test splits (here a local one, as datasets.load_dataset reads it
    offline; named wikitext so its lines are joined): held-out articles stay held out, whole."""
    pd = pytest.importorskip("pandas")
    root = tmp_path / "wikitext-tiny"
    root.mkdir()
    titles = {"train": [f"Train topic {i}" for i in range(30)], "validation": ["Valid topic A", "Valid topic B"],
              "test": ["Test topic C"]}
    for split, names in titles.items():
        pd.DataFrame({"text": wikitext_rows(names)}).to_parquet(root / f"{split}.parquet")
    prepared = prepare(cfg(f"hf:{root}", tmp_path), byte_tok)
    docs = split_documents(prepared, byte_tok)
    assert prepared.summary()["source_splits"] == ["test", "train", "validation"]
    assert sorted(d.splitlines()[0].strip() for d in docs["validation"]) == ["= Valid topic A =", "= Valid topic B ="]
    assert [d.splitlines()[0].strip() for d in docs["test"]] == ["= Test topic C ="]
    assert len(docs["train"]) == 30 and all(d.startswith("= Train topic") for d in docs["train"])


def test_folder_with_split_files_and_missing_validation(tmp_path, byte_tok):
    """train*/test* files: test stays test; validation (missing) is drawn from train only."""
    texts = topic_texts(60)
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "train-00000.jsonl", texts[:50])
    write_jsonl(folder / "test.jsonl", texts[50:])
    prepared = prepare(cfg(folder, tmp_path, split=[0.8, 0.2, 0.0]), byte_tok)
    docs = split_documents(prepared, byte_tok)
    assert set(docs["test"]) == set(texts[50:])
    assert docs["validation"] and set(docs["validation"]) <= set(texts[:50])
    assert set(docs["train"]) | set(docs["validation"]) == set(texts[:50])


def test_parallel_tokenizer_writes_the_same_dataset(tmp_path, byte_tok):
    """`data.workers=N` tokenizes on N processes; the indexed datasets are byte for byte the serial ones."""
    shards = tmp_path / "shards"
    shards.mkdir()
    texts = topic_texts()
    for i in range(3):  # jsonl shards, as a large corpus comes
        write_jsonl(shards / f"part-{i:05d}.jsonl", texts[i::3])
    serial = prepare(cfg(shards, tmp_path), byte_tok, target=tmp_path / "serial")
    parallel = prepare(cfg(shards, tmp_path, workers=2), byte_tok, target=tmp_path / "parallel")
    assert parallel.tokens == serial.tokens and serial.tokens["train"] > 100_000
    for split in SPLITS:
        for ext in (".bin", ".idx"):
            assert (tmp_path / "parallel" / (split + ext)).read_bytes() == (tmp_path / "serial" / (split + ext)).read_bytes()
    assert not (tmp_path / "cache").exists()  # --output folders, not the cache


def test_blend_samples_by_weight_and_keeps_every_held_out_split(tmp_path, byte_tok):
    """data.blend: [w1, dir1, w2, dir2] as Megatron's --data-path: training samples follow the weights."""
    a = prepare(cfg(write_jsonl(tmp_path / "a.jsonl", [f"aaaa {i} " * 40 for i in range(300)]), tmp_path),
                byte_tok, target=tmp_path / "a")
    b = prepare(cfg(write_jsonl(tmp_path / "b.jsonl", [f"bbbb {i} " * 40 for i in range(300)]), tmp_path),
                byte_tok, target=tmp_path / "b")
    blend = prepare(cfg("unused", tmp_path, blend=[0.75, str(tmp_path / "a"), 0.25, str(tmp_path / "b")]), byte_tok)
    assert blend.weights == [0.75, 0.25] and blend.tokens["train"] == a.tokens["train"] + b.tokens["train"]
    from transformers import AutoTokenizer

    a_id, b_id = AutoTokenizer.from_pretrained(byte_tok)("ab", add_special_tokens=False)["input_ids"]
    rows = samples(blend, "train", 64, num_samples=400)
    from_a = sum(int((row == a_id).sum() > (row == b_id).sum()) for row in rows)
    assert 0.7 < from_a / 400 < 0.8
    validation = samples(blend, "validation", 64)  # every dataset's held-out samples, whole
    assert len(validation) == len(samples(a, "validation", 64)) + len(samples(b, "validation", 64))
    with pytest.raises(MinitronError, match="must alternate positive weights and folders"):
        build(DataConfig, {"blend": [0.5, "x", 0.5]})
    with pytest.raises(MinitronError, match="not prepared datasets"):
        prepare(cfg("unused", tmp_path, blend=[1, str(tmp_path / "nowhere")]), byte_tok)


def test_data_prepare_command(tiny_hf, tmp_path):
    from conftest import run_minitron, write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import]", "[]")
    out = tmp_path / "prepared"
    result = run_minitron("data", "prepare", "--config", str(recipe), "--workers", "2", "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["splits"]["train"]["tokens"] > 0 and (out / "train.bin").is_file()
    bad = run_minitron("data", "prepare", "--config", str(recipe), "--workers", "0")
    assert bad.returncode == 2 and "--workers 0" in bad.stderr
