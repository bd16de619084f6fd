"""Downstream tasks through EleutherAI's lm-evaluation-harness, offline tasks included.

``run_lm_eval(hf_dir, tasks, ...)`` scores an HF checkpoint with lm-eval's own ``HFLM`` and task
machinery (nothing here re-implements a metric). Two kinds of task:

* **Offline tasks** (``pydocs_cloze``, ``pydocs_choice``, ``pydocs_wikitext``): real lm-eval YAML
  tasks (``dataset_path: json`` + ``dataset_kwargs.data_files``) generated deterministically from
  the held-out **test** split of ``embedded:python-docs`` (few-shot examples from the validation
  split; the training split is never read) into ``$MINITRON_CACHE/lm_eval_tasks/``. They need no
  hub. See docs/evaluation.md for how each is built.
* **Standard tasks** (hellaswag, arc_challenge, winogrande, mmlu, ...): loaded by lm-eval from the
  Hugging Face hub. When the hub cannot be reached, the task comes back as
  ``{"skipped": "<reason>"}``: never a number.

User task folders (``include_path``) are scanned like lm-eval's ``--include_path``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import random
import re
import socket
import sys
import time
from pathlib import Path

import yaml

from minitron.data.config import DataConfig
from minitron.data.corpus import corpus_source
from minitron.data.prepare import split_documents
from minitron.data.publish import building
from minitron.errors import MinitronError
from minitron.io import cache_dir
from minitron.models import resolve_hf_source
from minitron.runtime.precision import resolve as resolve_precision

CORPUS = "embedded:python-docs"
BUILD_VERSION = 1
MARKER = "BUILD.json"
# Items per offline task: big enough for a usable stderr (~0.03 on accuracy), small enough for a CPU.
TEST_ITEMS = 300
FEWSHOT_ITEMS = 50
BUILD_SEED = 1234

_CLOZE_MIN_WORDS, _CLOZE_MAX_WORDS = 20, 200
_CHOICE_MIN_WORDS, _CHOICE_CONTEXT_MAX, _CHOICE_ENDING_WORDS = 30, 60, 20
_CHOICE_DISTRACTORS = 3
_PAGE_CHARS = 2000  # pydocs_wikitext page size: whole paragraphs up to ~2000 characters

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- held-out text


def heldout_documents(split: str, source: str = CORPUS) -> list:
    """The distinct documents of one split of `source`, assigned exactly as ``minitron.data.prepare`` does.

    Reusing prepare's hash rule (not a copy of it) guarantees that these documents are the ones
    kept out of training: a text is in one split only.
    """
    return [doc for doc, in_split in split_documents(DataConfig(source=source)) if in_split == split]


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _is_prose(paragraph: str) -> bool:
    """One line of running English ending a sentence with a plain word: no code, table, heading."""
    words = paragraph.split()
    return ("\n" not in paragraph and " | " not in paragraph and paragraph[:1].isupper()
            and bool(words) and re.fullmatch(r"[A-Za-z]{3,}\.", words[-1]) is not None)


def _prose(docs: list) -> list[tuple[str, str]]:
    """(document id, paragraph) for every prose paragraph, in corpus order."""
    return [(d.id, p) for d in docs for p in _paragraphs(d.text) if _is_prose(p)]


# ----------------------------------------------------------------------------- item builders


def cloze_items(docs: list, n: int, seed: int) -> list[dict]:
    """LAMBADA-style: context = a held-out paragraph without its last word, target = ' ' + that word."""
    pool = [(i, p) for i, p in _prose(docs) if _CLOZE_MIN_WORDS <= len(p.split()) <= _CLOZE_MAX_WORDS]
    random.Random(seed).shuffle(pool)
    items = []
    for doc_id, p in pool[:n]:
        head, last = p[:-1].rsplit(" ", 1)  # drop the final "." so the target is the bare word
        items.append({"doc_id": doc_id, "context": head, "target": " " + last})
    return items


def choice_items(docs: list, n: int, seed: int) -> list[dict]:
    """HellaSwag-style: context = start of a paragraph; choices = its true next words + 3 endings
    cut the same way from paragraphs of *other* documents, in a seeded order."""
    rng = random.Random(seed)
    pool = [(i, p.split()) for i, p in _prose(docs) if len(p.split()) >= _CHOICE_MIN_WORDS]
    cut = {k: min(len(w) // 2, _CHOICE_CONTEXT_MAX) for k, (_, w) in enumerate(pool)}
    endings = [" ".join(w[cut[k]:cut[k] + _CHOICE_ENDING_WORDS]) for k, (_, w) in enumerate(pool)]
    order = list(range(len(pool)))
    rng.shuffle(order)
    items = []
    for k in order[:n]:
        doc_id, words = pool[k]
        others = [j for j in range(len(pool)) if pool[j][0] != doc_id and endings[j] != endings[k]]
        choices = [endings[j] for j in rng.sample(others, _CHOICE_DISTRACTORS)] + [endings[k]]
        rng.shuffle(choices)
        items.append({"doc_id": doc_id, "context": " ".join(words[:cut[k]]), "endings": choices,
                      "label": choices.index(endings[k])})
    return items


def page_items(docs: list, n: int, seed: int) -> list[dict]:
    """wikitext-style rolling perplexity: held-out text in pages of whole paragraphs (<= ~2000 chars)."""
    pages = []
    for d in docs:
        current = ""
        for p in _paragraphs(d.text):
            if current and len(current) + len(p) > _PAGE_CHARS:
                pages.append({"doc_id": d.id, "text": current})
                current = ""
            current = f"{current}\n\n{p}" if current else p
        if current:
            pages.append({"doc_id": d.id, "text": current})
    random.Random(seed).shuffle(pages)
    return pages[:n]


# ----------------------------------------------------------------------------- task configs

_METRICS = {
    "loglikelihood": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                      {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
    "multiple_choice": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    "loglikelihood_rolling": [{"metric": m, "aggregation": agg, "higher_is_better": False} for m, agg in
                              (("word_perplexity", "weighted_perplexity"),
                               ("byte_perplexity", "weighted_perplexity"), ("bits_per_byte", "bits_per_byte"))],
}

# name -> (item builder, lm-eval fields). The target of the cloze task carries its own leading
# space, so target_delimiter is "" (as in LAMBADA, where the space belongs to the target word).
OFFLINE_TASKS = {
    "pydocs_cloze": (cloze_items, {"output_type": "loglikelihood", "doc_to_text": "{{context}}",
                                   "doc_to_target": "{{target}}", "target_delimiter": ""}),
    "pydocs_choice": (choice_items, {"output_type": "multiple_choice", "doc_to_text": "{{context}}",
                                     "doc_to_choice": "endings", "doc_to_target": "label"}),
    "pydocs_wikitext": (page_items, {"output_type": "loglikelihood_rolling", "doc_to_text": "",
                                     "doc_to_target": "{{text}}"}),
}


def _task_config(name: str, folder: Path, fields: dict) -> dict:
    files = {split: str(folder / f"{name}.{split}.jsonl") for split in ("validation", "test")}
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
              "validation_split": "validation", "test_split": "test", **fields,
              "metric_list": _METRICS[fields["output_type"]], "metadata": {"version": BUILD_VERSION}}
    if fields["output_type"] != "loglikelihood_rolling":
        config["fewshot_split"] = "validation"  # few-shot examples never come from the test items
    return config


def _write_jsonl(path: Path, items: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")


def _build_key(source: str, items: int, seed: int) -> str:
    kind, name = source.split(":", 1)
    identity = corpus_source(name) if kind == "embedded" else source
    key = {"version": BUILD_VERSION, "corpus": identity, "items": items, "seed": seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _write_tasks(folder: Path, final: Path, items: int, seed: int, source: str) -> dict:
    """Write every offline task's data and YAML into `folder`; the YAML names files under `final`."""
    splits = {"test": heldout_documents("test", source), "validation": heldout_documents("validation", source)}
    counts = {}
    for name, (build, fields) in OFFLINE_TASKS.items():
        for split, docs in splits.items():
            n = items if split == "test" else FEWSHOT_ITEMS
            rows = build(docs, n, seed)
            if not rows:
                raise MinitronError(f"{source}: its {split} split has no paragraphs usable for {name}")
            _write_jsonl(folder / f"{name}.{split}.jsonl", rows)
            counts[f"{name}.{split}"] = len(rows)
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(_task_config(name, final, fields), sort_keys=False))
    return {"source": source, "items": counts, "seed": seed, "version": BUILD_VERSION,
            "test_documents": [d.id for d in splits["test"]]}


