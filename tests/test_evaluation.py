"""Evaluation: the perplexity method against plain transformers, throughput, the eval/report stages."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import write_corpus, write_tiny_recipe
from minitron.errors import MinitronError
from minitron.run_folder import RunFolder
from minitron.evaluation.perplexity import file_tokens, load_causal_lm, perplexity, sliding_windows


@pytest.mark.parametrize("n,window,stride", [(2, 2, 1), (10, 4, 4), (11, 4, 4), (100, 16, 8), (100, 16, 5),
                                             (17, 32, 16), (50, 8, 1)])
def test_windows_score_every_token_once(n, window, stride):
    scored = []
    for w in sliding_windows(n, window, stride):
        assert w.end - w.begin - 1 <= window and 1 <= w.scored <= min(stride, w.end - w.begin - 1)
        scored += range(w.end - w.scored, w.end)
        if w.begin > 0:  # every scored token sees at least window - stride + 1 tokens of context
            assert w.end - w.scored - w.begin >= window - stride + 1
    assert scored == list(range(1, n))  # each of tokens 1..n-1 once, in order; token 0 has no context


def test_windows_reject_bad_settings():
    for args in [(10, 0, 1), (10, 4, 5), (10, 4, 0), (1, 4, 2)]:
        with pytest.raises(MinitronError):
            sliding_windows(*args)


def plain_transformers_perplexity(model, ids: torch.Tensor, window: int, stride: int) -> float:
    """transformers' own loss, one chunk of `stride` targets at a time: labels=-100 on the context."""
    nll, count = 0.0, 0
    for first in range(1, len(ids), stride):
        last = min(first + stride, len(ids))
        inputs = ids[max(0, last - 1 - window):last].unsqueeze(0)
        labels = inputs.clone()
        labels[:, :-(last - first)] = -100
        with torch.no_grad():
            loss = model(input_ids=inputs, labels=labels).loss  # mean over the (shifted) unmasked labels
        nll, count = nll + loss.item() * (last - first), count + (last - first)
    return math.exp(nll / count)


@pytest.mark.parametrize("window,stride", [(32, 32), (32, 8), (48, 20)])
def test_perplexity_matches_plain_transformers_on_tiny_model(tiny_hf, window, stride):
    model = load_causal_lm(tiny_hf)
    ids = torch.randint(0, 256, (301,), generator=torch.Generator().manual_seed(3))
    ours = perplexity(model, ids, window, stride, batch_size=3, progress=False)
    ref = plain_transformers_perplexity(model, ids, window, stride)
    assert ours.scored_tokens == 300
    assert ours.perplexity == pytest.approx(ref, rel=1e-5)


@pytest.mark.smollm2
def test_perplexity_matches_plain_transformers_on_smollm2(smollm2_hf, tmp_path):
    import argparse
    import json as json_module

    text = tmp_path / "text.txt"  # real English prose that ships with Python: two module docstrings
    text.write_text(argparse.__doc__ + "\n\n" + json_module.__doc__)
    ids = file_tokens(text, smollm2_hf)
    model = load_causal_lm(smollm2_hf)
    ours = perplexity(model, ids, 64, 32, batch_size=4, progress=False)
    ref = plain_transformers_perplexity(model, ids, 64, 32)
    assert abs(ours.perplexity / ref - 1) <= 0.005  # the bound; in practice ~1e-6
    assert 1 < ours.perplexity < 1000


def test_file_tokens_appends_eos_per_document(tiny_hf, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "ab c"}) + "\n" + json.dumps({"text": "xyz"}) + "\n")
    ids = file_tokens(path, tiny_hf).tolist()
    eos = tok.eos_token_id
    assert ids == tok("ab c")["input_ids"] + [eos] + tok("xyz")["input_ids"] + [eos]
    assert file_tokens(path, tiny_hf, max_tokens=3).tolist() == ids[:3]


@pytest.mark.parametrize("name,content,match", [("empty.txt", "", "no documents"),
                                                 ("blank.txt", "\n\n  \n", "no documents"),
                                                 ("data.csv", "a,b\n", "unknown data format")])
def test_bad_evaluation_files(tiny_hf, tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(MinitronError, match=match):
        file_tokens(tmp_path / name, tiny_hf)
    with pytest.raises(MinitronError, match="not found"):
        file_tokens(tmp_path / "missing.txt", tiny_hf)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(MinitronError, match="not a model folder"):
        load_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MinitronError, match="cannot load the model"):
        load_causal_lm(tmp_path)


