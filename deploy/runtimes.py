"""Every runtime format of a model, each run in its runtime: size, load time, agreement with transformers, speed.

    minitron export --all --model HF_DIR --output DIR     # one model: DIR/<one file or folder per format>
    minitron runtimes                                     # the run's corrected teacher and distilled students
                                                          #   into <run>/runtimes/<model>/; the report shows them

Formats: GGUF F32 / BF16 / Q8_0 (llama.cpp, `gguf_export`) and ONNX fp32 / int4 (ONNX Runtime GenAI,
`onnx_export`). Each export is checked in its runtime against transformers at fp32 on the same ids
(`runtime_check`: greedy continuation, max |Δ top-10 log-prob| at generated and prompt positions), then timed
there: prefill of a SPEED_PROMPT-token prompt and greedy decoding of SPEED_NEW tokens, batch 1, the median of
SPEED_REPEATS runs after one warm-up, on every core torch uses. A format a model cannot take (e.g. ONNX
Runtime's head_dim rule) is recorded with the reason, not dropped. Results: `<DIR>/runtimes.json`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from minitron.errors import MinitronError

FORMATS = (("gguf", "f32"), ("gguf", "bf16"), ("gguf", "q8_0"), ("onnx", "fp32"), ("onnx", "int4"))
SPEED_PROMPT, SPEED_NEW, SPEED_REPEATS = 128, 32, 3


def _target(out: Path, fmt: str, dtype: str) -> Path:
    return out / (f"model-{dtype}.gguf" if fmt == "gguf" else f"onnx-{dtype}")


def _speed_prompt(vocab: int) -> list[int]:
    # Token ids, not text: the same prompt for every format and model of one vocabulary.
    return [int(i) for i in np.random.default_rng(0).integers(100, vocab, SPEED_PROMPT)]


def _medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """Median (prefill, decode) tokens/s of the runs after the first (the warm-up)."""
    return tuple(statistics.median(r[i] for r in runs[1:]) for i in range(2))


def gguf_speed(path: Path, prompt: list[int], threads: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) from llama.cpp's own timings."""
    from minitron.deploy.runtime_check import LlamaCpp

    llama = LlamaCpp(path, context=len(prompt) + SPEED_NEW + 8, threads=threads)
    runs = []
    for _ in range(SPEED_REPEATS + 1):
        reply = llama.server.handle_completions({"prompt": prompt, "n_predict": SPEED_NEW, "temperature": 0.0,
                                                 "cache_prompt": False, "ignore_eos": True})
        if "error" in reply:
            raise MinitronError(f"llama.cpp: {reply['error']}")
        runs.append((reply["timings"]["prompt_per_second"], reply["timings"]["predicted_per_second"]))
    del llama
    return _medians(runs)


def onnx_speed(path: Path, prompt: list[int]) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of onnxruntime-genai's Generator (KV cache), wall clock."""
    import onnxruntime_genai as og

    model = og.Model(str(path))
    runs = []
    for _ in range(SPEED_REPEATS + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + SPEED_NEW, batch_size=1)
        gen = og.Generator(model, params)
        start = time.perf_counter()
        gen.append_tokens(np.array([prompt], dtype=np.int32))
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(SPEED_NEW):  # min_length is not set: a random model may stop at EOS, so count steps
            if gen.is_done():
                break
            gen.generate_next_token()
        steps = len(gen.get_sequence(0)) - len(prompt)
        runs.append((len(prompt) / prefill, steps / (time.perf_counter() - start)))
    return _medians(runs)


def export_all(hf_dir: str | Path, out: str | Path, overwrite: bool = False, formats=FORMATS) -> dict:
    """Export `hf_dir` in every format under `out`, check and time each; writes and returns runtimes.json."""
    import torch
    from transformers import AutoTokenizer

    from minitron.conversion.sample_text import SAMPLE_TEXT
    from minitron.deploy.gguf_export import export_gguf
    from minitron.deploy.onnx_export import export_onnx
    from minitron.deploy.runtime_check import compare_gguf, compare_onnx

    hf_dir, out = Path(hf_dir), Path(out)
    if (out / "runtimes.json").exists() and not overwrite:
        raise MinitronError(f"{out}: holds an export already (runtimes.json); pass --overwrite to redo it")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    check_prompt = tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    speed_prompt = _speed_prompt(len(tokenizer))
    threads = torch.get_num_threads()
    rows = []
    for fmt, dtype in formats:
        target = _target(out, fmt, dtype)
        row = {"format": fmt, "dtype": dtype, "path": target.name}
        print(f"[runtimes] {hf_dir} -> {fmt} {dtype}", flush=True)
        try:
            if fmt == "gguf":
                summary = export_gguf(hf_dir, target, dtype, overwrite=True)
                check = compare_gguf(target, hf_dir, check_prompt)
                prefill, decode = gguf_speed(target, speed_prompt, threads)
            else:
                summary = export_onnx(hf_dir, target, dtype, overwrite=True)
                check = compare_onnx(target, hf_dir, check_prompt)
                prefill, decode = onnx_speed(target, speed_prompt)
        except MinitronError as e:
            rows.append({**row, "skipped": str(e)})
            continue
        rows.append({**row, "bytes": summary["bytes"], "export_seconds": summary["seconds"],
                     "load_seconds": check["load_seconds"], "greedy_match": check["greedy_match"],
                     "argmax_agree": check["argmax_agree"], "positions": check["positions"],
                     "max_abs_dlogprob_generated": check["max_abs_dlogprob_generated"],
                     "max_abs_dlogprob_prompt": check["max_abs_dlogprob_prompt"],
                     "prefill_tok_s": round(prefill, 1), "decode_tok_s": round(decode, 1)})
    result = {"model": str(hf_dir), "threads": threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "speed": {"prompt_tokens": SPEED_PROMPT, "new_tokens": SPEED_NEW, "batch": 1, "repeats": SPEED_REPEATS},
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    partial = out / f".runtimes.json.partial-{os.getpid()}"
    partial.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(partial, out / "runtimes.json")
    return result


def run_models(folder) -> dict[str, Path]:
    """The models a run's Runtimes table covers: the corrected teacher and the distilled students."""
    models = folder.models()
    wanted = ["teacher-corrected", *(f"{s}-distilled" for s in folder.recipe.distill.students)]
    return {name: models[name] for name in wanted if name in models}


def runtimes_command(args) -> dict:
    """`minitron runtimes`: every format of the run's corrected teacher and distilled students."""
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder

    folder = RunFolder(load_recipe(args.config, args.overrides, args.output))
    models = run_models(folder)
    if not models:
        raise MinitronError(f"{folder.root}: no corrected teacher or distilled student yet; run `make demo` "
                            "(or the recipe's teacher_correction and distill stages) first")
    return {name: export_all(hf, folder.root / "runtimes" / name, overwrite=args.overwrite)["rows"]
            for name, hf in models.items()}