def build_offline_tasks(out_dir: str | Path | None = None, items: int = TEST_ITEMS,
                        seed: int = BUILD_SEED, source: str = CORPUS) -> Path:
    """Folder of the offline lm-eval tasks (YAML + JSONL), built once per corpus/size/seed.

    With ``out_dir`` the tasks are written there (it must not exist yet); otherwise into
    ``$MINITRON_CACHE/lm_eval_tasks/pydocs-<key>/`` and reused while the corpus is unchanged.
    """
    if out_dir is None:
        target = cache_dir() / "lm_eval_tasks" / f"pydocs-{_build_key(source, items, seed)}"
        if (target / MARKER).is_file():
            return target
    else:
        target = Path(out_dir).resolve()
        if target.exists():
            raise MinitronError(f"{target}: exists; give a new folder for the lm-eval tasks")
    with building(target, MARKER) as tmp:
        info = _write_tasks(tmp, target, items, seed, source)
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")  # last: marks the folder complete
    return target


# ----------------------------------------------------------------------------- running lm-eval


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_without_hub() -> None:
    """Without a hub, force HF offline mode so unreachable datasets fail in ms, not after ~25 s of retries.

    An explicit HF_HUB_OFFLINE/HF_DATASETS_OFFLINE from the user wins. The libraries read these
    variables at import, so modules already imported get their flags set too.
    """
    if "HF_HUB_OFFLINE" in os.environ or "HF_DATASETS_OFFLINE" in os.environ or _hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = sys.modules["datasets"].config.HF_DATASETS_OFFLINE = True


