"""`minitron`: one command, one subcommand per job. Makefile targets wrap these.

    minitron run --config recipes/<recipe>.yaml [key=value ...]
    minitron distill --config recipes/<recipe>.yaml [nproc=N] [key=value ...]
    minitron teacher-correct --config recipes/<recipe>.yaml [nproc=N] [key=value ...]
    minitron convert {gguf-to-hf,hf-to-nemo,nemo-to-hf} --input IN --output OUT
    minitron verify --nemo NEMO_DIR --hf HF_DIR [--tp N --pp N]   (under torchrun for N > 1)
    minitron model default                                         (path of the embedded model)
    minitron config --config FILE [key=value ...]                  (resolved config, documented)
    minitron serve [--model DIR] [--backend pytorch|tensorrt_llm] [--host H] [--port N]   (PyTriton + OpenAI API)
    minitron query [PROMPT] [--url URL] [--stream]                 (ask a running `minitron serve`)
    minitron export --model HF --format hf|trtllm --dtype bf16|fp8 --output DIR [--tp N --pp N]
    minitron build-engine --checkpoint TRTLLM_DIR --output ENGINE_DIR   (trtllm-build; exit 3 without GPU)
    minitron eval --config R [--model NAME=HF_DIR ...] [key=value]  (perplexity, lm-eval, speed of the run's models)
    minitron report --config R                                      (report.md + plots of the run)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path


def quiet_third_party_warnings() -> None:
    # Megatron/DCP warn about Apex, TE and CPU tensors on every import; set
    # MINITRON_SHOW_WARNINGS=1 to see them.
    if os.environ.get("MINITRON_SHOW_WARNINGS") != "1":
        for module in ("megatron", "torch.distributed", "modelopt", "transformers"):
            warnings.filterwarnings("ignore", module=module)
        warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).* not installed")


def cmd_convert(args) -> dict:
    from conversion.convert import hf_to_nemo, nemo_to_hf
    from conversion.gguf_to_hf import gguf_to_hf

    output = args.output or Path("runs") / "convert" / f"{Path(args.input).stem}-{args.direction.split('-to-')[1]}"
    if args.direction == "gguf-to-hf":
        summary = gguf_to_hf(args.input, output, dtype=args.dtype)
    elif args.direction == "hf-to-nemo":
        summary = hf_to_nemo(args.input, output)
    else:
        summary = nemo_to_hf(args.input, output)
    _write_summary(Path(output), summary)
    return summary


def cmd_verify(args) -> dict | None:
    from conversion.verify import megatron_vs_hf, tokenize
    from minitron.runtime import distributed

    tokens = tokenize(args.hf, args.text) if args.text else tokenize(args.hf)
    compared = distributed.distributed_entry(megatron_vs_hf)(args.nemo, args.hf, tokens, args.tp, args.pp)
    if compared is None:
        return None  # not the last pipeline stage: nothing to report
    from megatron.core import parallel_state

    diff, logits = compared
    result = {"tensor_parallel": args.tp, "pipeline_parallel": args.pp, "max_abs_logit_diff": diff}
    if parallel_state.get_tensor_model_parallel_rank() == 0:
        if args.logits_out:
            from safetensors.torch import save_file

            save_file({"logits": logits.contiguous()}, args.logits_out)
        if args.result_file:
            Path(args.result_file).write_text(json.dumps(result))
    return result


def cmd_prune_job(args) -> None:
    from minitron.pruning.prune import PruneJob, run_job
    from minitron.runtime import distributed

    distributed.distributed_entry(run_job)(PruneJob.load(args.job))
    return None


def cmd_train_job(args) -> None:
    from minitron.runtime import distributed
    from minitron.training.loop import TrainJob, train

    result = distributed.distributed_entry(train)(TrainJob.load(args.job))
    if args.result_file and distributed.is_rank0():
        Path(args.result_file).write_text(json.dumps(result))
    return None


def cmd_model(args) -> dict:
    from conversion.gguf_to_hf import default_model_dir

    path = default_model_dir()
    print(path)
    return {"path": str(path)}


def cmd_config(args) -> dict:
    from minitron import config
    from minitron.recipe import Recipe

    recipe = config.load(Recipe, args.config, args.overrides)
    if args.explain:
        print("\n".join(config.describe(Recipe)))
    return config.to_dict(recipe)


def cmd_run(args) -> dict:
    from minitron import pipeline

    return _compact(pipeline.run(_load_recipe(args)))


def cmd_eval_report(args) -> dict:
    """`minitron eval` / `minitron report`: measure / tabulate the models the run has so far."""
    from minitron import pipeline
    from minitron.errors import MinitronError

    recipe = _load_recipe(args)
    extra = getattr(args, "model", None) or []  # `report` has no --model
    for spec in extra:
        if "=" not in spec:
            raise MinitronError(f"--model {spec!r}: give NAME=HF_DIR, e.g. --model fp8=runs/export/fp8-hf")
    recipe.eval.extra_models += extra
    recipe.stages = ["eval"] if args.command == "eval" else ["report"]
    return _compact(pipeline.run(recipe))


def _compact(results: dict) -> dict:
    """What a person reads at the end of a run: each stage's time, and the report's table when written."""
    out = {stage: {"seconds": s.get("stage_seconds")} for stage, s in results.items()}
    if "report" in results:
        print(Path(results["report"]["report"]).read_text().split("\n## Speed")[0])
        out["report"] = results["report"]["report"]
    if "eval" in results:
        out["eval"] = {name: {"perplexity": (r.get("perplexity") or {}).get("perplexity"), "params": r["params"]}
                       for name, r in results["eval"]["models"].items()}
    return out


def cmd_serve(args) -> None:
    from deploy.serving.server import serve

    serve(args)
    return None


def cmd_query(args) -> dict | None:
    from deploy.serving.client import query

    return query(args) or None


def _load_recipe(args, extra_overrides: list[str] = ()):
    """The recipe of --config with key=value overrides and --output; `nproc=N` sets DP so TP * PP * DP = N."""
    from minitron import config
    from minitron.errors import MinitronError
    from minitron.recipe import Recipe

    overrides = list(args.overrides) + list(extra_overrides)
    nproc = [int(o.split("=", 1)[1]) for o in overrides if o.startswith("nproc=")]
    recipe = config.load(Recipe, args.config, [o for o in overrides if not o.startswith("nproc=")])
    for n in nproc:
        mp = recipe.parallel.tensor_parallel * recipe.parallel.pipeline_parallel
        if n < 1 or n % mp:
            raise MinitronError(f"nproc={n} is not a multiple of tensor_parallel x pipeline_parallel = {mp}")
        recipe.parallel.data_parallel = n // mp
    if getattr(args, "output", None):
        recipe.output_root = str(Path(args.output))
    return recipe


def cmd_train_stage(args) -> dict:
    """`minitron distill` / `minitron teacher-correct`: the recipe up to that stage (cached stages skip)."""
    from minitron import pipeline
    from minitron.errors import MinitronError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and any(o.startswith("nproc=") for o in args.overrides):
        raise MinitronError("nproc=N launches its own ranks; under torchrun leave it out (the world size is N)")
    recipe = _load_recipe(args, [f"nproc={world}"] if world > 1 else [])
    if args.command == "teacher-correct":
        recipe.stages = ["import", "teacher_correction"]
    else:  # a corrected teacher is used when the recipe lists teacher correction
        recipe.stages = [s for s in ("import", "teacher_correction", "prune", "distill")
                         if s != "teacher_correction" or s in recipe.stages]
    config_errors = recipe.check()
    if config_errors:
        raise MinitronError("; ".join(config_errors))
    if world > 1:
        return _train_under_torchrun(recipe)
    return _compact(pipeline.run(recipe))


def _train_under_torchrun(recipe) -> dict | None:
    """Every rank trains; rank 0 then exports and writes the stage folder (shared filesystem).

    Under an external torchrun (multi-node: torchrun's rendezvous) the earlier stages must be done
    already (`minitron run ... stages=[import, prune]`): they are single-process work.
    """
    import time

    from minitron import pipeline
    from minitron.runtime import distributed
    from minitron.stages import train_model
    from minitron.training.loop import train

    names = [n for n, _ in pipeline.planned_stages(recipe) if n == "teacher_correction" or n.startswith("distill-")]
    rank0 = int(os.environ["RANK"]) == 0
    for stage in names:
        out = recipe.stage_dir(stage)
        if (out / "summary.json").is_file():
            continue
        start = time.perf_counter()
        result = distributed.distributed_entry(train)(train_model.make_job(recipe, stage))
        # Export and the stage folder are rank 0's alone, in a world of one (loading the trained
        # NeMo checkpoint is a collective); the other ranks wait for its summary, as the next
        # stage reads it. If rank 0 fails, torchrun stops them.
        distributed.shutdown()
        if rank0:
            trained = (result, time.perf_counter() - start)
            with distributed.single_process():
                pipeline.run_stage(recipe, stage, lambda r, o, s=stage: train_model.run_stage(r, o, s, trained), out)
        while not (out / "summary.json").is_file():
            time.sleep(1)
    return {"stages": names, "output": str(recipe.stage_dir(""))} if rank0 else None


def cmd_export(args) -> dict:
    """`minitron export`: BF16 or FP8 (Model Optimizer PTQ), as a unified HF or a TensorRT-LLM checkpoint."""
    from deploy.export import export

    return export(_export_request(args, args.output, args.format))


def _export_request(args, output: str, fmt: str):
    """What `export` and `build-engine --model` ask Model Optimizer for: the recipe's `deploy` and `data`
    sections (defaults without --config) with the flags of _add_export_args on top."""
    from deploy.export import ExportRequest
    from minitron.data import DataConfig

    deploy, recipe = _deploy_config(args)
    data = recipe.data if recipe else DataConfig()
    if args.data_source:
        data.source = args.data_source
    return ExportRequest(model=args.model, output=output, format=fmt, dtype=deploy.dtype, tp=deploy.tp, pp=deploy.pp,
                         calib_samples=deploy.calib_samples, calib_seq_length=deploy.calib_seq_length,
                         calib_batch_size=deploy.calib_batch_size, kv_cache_fp8=deploy.kv_cache_fp8, data=data)


def _deploy_config(args):
    """(DeployConfig, recipe or None): --config's `deploy` section or the defaults, overridden by the flags.

    Without --config nothing of the training stack is imported: `build-engine --checkpoint` must run in
    the TensorRT-LLM container, which has no Megatron-Core.
    """
    from deploy.config import DeployConfig
    from minitron.errors import MinitronError

    if args.overrides and not args.config:
        raise MinitronError(f"key=value overrides {args.overrides} need --config RECIPE")
    recipe = None
    if args.config:
        from minitron import config
        from minitron.recipe import Recipe

        recipe = config.load(Recipe, args.config, args.overrides)
    deploy = recipe.deploy if recipe else DeployConfig()
    for field in dataclasses.fields(DeployConfig):
        if getattr(args, field.name, None) is not None:
            setattr(deploy, field.name, getattr(args, field.name))
    problems = deploy.check()
    if problems:
        raise MinitronError("; ".join(problems))
    return deploy, recipe


def cmd_build_engine(args) -> dict:
    """`minitron build-engine`: (optionally export, then) trtllm-build; exit 3 where no GPU/TensorRT-LLM."""
    from deploy.engine import EngineRequest, build_engine
    from deploy.export import export

    exported = None
    if args.model:
        if Path(args.checkpoint).exists() and any(Path(args.checkpoint).iterdir()):
            from minitron.errors import MinitronError

            raise MinitronError(f"{args.checkpoint}: exists; drop --model to build from it, or pass a new --checkpoint")
        exported = export(_export_request(args, args.checkpoint, "trtllm"))
        print(f"checkpoint written: {args.checkpoint}", file=sys.stderr)
    output = args.output or str(Path(args.checkpoint).with_name(Path(args.checkpoint).name + "-engine"))
    deploy, _ = _deploy_config(args)
    result = build_engine(EngineRequest(checkpoint=args.checkpoint, output=output, max_batch_size=deploy.max_batch_size,
                                        max_input_len=deploy.max_input_len, max_seq_len=deploy.max_seq_len,
                                        max_num_tokens=deploy.max_num_tokens, workers=args.workers))
    return {**result, "export": exported} if exported else result


def _add_export_args(e, engine: bool) -> None:
    """Flags shared by export and build-engine. Unset flags take the recipe's `deploy` section (--config)
    or its defaults (deploy/config.py)."""
    e.add_argument("--model", required=not engine, help="HF checkpoint folder, .gguf or embedded:<name>"
                   + ("; exports to --checkpoint first" if engine else ""))
    e.add_argument("--config", default=None, help="recipe YAML: its `deploy` section gives the defaults below, "
                   "its `data` section the calibration text")
    e.add_argument("overrides", nargs="*", help="key=value recipe overrides (with --config), e.g. deploy.tp=2")
    e.add_argument("--dtype", choices=["bf16", "fp8"], default=None, help="fp8: Model Optimizer FP8 PTQ (default)")
    e.add_argument("--tp", type=int, default=None, help="tensor-parallel ranks (trtllm only; default 1)")
    e.add_argument("--pp", type=int, default=None, help="pipeline-parallel ranks (trtllm only; default 1)")
    e.add_argument("--calib-samples", type=int, default=None, help="FP8 calibration samples, train split (64)")
    e.add_argument("--calib-seq-length", type=int, default=None, help="tokens per calibration sample (512)")
    e.add_argument("--calib-batch-size", type=int, default=None, help="calibration samples per forward pass (4)")
    e.add_argument("--kv-cache-fp8", action="store_true", default=None, help="also calibrate an FP8 KV cache")
    e.add_argument("--data-source", default=None, help="calibration text (default: the recipe's or embedded corpus)")
    if engine:
        e.add_argument("--max-batch-size", type=int, default=None, help="engine batch limit (8)")
        e.add_argument("--max-input-len", type=int, default=None, help="longest prompt in tokens (1024)")
        e.add_argument("--max-seq-len", type=int, default=None, help="longest prompt + output (2048)")
        e.add_argument("--max-num-tokens", type=int, default=None, help="tokens per scheduled batch")


def _write_summary(out: Path, summary: dict) -> None:
    from minitron.io import write_json_atomic

    write_json_atomic(out / "summary.json", summary)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minitron", description="Minitron pruning + distillation recipes")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert checkpoints between GGUF, HF and NeMo 2")
    c.add_argument("direction", choices=["gguf-to-hf", "hf-to-nemo", "nemo-to-hf"])
    c.add_argument("--input", required=True, help="source file or folder")
    c.add_argument("--output", help="target folder (must not exist or be empty); default runs/convert/...")
    c.add_argument("--dtype", default="float32", help="gguf-to-hf only: dtype of the written weights")
    c.set_defaults(func=cmd_convert)

    v = sub.add_parser("verify", help="compare Megatron (NeMo checkpoint) and HF logits")
    v.add_argument("--nemo", required=True)
    v.add_argument("--hf", required=True)
    v.add_argument("--tp", type=int, default=1)
    v.add_argument("--pp", type=int, default=1)
    v.add_argument("--text", default=None)
    v.add_argument("--logits-out", default=None, help="also save the Megatron logits (safetensors)")
    v.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    v.set_defaults(func=cmd_verify)

    j = sub.add_parser("prune-job", help="(internal) one pruning job, run on every rank under torchrun")
    j.add_argument("job", help="job JSON written by the prune stage")
    j.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    j.set_defaults(func=cmd_prune_job)

    t = sub.add_parser("train-job", help="(internal) one training job, run on every rank under torchrun")
    t.add_argument("job", help="job JSON written by the distill / teacher-correction stage")
    t.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train_job)

    m = sub.add_parser("model", help="embedded default model")
    m.add_argument("which", choices=["default"])
    m.set_defaults(func=cmd_model)

    e = sub.add_parser("export", help="export BF16/FP8 as a unified HF or a TensorRT-LLM checkpoint")
    _add_export_args(e, engine=False)
    e.add_argument("--format", choices=["hf", "trtllm"], default="trtllm")
    e.add_argument("--output", required=True, help="target folder (must not exist or be empty)")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("build-engine", help="TensorRT engine with trtllm-build (TensorRT-LLM 1.2; GPU); "
                                            "exit 3 when no GPU/TensorRT-LLM")
    b.add_argument("--checkpoint", required=True, help="TensorRT-LLM checkpoint folder (written first with --model)")
    _add_export_args(b, engine=True)
    b.add_argument("--output", default=None, help="engine folder (default: <checkpoint>-engine)")
    b.add_argument("--workers", type=int, default=1, help="parallel builds (one per rank on multi-GPU hosts)")
    b.set_defaults(func=cmd_build_engine)

    from deploy.serving import client as serving_client
    from deploy.serving import server as serving_server

    s = sub.add_parser("serve", help="serve a model: PyTriton (HTTP/gRPC) + OpenAI-compatible API")
    serving_server.add_arguments(s)
    s.set_defaults(func=cmd_serve)

    q = sub.add_parser("query", help="send one request to a running `minitron serve`")
    serving_client.add_arguments(q)
    q.set_defaults(func=cmd_query)

    for name, func, text in (("run", cmd_run, "run a recipe end to end (stages cached)"),
                             ("config", cmd_config, "print a recipe's resolved config"),
                             ("distill", cmd_train_stage, "distil the recipe's pruned students "
                                                          "(runs import/prune first if needed; nproc=N)"),
                             ("teacher-correct", cmd_train_stage, "fine-tune the recipe's teacher (nproc=N)")):
        r = sub.add_parser(name, help=text)
        r.add_argument("--config", required=True, help="recipe YAML")
        r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. parallel.tensor_parallel=2")
        if name != "config":
            r.add_argument("--output", help="output root (default: the recipe's output_root)")
        else:
            r.add_argument("--explain", action="store_true", help="also print every key's documentation")
        r.set_defaults(func=func)

    for name, text in (("eval", "measure every model of a recipe's run: perplexity, lm-eval tasks, speed"),
                       ("report", "write report.md and plots for a recipe's run")):
        e = sub.add_parser(name, help=text)
        e.add_argument("--config", required=True, help="recipe YAML")
        e.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval.lm_eval.limit=50")
        e.add_argument("--output", help="output root (default: the recipe's output_root)")
        if name == "eval":
            e.add_argument("--model", action="append", metavar="NAME=HF_DIR",
                           help="also evaluate this HF checkpoint (e.g. a quantized export); repeatable")
        e.set_defaults(func=cmd_eval_report)
    return p


def main(argv: list[str] | None = None) -> int:
    from minitron.errors import MinitronError

    quiet_third_party_warnings()
    args = parser().parse_args(argv)
    try:
        result = args.func(args)
    except MinitronError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 3: build-engine had no GPU/TensorRT-LLM (checkpoint is fine)
    if result is not None and args.command != "model":
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