def test_throughput_measures_every_model_and_speedups(tiny_hf, tmp_path):
    from conftest import write_tiny_llama
    from minitron.evaluation import throughput as tp
    from minitron.evaluation.config import ThroughputSection

    small = write_tiny_llama(tmp_path / "small", num_hidden_layers=2)
    models = {"teacher": load_causal_lm(tiny_hf), "small": load_causal_lm(small)}
    cfg = ThroughputSection(batch_sizes=[1, 2], prompt_tokens=16, new_tokens=4, repeats=1, dtype="float32")
    ids = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(0))
    res = tp.with_speedups(tp.measure(models, ids, cfg, progress=False), "teacher")
    assert [r["batch_size"] for r in res["teacher"]["by_batch_size"]] == [1, 2]
    for r in res["teacher"]["by_batch_size"]:
        assert r["decode_speedup"] == 1.0 and r["prefill_speedup"] == 1.0
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["latency_s"] > 0
    # Half the layers: the analytic FLOPs shrink by the layers' share (the LM head stays).
    t, s = res["teacher"]["flops_per_token"], res["small"]["flops_per_token"]
    c = models["teacher"].config
    head = 2 * c.hidden_size * c.vocab_size
    assert (s - head) * 2 == pytest.approx(t - head)
    assert res["small"]["ideal_flops_ratio"] == pytest.approx(t / s, rel=1e-3)
    assert res["small"]["memory"]["kv_cache_mib"] * 2 == pytest.approx(res["teacher"]["memory"]["kv_cache_mib"],
                                                                       abs=0.011)
    with pytest.raises(MinitronError, match="held-out tokens"):
        tp.prompts(ids, 8, 16)


def test_flops_per_token_counts_llama_matmuls(tiny_hf):
    from minitron.evaluation.throughput import flops_per_token

    model = load_causal_lm(tiny_hf)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    c = model.config
    assert flops_per_token(c, 0) == 2 * linear  # untied: lm_head is one of the Linear layers
    assert flops_per_token(c, 10) - flops_per_token(c, 0) == 4 * c.num_hidden_layers * c.num_attention_heads \
        * c.head_dim * 10


def test_lm_eval_models_are_name_patterns_of_the_run(tiny_hf, tmp_path):
    """eval.lm_eval.models picks the models the tasks run on by fnmatch pattern; a pattern that matches none of
    the recipe's models is a one-line error naming them."""
    from minitron.recipe import load_recipe
    from minitron.stages.eval import _runs_lm_eval, run_models

    assert _runs_lm_eval([], "depth-pruned") and _runs_lm_eval(["teacher*", "*-distilled*"], "teacher-corrected")
    assert _runs_lm_eval(["*-distilled*"], "width-distilled@uncorrected")
    assert not _runs_lm_eval(["teacher*", "*-distilled*"], "width-repaired")
    path = write_tiny_recipe(tmp_path, tiny_hf, "[import, prune, eval]", "[{name: depth, num_layers: 2}]",
                             "eval: {lm_eval: {models: [teacher, widht-distilled]}}\n")
    with pytest.raises(MinitronError, match=r"eval.lm_eval.models: \['widht-distilled'\] match none of this "
                                            r"recipe's models \['teacher', 'teacher-corrected', 'depth-pruned'"):
        run_models(RunFolder(load_recipe(path, [f"output_root={tmp_path / 'runs'}"])))