def _check_model_dir(hf_dir) -> Path:
    if str(hf_dir).startswith("embedded:"):
        return resolve_hf_source(str(hf_dir))
    path = Path(hf_dir).expanduser()
    if not (path / "config.json").is_file():
        raise MinitronError(f"{path}: not an HF checkpoint folder (no config.json); give a folder written "
                            "by save_pretrained / `minitron export`")
    return path


def _check_include_paths(include_path) -> list[Path]:
    paths = [Path(p).expanduser() for p in ([include_path] if isinstance(include_path, (str, Path))
                                             else include_path or [])]
    for p in paths:
        if not p.is_dir():
            raise MinitronError(f"lm-eval include_path {p}: not a folder of task YAML files")
    return paths


def _task_manager(names: list[str], include: list[Path]):
    """lm-eval's TaskManager over our tasks (+ the user's); the ~15k built-in task configs are
    indexed (~5 s) only when a requested name is not among ours."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in include], include_defaults=False)
    if all(n in manager.all_tasks for n in names):
        return manager
    manager = TaskManager(include_path=[str(p) for p in include])
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        known = [*OFFLINE_TASKS, *manager.all_tasks]  # ours are indexed only when one was asked for
        hints = {n: difflib.get_close_matches(n, known, n=3) for n in unknown}
        raise MinitronError("unknown lm-eval task(s): " + "; ".join(
            f"{n!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
            + f"; offline tasks: {', '.join(OFFLINE_TASKS)}")
    return manager


def _load_tasks(manager, names: list[str]) -> tuple[list, dict]:
    """Load each task on its own: one whose data cannot be reached is skipped, not fatal."""
    loaded, skipped = [], {}
    for name in names:
        _check_local_files(manager, name)
        try:
            result = manager.load([name])
        except (ConnectionError, OSError) as e:  # hub unreachable, dataset not in the local cache
            skipped[name] = f"data not reachable: {_one_line(e)}"
            continue
        except Exception as e:  # lm-eval raises plain errors for broken user YAML
            raise MinitronError(f"lm-eval task {name!r}: cannot be loaded: {_one_line(e)}") from None
        for task_name, task in result["tasks"].items():
            _check_has_docs(name, task_name, task)
        top = result["groups"].get(name) or result["tasks"].get(name)
        loaded.extend([top] if top is not None else result["tasks"].values())  # a tag expands to tasks
    return loaded, skipped


def _check_local_files(manager, name: str) -> None:
    """A local data file that is missing or empty gets a clear message (datasets says "StopIteration")."""
    entry = manager.task_index.get(name)
    files = ((entry.cfg or {}).get("dataset_kwargs") or {}).get("data_files") if entry else None
    for path in _paths(files):
        where = f"lm-eval task {name!r} ({entry.yaml_path}): data file {path}"
        if not Path(path).is_file():
            raise MinitronError(f"{where} does not exist")
        with open(path, "rb") as f:
            if not f.read(65536).strip():
                raise MinitronError(f"{where} is empty; it needs one JSON item per line")


def _paths(files) -> list[str]:
    """datasets' data_files: a path, a list of paths, or {split: path or list}."""
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [p for v in files.values() for p in _paths(v)]
    return [p for v in files or [] for p in _paths(v)]


