"""TensorRT-LLM tokens/s: the teacher vs the distilled students, BF16 and FP8 engines (GPU only).

    make bench-trtllm                        # the default recipe's teacher and distilled students
    python benchmarks/bench_trtllm.py --config RECIPE [--models teacher,width-distilled] [--dtypes bf16,fp8]
    python benchmarks/bench_trtllm.py --model teacher=HF_DIR --model width=HF_DIR [--data-source TEXT]
    python3 benchmarks/bench_trtllm.py --plan runs/bench/trtllm     # phase 2 only, e.g. in the container

Phase 1 (any machine, CPU too), into --output:
  * a TensorRT-LLM checkpoint per model x dtype by Model Optimizer (``minitron export --format trtllm``;
    FP8 = post-training quantization calibrated on the train split as the recipe's ``deploy`` section
    says), validated, reused when present;
  * the prompts: B x P tokens of the held-out test split per batch size (the recipe's
    ``eval.throughput`` settings, as in the CPU speed table), in prompts.safetensors;
  * plan.json (settings, checkpoints relative to --output, the EOS id).
Phase 2 (TensorRT-LLM 1.2 + an NVIDIA GPU; only torch, safetensors, tensorrt_llm and this repo's
deploy/ are needed, so the folder can be carried to the TensorRT-LLM container):
  * ``trtllm-build`` per checkpoint (deploy/engine.py): max batch = the largest batch size, max input
    = P, max sequence = P + N;
  * ``tensorrt_llm.runtime.ModelRunner`` per engine and batch size B: time to first token ``t1`` =
    generate 1 token, ``tN`` = generate exactly N greedy tokens (``min_length`` = N; lengths checked),
    each the median of the repeats after a warm-up. Prefill tokens/s = B*P/t1, decode tokens/s =
    B*(N-1)/(tN - t1); speedups are against the first model at the first dtype (the teacher in BF16).
Without TensorRT-LLM 1.2 or a GPU, phase 2 says so on one line and exits with status 3 (the
checkpoints and prompts are ready). Output: bench_trtllm.json and bench_trtllm.md beside plan.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minitron.errors import MinitronError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="recipe: its teacher and distilled students (and its data and eval settings); "
                                    "default: the CPU demo's, unless --model names the models")
    p.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    p.add_argument("--model", action="append", default=[], metavar="NAME=HF_DIR",
                   help="a model to measure (repeatable; the first is the reference); adds to the recipe's")
    p.add_argument("--models", help="comma-separated names from the recipe run (default: teacher + distilled)")
    p.add_argument("--dtypes", default="bf16,fp8", help="engine precisions, comma-separated (bf16, fp8)")
    p.add_argument("--data-source", help="calibration and prompt text when there is no --config")
    p.add_argument("--batch-sizes", help="comma-separated (default: the recipe's eval.throughput)")
    p.add_argument("--prompt-tokens", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--calib-samples", type=int, help="FP8 calibration samples (default: the recipe's deploy section)")
    p.add_argument("--output", default=str(REPO / "runs/bench/trtllm"))
    p.add_argument("--plan", metavar="DIR", help="skip phase 1: build and measure what an earlier run planned "
                   "in DIR (its --output; the folder can be moved to the GPU machine)")
    return p.parse_args(argv)


def select_models(args) -> tuple[dict[str, Path], object, object, object]:
    """(name -> HF folder, data, throughput and deploy settings) from the recipe and/or --model."""
    from minitron.deploy.config import DeployConfig
    from minitron.data import DataConfig
    from minitron.evaluation.config import ThroughputSection
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder
    from minitron.stages.eval import named_model, run_models

    models, data, speed, deploy = {}, DataConfig(), ThroughputSection(), DeployConfig()
    if args.config or not args.model:
        recipe = load_recipe(args.config, args.overrides)
        data, speed, deploy = recipe.data, recipe.eval.throughput, recipe.deploy
        produced = run_models(RunFolder(recipe))
        wanted = args.models.split(",") if args.models else [n for n in produced if n == "teacher"
                                                               or n.endswith("-distilled")]
        missing = [n for n in wanted if n not in produced]
        if missing:
            raise MinitronError(f"--models {missing}: not produced by {recipe.name} (it has {list(produced)})")
        models = {n: produced[n] for n in wanted}
    models.update(named_model(spec, "--model") for spec in args.model)
    if not models:
        raise MinitronError("nothing to measure: pass --config RECIPE (after its distill stage) or --model NAME=HF_DIR")
    if args.data_source:
        data.source = args.data_source
    if args.calib_samples is not None:
        deploy.calib_samples = args.calib_samples
    for key in ("prompt_tokens", "new_tokens", "repeats"):
        if getattr(args, key) is not None:
            setattr(speed, key, getattr(args, key))
    if args.batch_sizes:
        try:
            speed.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        except ValueError:
            raise MinitronError(f"--batch-sizes {args.batch_sizes!r}: comma-separated integers, e.g. 1,8") from None
    problems = speed.check() + (["--new-tokens must be >= 2 (decode is timed after the first token)"]
                                if speed.new_tokens < 2 else [])
    if problems:
        raise MinitronError("; ".join(problems))
    return models, data, speed, deploy


def export_checkpoint(hf_dir: Path, out: Path, dtype: str, data, deploy) -> dict:
    """A validated TensorRT-LLM checkpoint of hf_dir; an earlier export of the same source is reused."""
    from minitron.deploy.export import ExportRequest, export
    from minitron.deploy.trtllm_format import validate_checkpoint

    done = out / "export.json"
    if done.is_file() and json.loads(done.read_text()).get("source") == str(hf_dir):
        return validate_checkpoint(out)
    return export(ExportRequest(model=str(hf_dir), output=str(out), format="trtllm",
                                deploy=dataclasses.replace(deploy, dtype=dtype, tp=1, pp=1), data=data))["checkpoint"]


def prepare(args) -> Path:
    """Phase 1 (any machine): checkpoints, held-out prompts and plan.json under --output."""
    from safetensors.torch import save_file

    from minitron.evaluation.perplexity import split_tokens
    from minitron.evaluation.throughput import prompts as cut_prompts
    from minitron.io import write_json_atomic

    models, data, speed, deploy = select_models(args)
    dtypes = args.dtypes.split(",")
    if not set(dtypes) <= {"bf16", "fp8"}:
        raise MinitronError(f"--dtypes {args.dtypes!r}: only bf16 and fp8")
    out = Path(args.output)
    entries = []
    for name, hf_dir in models.items():
        for dtype in dtypes:
            ckpt = out / f"{name}-{dtype}" / "checkpoint"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            summary = export_checkpoint(hf_dir, ckpt, dtype, data, deploy)
            entries.append({"model": name, "dtype": dtype, "checkpoint": str(ckpt.relative_to(out))})
            print(f"[bench-trtllm] {name} {dtype}: checkpoint {ckpt} ({summary['tensors_per_rank'][0]} tensors)")
    tokenizer_dir = next(iter(models.values()))
    tokens = split_tokens(data, tokenizer_dir, "test", max_tokens=max(speed.batch_sizes) * speed.prompt_tokens)
    partial = out / "prompts.safetensors.partial"  # renamed into place: never a half-written file
    save_file({f"batch_{b}": cut_prompts(tokens, b, speed.prompt_tokens).to(torch.int32).contiguous()
               for b in speed.batch_sizes}, partial)
    partial.replace(out / "prompts.safetensors")
    eos = json.loads((tokenizer_dir / "config.json").read_text()).get("eos_token_id") or 0
    write_json_atomic(out / "plan.json", {"settings": asdict(speed), "entries": entries,
                                           "end_id": eos[0] if isinstance(eos, list) else eos,
                                           "prompts": f"{data.source} [test]"})
    return out


def build(checkpoint: Path, engine: Path, settings: dict) -> None:
    from minitron.deploy.config import DeployConfig
    from minitron.deploy.engine import EngineRequest, build_engine

    lengths = DeployConfig(max_batch_size=max(settings["batch_sizes"]), max_input_len=settings["prompt_tokens"],
                           max_seq_len=settings["prompt_tokens"] + settings["new_tokens"])
    request = EngineRequest(str(checkpoint), str(engine), deploy=lengths)
    record = engine / "minitron_build.json"
    if record.is_file() and json.loads(record.read_text()) == asdict(request):
        return
    if engine.exists():
        shutil.rmtree(engine)  # built for other lengths: rebuild
    build_engine(request)
    record.write_text(json.dumps(asdict(request)) + "\n")


def measure(engine: Path, prompts: dict, settings: dict, end_id: int) -> list[dict]:
    """Prefill and decode tokens/s of one engine at each batch size (see the module docstring)."""
    from tensorrt_llm.runtime import ModelRunner

    runner = ModelRunner.from_dir(engine_dir=str(engine), rank=0)
    prompt_tokens, new_tokens, repeats = settings["prompt_tokens"], settings["new_tokens"], settings["repeats"]

    def seconds(inputs: list, n: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = runner.generate(inputs, max_new_tokens=n, min_length=n, end_id=end_id, pad_id=end_id, top_k=1,
                              return_dict=True, output_sequence_lengths=True)
        torch.cuda.synchronize()
        lengths = out["sequence_lengths"].flatten().tolist()
        assert all(k == prompt_tokens + n for k in lengths), f"generation stopped early: {lengths}"
        return time.perf_counter() - start

    rows = []
    for batch, ids in prompts.items():
        inputs = [row.clone() for row in ids]  # int32 prompts on the CPU, as examples/run.py passes them
        seconds(inputs, new_tokens)  # warm-up
        first = statistics.median(seconds(inputs, 1) for _ in range(repeats))
        full = statistics.median(seconds(inputs, new_tokens) for _ in range(repeats))
        rows.append({"batch_size": batch, "ttft_s": round(first, 5), "latency_s": round(full, 5),
                     "prefill_tokens_per_s": round(batch * prompt_tokens / first, 1),
                     "decode_tokens_per_s": round(batch * (new_tokens - 1) / max(full - first, 1e-9), 1)})
    return rows  # the runner (and its GPU memory) goes with this frame


def table(results: dict, reference: str) -> str:
    lines = ["| model | engine | batch | prefill tok/s | decode tok/s | TTFT ms | speedup vs "
             f"{reference} (prefill / decode) |", "|---|---|---:|---:|---:|---:|---|"]
    ref = {r["batch_size"]: r for r in results[reference]["rows"]}
    for res in results.values():
        for r in res["rows"]:
            base = ref[r["batch_size"]]
            lines.append(f"| {res['model']} | {res['dtype']} | {r['batch_size']} | {r['prefill_tokens_per_s']:.0f} | "
                         f"{r['decode_tokens_per_s']:.0f} | {1000 * r['ttft_s']:.1f} | "
                         f"{r['prefill_tokens_per_s'] / base['prefill_tokens_per_s']:.2f}x / "
                         f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x |")
    return "\n".join(lines)


def run_plan(out: Path) -> dict:
    """Phase 2 (TensorRT-LLM 1.2 + GPU): build every planned engine, measure, print and write the table."""
    from safetensors.torch import load_file

    from minitron.deploy.engine import EngineUnavailable, unavailable_reason
    from minitron.io import write_json_atomic

    if not (out / "plan.json").is_file():
        raise MinitronError(f"{out}/plan.json: not found; run this script with --config or --model first")
    plan = json.loads((out / "plan.json").read_text())
    reason = unavailable_reason()
    if reason:
        raise EngineUnavailable(f"engines not built: {reason}; the {len(plan['entries'])} checkpoints and the "
                                f"prompts under {out} are ready: run `python3 benchmarks/bench_trtllm.py --plan "
                                f"{out}` in the TensorRT-LLM 1.2 container on a GPU machine (deploy/gpu_checks.sh)")
    settings = plan["settings"]
    prompts = {int(k.split("_")[1]): v for k, v in load_file(out / "prompts.safetensors").items()}
    prompts = dict(sorted(prompts.items()))
    results = {}
    for entry in plan["entries"]:
        ckpt = out / entry["checkpoint"]
        engine = ckpt.parent / "engine"
        build(ckpt, engine, settings)
        results[f"{entry['model']}-{entry['dtype']}"] = {**entry, "engine": str(engine.relative_to(out)),
                                                          "rows": measure(engine, prompts, settings, plan["end_id"])}
    report = table(results, next(iter(results)))
    print(report)
    write_json_atomic(out / "bench_trtllm.json", {**plan, "results": results})
    (out / "bench_trtllm.md").write_text(report + "\n")
    return results


def main(argv=None) -> int:
    from minitron.cli import quiet_third_party_warnings

    quiet_third_party_warnings()
    args = parse_args(argv)
    try:
        run_plan(Path(args.plan) if args.plan else prepare(args))
    except MinitronError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