def test_eval_and_report_stages_on_tiny_run(tiny_hf, tmp_path):
    """import -> prune -> eval -> report on a tiny model: the table has every model; reruns reuse measurements."""
    from minitron import pipeline
    from minitron.recipe import load_recipe

    # fp32 on a CPU: cpu_budget never shrinks the held-out perplexity tokens (same text on every machine)
    extra = ("eval:\n  skip: [lm_eval]\n  dtype: float32\n"
             "  perplexity: {max_tokens: 600, batch_size: 2}\n"
             "  throughput: {batch_sizes: [1, 2], prompt_tokens: 16, new_tokens: 4, repeats: 1, dtype: float32}\n"
             "cpu_budget: {reason: the test's, lm_eval_limit: 5}\n")
    path = write_tiny_recipe(tmp_path, tiny_hf, "[import, prune, eval, report]",
                             "[{name: depth, num_layers: 2}]", extra)
    recipe = load_recipe(path, [f"output_root={tmp_path / 'runs'}"])
    results = pipeline.run(recipe)
    models = results["eval"]["models"]
    assert list(models) == ["teacher", "depth-pruned", "depth-repaired"]  # Model Optimizer's slice, then repaired
    assert models["depth-pruned"]["layers"] == models["depth-repaired"]["layers"] == 2
    assert models["teacher"]["layers"] == 4
    assert models["depth-repaired"]["hf"] != models["depth-pruned"]["hf"]
    for r in models.values():
        assert r["perplexity"]["scored_tokens"] == 599 and r["perplexity"]["perplexity"] > 1
    # The pruned student is scored on the same tokens with the same method as a fresh computation.
    from minitron.evaluation.perplexity import split_tokens

    tokens = split_tokens(recipe.data, tiny_hf, "test", 600)
    fresh = perplexity(load_causal_lm(models["depth-pruned"]["hf"]), tokens, 32, None, 2, progress=False)
    assert fresh.perplexity == pytest.approx(models["depth-pruned"]["perplexity"]["perplexity"], rel=1e-6)

    folder = RunFolder(recipe)
    report_dir = folder.stage_dir("report")
    text = (report_dir / "report.md").read_text()
    assert "| **teacher** |" in text and "| **depth-pruned** |" in text and "| **depth-repaired** |" in text
    assert "## Recovery" in text and "| **depth** |" in text  # pruned -> repaired (no distill stage here)
    from minitron.runtime import cpu_runtime

    runtime = cpu_runtime.active()  # eval ran in this process: its OpenMP runtime and allocator
    assert f"threads, OpenMP {runtime['openmp']}, {runtime['allocator']}, GPU" in text
    assert "Smaller measurements" not in text  # lm-eval is skipped, perplexity is never shrunk: no note
    for png in ("layer_importance.png", "params_quality_speed.png", "width_vs_depth.png"):
        assert (report_dir / png).stat().st_size > 1000, png
    work = sorted(p.name for p in folder.work_dir("eval").iterdir())
    mtimes = {p: (folder.work_dir("eval") / p).stat().st_mtime for p in work}

    again = pipeline.run(recipe)  # refresh: same measurements from the cache, report rewritten
    assert again["eval"]["models"] == models
    assert {p: (folder.work_dir("eval") / p).stat().st_mtime for p in work} == mtimes
    assert not list(folder.root.glob(".*previous*"))

    from conftest import run_minitron

    proc = run_minitron("report", "--config", str(path), "--output", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| **depth-pruned** |" in proc.stdout and "report.md" in proc.stdout


def test_eval_rejects_unknown_model_names(tiny_hf, tmp_path):
    from minitron import config
    from minitron.recipe import Recipe
    from minitron.stages.eval import run_models

    write_corpus(tmp_path / "c.txt")
    path = write_tiny_recipe(tmp_path, tiny_hf, "[import, eval]", "[]", "eval: {models: [student-x]}\n")
    recipe = config.load(Recipe, path, [f"output_root={tmp_path / 'runs'}"])
    with pytest.raises(MinitronError, match="unknown model"):
        run_models(RunFolder(recipe))
    recipe.eval.models = []
    with pytest.raises(MinitronError, match="no model yet"):
        run_models(RunFolder(recipe))
    recipe.eval.extra_models = ["fp8=/nonexistent"]
    with pytest.raises(MinitronError, match="NAME=HF_DIR"):
        run_models(RunFolder(recipe))


def test_gap_closed_is_the_share_of_the_log_perplexity_gap():
    from minitron.evaluation.report import gap_closed

    ppl = lambda v: {"perplexity": {"perplexity": v}}  # noqa: E731
    results = {"teacher": ppl(20.0), "teacher-corrected": ppl(10.0), "width-pruned": ppl(1000.0),
               "width-distilled": ppl(100.0)}
    assert gap_closed(results, "width-pruned", "width-distilled") == pytest.approx(0.5)  # corrected teacher
    del results["teacher-corrected"]
    assert gap_closed(results, "width-pruned", "width-distilled") == pytest.approx(2.302585 / 3.912023, rel=1e-5)
    assert gap_closed(results, "depth-pruned", "depth-distilled") is None