def _check_has_docs(name: str, task_name: str, task) -> None:
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    if docs is None or len(docs) == 0:
        files = (task.config.dataset_kwargs or {}).get("data_files", "")
        raise MinitronError(f"lm-eval task {name!r} ({task_name}): no items to evaluate {files}".rstrip())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _load_model(hf_dir: Path, batch_size, device: str, dtype: str, endpoint: str | None = None):
    if endpoint is not None:
        return _endpoint_model(endpoint, hf_dir, batch_size)
    from lm_eval.models.huggingface import HFLM

    try:
        dtype = {"bf16": "bfloat16", "fp32": "float32"}[resolve_precision(dtype, device).name]
        return HFLM(pretrained=str(hf_dir), device=device, batch_size=batch_size, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise MinitronError(f"{hf_dir}: lm-eval could not load the model: {_one_line(e)}") from None


def _endpoint_model(endpoint: str, hf_dir: Path, batch_size):
    """lm-eval's own `local-completions` model against an OpenAI-compatible server (e.g. `minitron serve`):
    token-id prompts with echo + logprobs, tokenized with the checkpoint's tokenizer as lm-eval does."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from minitron.deploy.serving.client import get

    base = endpoint.rstrip("/")
    try:
        served = get(f"{base}/models")[1]["data"][0]
    except (OSError, KeyError, IndexError, ValueError) as e:
        raise MinitronError(f"--endpoint {endpoint}: no OpenAI-compatible /models there ({_one_line(e)}); "
                            "give the base URL that `minitron serve` prints, e.g. http://127.0.0.1:8000/v1") from None
    return LocalCompletionsAPI(base_url=f"{base}/completions", model=served["id"], tokenizer=str(hf_dir),
                               tokenizer_backend="huggingface", tokenized_requests=True,
                               batch_size=int(batch_size) if str(batch_size).isdigit() else 1, max_retries=1,
                               max_length=served.get("max_model_len") or 2048)


def _metrics(task_result: dict) -> dict:
    """lm-eval's flat {"acc,none": v, "acc_stderr,none": s} -> {"acc": {"value": v, "stderr": s}}."""
    out = {}
    for key, value in task_result.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        stderr = task_result.get(f"{metric}_stderr,{filt}")
        name = metric if filt == "none" else f"{metric}[{filt}]"
        out[name] = {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
    return out


def _summarize(results: dict, skipped: dict, names: list[str], keep_samples: bool) -> dict:
    counts = {t: v["effective"] for t, v in results.get("n-samples", {}).items()}
    subtasks = results.get("group_subtasks", {})
    out = {}
    for name in names:
        if name in skipped:
            out[name] = {"skipped": skipped[name]}
            continue
        leaves = _leaves(name, subtasks)
        out[name] = {"metrics": _metrics(results["results"].get(name, {})),
                     "n_samples": sum(counts.get(t, 0) for t in leaves),
                     "num_fewshot": results.get("n-shot", {}).get(leaves[0]) if leaves else None}
        if keep_samples:
            out[name]["samples"] = [s for t in leaves for s in results.get("samples", {}).get(t, [])]
    return out


def _leaves(name: str, subtasks: dict) -> list[str]:
    if name not in subtasks:
        return [name]
    return [leaf for child in subtasks[name] for leaf in _leaves(child, subtasks)]


def run_lm_eval(hf_dir: str | Path, tasks: list[str], limit: int | None = None, batch_size: int | str = 8,
                num_fewshot: int | None = 0, device: str = "cpu", seed: int = 1234, *,
                dtype: str = "float32", include_path: str | Path | list | None = None,
                bootstrap_iters: int = 1000, samples: bool = False, endpoint: str | None = None) -> dict:
    """Evaluate the HF checkpoint `hf_dir` on lm-eval `tasks`; returns ``{task: result}``.

    A result is ``{"metrics": {name: {"value": float, "stderr": float | None}}, "n_samples": int,
    "num_fewshot": int}`` or ``{"skipped": reason}`` when the task's data cannot be reached.
    `limit` caps items per task (lm-eval takes the first N); `seed` seeds lm-eval's python, numpy,
    torch and few-shot RNGs. `bootstrap_iters` sizes lm-eval's bootstrap stderr of the perplexity
    metrics (its default, 100000, takes minutes). `samples=True` adds lm-eval's per-item records.
    `endpoint` (an OpenAI base URL such as `minitron serve`'s http://127.0.0.1:8000/v1): score through that
    server with lm-eval's `local-completions` model instead of loading `hf_dir` (then only its tokenizer is read).
    """
    tasks = [tasks] if isinstance(tasks, str) else tasks
    if not tasks:
        raise MinitronError("lm-eval: no tasks given")
    if limit is not None and limit < 1:
        raise MinitronError(f"lm-eval: limit={limit} must be >= 1 or None")
    names = list(dict.fromkeys(tasks))
    model_dir = _check_model_dir(hf_dir)
    include = _check_include_paths(include_path)
    if any(n in OFFLINE_TASKS for n in names):
        include.insert(0, build_offline_tasks())
    _offline_without_hub()
    manager = _task_manager(names, include)
    loaded, skipped = _load_tasks(manager, names)
    if not loaded:
        return {n: {"skipped": skipped[n]} for n in names}
    return _evaluate(model_dir, manager, loaded, skipped, names, limit=limit, batch_size=batch_size,
                     num_fewshot=num_fewshot, device=device, seed=seed, dtype=dtype,
                     bootstrap_iters=bootstrap_iters, keep_samples=samples, endpoint=endpoint)


def _evaluate(model_dir, manager, loaded, skipped, names, *, limit, batch_size, num_fewshot, device, seed,
              dtype, bootstrap_iters, keep_samples, endpoint) -> dict:
    from lm_eval import simple_evaluate

    lm = _load_model(model_dir, batch_size, device, dtype, endpoint)
    start = time.time()
    results = simple_evaluate(model=lm, tasks=loaded, task_manager=manager, limit=limit,
                              num_fewshot=num_fewshot, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed,
                              bootstrap_iters=bootstrap_iters, log_samples=keep_samples)
    log.info("lm-eval on %s took %.1f s", model_dir, time.time() - start)
    return _summarize(results, skipped, names, keep_samples)
