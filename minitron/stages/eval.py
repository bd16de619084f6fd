"""Stage `eval`: every model of the run measured the same way, side by side.

Models are the exported HF checkpoints the earlier stages left: ``teacher`` (import),
``teacher-corrected``, ``<student>-pruned``, ``<student>-distilled`` and ``<student>-distilled@uncorrected``
(distilled from the uncorrected teacher), whichever exist.
For each: parameters, held-out perplexity (minitron/evaluation/perplexity.py), and
lm-evaluation-harness tasks; then one throughput run over all of them, in turns.

The stage is refreshed on every run (new checkpoints join the table), but each measurement
is cached in ``eval.work/`` under a key of the checkpoint (its place in the run folder, file sizes and
times) and the settings, so a rerun re-measures only what changed, also after the run folder moved.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from pathlib import Path

from minitron.errors import MinitronError
from minitron.evaluation import throughput as tp
from minitron.evaluation.lm_eval_tasks import run_lm_eval
from minitron.evaluation.perplexity import file_tokens, load_causal_lm, perplexity, split_tokens
from minitron.io import write_json_atomic
from minitron.pruning.report import parameter_breakdown
from minitron.recipe import Recipe
from minitron.run_folder import LEGACY_UNCORRECTED, UNCORRECTED, RunFolder
from minitron.runtime.llama import LlamaArch
from minitron.runtime.precision import resolve as resolve_precision


def run_models(folder: RunFolder) -> dict[str, Path]:
    """name -> HF checkpoint folder of the models to evaluate: the run's (or `eval.models` of them)
    plus `eval.extra_models`."""
    recipe = folder.recipe
    stages, models = folder.model_stages(), folder.models()
    wanted = [m.replace(LEGACY_UNCORRECTED, UNCORRECTED) for m in recipe.eval.models]
    unknown = [m for m in wanted if m not in stages]
    if unknown:
        raise MinitronError(f"eval.models: unknown model(s) {unknown}; this recipe has {list(stages)}")
    if wanted:
        missing = [m for m in wanted if m not in models]
        if missing:
            raise MinitronError(f"eval.models: {missing} not produced yet; run their stages first")
        models = {m: models[m] for m in wanted}
    models.update(named_model(spec, "eval.extra_models") for spec in recipe.eval.extra_models)
    names = list(dict.fromkeys([*stages, *models]))
    unmatched = [p for p in recipe.eval.lm_eval.models if not any(_matches(n, [p]) for n in names)]
    if unmatched:
        raise MinitronError(f"eval.lm_eval.models: {unmatched} match none of this recipe's models {names}")
    if not models:
        raise MinitronError(f"run {recipe.name!r} has no model yet under {folder.root}; "
                            "run the import stage first (minitron run --config ...)")
    return models


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _runs_lm_eval(patterns: list[str], name: str) -> bool:
    """eval.lm_eval.models: empty = every model."""
    return not patterns or _matches(name, patterns)


def named_model(spec: str, source: str) -> tuple[str, Path]:
    """``NAME=HF_DIR`` -> (name, folder), checked; `source` names the option in the error."""
    name, _, path = spec.partition("=")
    if not name or not (Path(path) / "config.json").is_file():
        raise MinitronError(f"{source}: {spec!r} must be NAME=HF_DIR with a config.json in HF_DIR")
    return name, Path(path)


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    recipe, work = folder.recipe, folder.work_dir(stage)
    cfg = recipe.eval
    models = run_models(folder)
    tokenizer_dir = next(iter(models.values()))
    tokens = _eval_tokens(recipe, tokenizer_dir)
    facts = {name: _model_facts(hf_dir) for name, hf_dir in models.items()}
    results = {}
    for name, hf_dir in models.items():
        print(f"[eval] {name}: {hf_dir}")
        results[name] = {"hf": str(hf_dir), **facts[name]}
        if "perplexity" not in cfg.skip:
            results[name]["perplexity"] = _cached(work, "perplexity", folder.portable(str(hf_dir)), hf_dir,
                                                  _settings(recipe, "perplexity"),
                                                  lambda h=hf_dir: _perplexity(recipe, h, tokens))
        if "lm_eval" not in cfg.skip and _runs_lm_eval(cfg.lm_eval.models, name):
            results[name]["lm_eval"] = _cached(work, "lm_eval", folder.portable(str(hf_dir)), hf_dir,
                                               _settings(recipe, "lm_eval"), lambda h=hf_dir: _lm_eval(recipe, h))
    if "throughput" not in cfg.skip:
        speed = _throughput(recipe, models, facts, tokens, work)
        for name in models:
            results[name]["throughput"] = speed[name]
    write_json_atomic(out / "results.json", folder.portable(results))
    precision = {what: resolve_precision(dtype).to_dict() for what, dtype in
                 (("perplexity", cfg.dtype), ("lm_eval", cfg.lm_eval.dtype), ("throughput", cfg.throughput.dtype))}
    return {"models": results, "precision": precision, "perplexity_tokens": len(tokens),
            "perplexity_text": cfg.perplexity.file or f"{recipe.data.source} [{cfg.perplexity.split}]",
            "budget": recipe.applied_budget.get("eval"),
            "budget_reason": recipe.cpu_budget.reason if recipe.applied_budget.get("eval") else None}


def _model_facts(hf_dir: Path) -> dict:
    arch = LlamaArch.from_hf_dir(hf_dir)
    parts = parameter_breakdown(arch)
    return {"params": sum(parts.values()), "non_embedding_params": sum(parts.values()) - parts["embedding"]
            - parts["output_layer"], "layers": arch.num_layers, "hidden_size": arch.hidden_size,
            "ffn_hidden_size": arch.ffn_hidden_size, "attention_heads": arch.num_attention_heads}


def _eval_tokens(recipe: Recipe, tokenizer_dir: Path):
    ppl = recipe.eval.perplexity
    if ppl.file:
        return file_tokens(ppl.file, tokenizer_dir, ppl.max_tokens, recipe.data.text_key)
    return split_tokens(recipe.data, tokenizer_dir, ppl.split, ppl.max_tokens)


def _perplexity(recipe: Recipe, hf_dir: Path, tokens) -> dict:
    ppl = recipe.eval.perplexity
    model = load_causal_lm(hf_dir, recipe.eval.dtype)
    window = ppl.window or recipe.data.seq_length
    return perplexity(model, tokens, window, ppl.stride, ppl.batch_size).to_dict()


#: The headline metric of a task in the report (the Minitron paper's choice for the standard ones).
MAIN_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "arc_easy": "acc_norm",
               "pydocs_wikitext": "word_perplexity"}


def _lm_eval(recipe: Recipe, hf_dir: Path) -> dict:
    c = recipe.eval.lm_eval
    raw = run_lm_eval(hf_dir, c.tasks, limit=c.limit, batch_size=c.batch_size, num_fewshot=c.num_fewshot,
                      dtype=c.dtype, seed=recipe.data.seed)
    results = {}
    for task, r in raw.items():
        if "skipped" in r:
            results[task] = r
            continue
        metric = next(m for m in (MAIN_METRIC.get(task), "acc", *r["metrics"]) if m in r["metrics"])
        results[task] = {"metric": metric, **r["metrics"][metric], **r}
    return results


def _throughput(recipe: Recipe, models: dict[str, Path], facts: dict[str, dict], tokens, work: Path) -> dict:
    """Measure once per distinct architecture (pruned and distilled twins share one), all in turns."""
    cfg = recipe.eval.throughput
    shapes = {}
    for name in models:
        shapes.setdefault(json.dumps(facts[name], sort_keys=True), []).append(name)
    measured = {names[0]: models[names[0]] for names in shapes.values()}
    key = {"models": {n: _checkpoint_key(p) for n, p in measured.items()}, **dataclasses.asdict(cfg),
           "precision": resolve_precision(cfg.dtype).name}

    def measure():
        loaded = {n: load_causal_lm(p, cfg.dtype) for n, p in measured.items()}
        results = tp.measure(loaded, tokens, cfg)
        return tp.with_speedups(results, "teacher" if "teacher" in results else next(iter(results)))

    results = _cached(work, "throughput", None, None, key, measure)
    return {name: {**results[names[0]], "measured_as": names[0]} for names in shapes.values() for name in names}


def _settings(recipe: Recipe, what: str) -> dict:
    section = dataclasses.asdict(getattr(recipe.eval, what))
    section.pop("models", None)  # which models are measured, not how: not part of a measurement's key
    dtype = recipe.eval.dtype if what == "perplexity" else section["dtype"]
    # `auto` differs between machines: the key holds what it resolved to here.
    return {**section, "dtype_eval": recipe.eval.dtype, "precision": resolve_precision(dtype).name,
            "data": dataclasses.asdict(recipe.data)}


def _checkpoint_key(hf_dir: Path) -> list:
    return sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(hf_dir).glob("*.safetensors"))


def _cached(work: Path, what: str, where: str | None, hf_dir: Path | None, settings: dict, compute):
    """Reuse a measurement when the checkpoint (`where` it is, run-relative inside the run) and the settings
    are unchanged."""
    key = {"what": what, "settings": settings,
           **({"hf": where, "checkpoint": _checkpoint_key(hf_dir)} if hf_dir else {})}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = work / f"{what}-{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_json_atomic(path, value)
    return value
