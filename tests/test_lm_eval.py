"""lm-evaluation-harness on exported HF checkpoints: offline tasks from held-out text, skips, bad input."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from minitron.errors import MinitronError
from minitron.evaluation.lm_eval_tasks import OFFLINE_TASKS, build_offline_tasks, heldout_documents, run_lm_eval

pytest.importorskip("lm_eval")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_offline_tasks_build_deterministically_from_test_split(tmp_path):
    a, b = build_offline_tasks(tmp_path / "a"), build_offline_tasks(tmp_path / "b")
    for name in OFFLINE_TASKS:
        for split in ("validation", "test"):
            assert _sha(a / f"{name}.{split}.jsonl") == _sha(b / f"{name}.{split}.jsonl"), (name, split)
    test_docs = {d.id: d.text for d in heldout_documents("test")}
    train_texts = [d.text for d in heldout_documents("train")]
    cloze, choice = _rows(a / "pydocs_cloze.test.jsonl"), _rows(a / "pydocs_choice.test.jsonl")
    assert len(cloze) == len(choice) == 300
    for item in cloze:  # the item's text is really in its held-out document, and in no training document
        passage = item["context"] + item["target"]
        assert passage in test_docs[item["doc_id"]]
        assert not any(passage in text for text in train_texts[:: 7])  # a sample: full scan is slow
    assert all(c["doc_id"] in test_docs and c["context"] in test_docs[c["doc_id"]] for c in choice)
    assert not set(test_docs) & {d.id for d in heldout_documents("train")}
    # exactly one ending continues the context; the answer position is spread over all four
    for c in choice[:50]:
        true = c["endings"][c["label"]]
        assert c["context"] + " " + true in test_docs[c["doc_id"]]
    assert {c["label"] for c in choice} == {0, 1, 2, 3}


def test_tiny_model_on_offline_tasks(tiny_hf):
    results = run_lm_eval(tiny_hf, ["pydocs_cloze", "pydocs_choice", "pydocs_wikitext"], limit=6, batch_size=4)
    cloze, choice = results["pydocs_cloze"]["metrics"], results["pydocs_choice"]["metrics"]
    assert results["pydocs_cloze"]["n_samples"] == results["pydocs_choice"]["n_samples"] == 6
    assert 0.0 <= cloze["acc"]["value"] <= 1.0
    # a random byte-level model: a word of ~8 bytes costs far more than 1 nat, but stays finite
    assert 1.0 < cloze["perplexity"]["value"] < math.inf
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= choice[metric]["value"] <= 1.0 and choice[metric]["stderr"] >= 0.0
    pages = results["pydocs_wikitext"]["metrics"]
    # a random model over 256 bytes sits near log2(256) = 8 bits per byte; bpb = log2(byte perplexity)
    assert 4.0 < pages["bits_per_byte"]["value"] < 12.0
    assert pages["bits_per_byte"]["value"] == pytest.approx(math.log2(pages["byte_perplexity"]["value"]))
    assert pages["word_perplexity"]["value"] > pages["byte_perplexity"]["value"] > 1.0


def test_unreachable_standard_task_is_skipped(tiny_hf, monkeypatch):
    # Offline mode stands in for "no hub" on machines that have one; lm-eval must not fabricate a number.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    result = run_lm_eval(tiny_hf, ["arc_challenge"], limit=2)
    assert set(result["arc_challenge"]) == {"skipped"}
    assert "allenai/ai2_arc" in result["arc_challenge"]["skipped"]


def test_bad_input(tiny_hf, tmp_path):
    with pytest.raises(MinitronError, match="no config.json"):
        run_lm_eval(tmp_path, ["pydocs_cloze"])
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((tiny_hf / "config.json").read_bytes())
    with pytest.raises(MinitronError, match="lm-eval could not load the model"):
        run_lm_eval(no_weights, ["pydocs_cloze"])
    with pytest.raises(MinitronError, match="unknown lm-eval task.*'pydocs_clozee'.*did you mean pydocs_cloze"):
        run_lm_eval(tiny_hf, ["pydocs_clozee"])
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "items.jsonl").write_text("")
    (tasks / "mine.yaml").write_text(f"task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                     f"    test: {tasks / 'items.jsonl'}\ntest_split: test\n"
                                     "output_type: loglikelihood\ndoc_to_text: '{{{{context}}}}'\n"
                                     "doc_to_target: '{{{{target}}}}'\n")
    with pytest.raises(MinitronError, match="items.jsonl is empty"):
        run_lm_eval(tiny_hf, ["mine"], include_path=tasks)


def _plain_loglikelihood(hf_dir, context: str, continuation: str) -> float:
    """Sum of log-softmax of the continuation tokens, with plain transformers (lm-eval's token split:
    encode context+continuation, the continuation is what follows the context's tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits[n_ctx - 1:-1], dim=-1)
    return logprobs.gather(1, torch.tensor(whole[n_ctx:])[:, None]).sum().item()


@pytest.mark.smollm2
def test_smollm2_beats_chance_and_matches_transformers(smollm2_hf):
    results = run_lm_eval(smollm2_hf, ["pydocs_choice", "pydocs_cloze"], limit=24, batch_size=8, samples=True)
    choice = results["pydocs_choice"]
    assert choice["n_samples"] == 24
    # chance is 0.25: P(>= 13 of 24 right by chance) = 0.002, so > 0.5 is clearly not luck
    assert choice["metrics"]["acc"]["value"] > 0.5, choice["metrics"]
    item = results["pydocs_cloze"]["samples"][0]
    (context, continuation), = item["arguments"]
    lm_eval_ll = item["resps"][0][0][0]
    assert continuation == item["doc"]["target"] and context == item["doc"]["context"]
    assert abs(lm_eval_ll - _plain_loglikelihood(smollm2_hf, context, continuation)) < 1e-4
