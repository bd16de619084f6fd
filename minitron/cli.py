"""`minitron`: one command, one subcommand per job. Makefile targets wrap these.

    minitron run --config recipes/<recipe>.yaml [key=value ...]
    minitron distill --config recipes/<recipe>.yaml [nproc=N] [key=value ...]
    minitron teacher-correct --config recipes/<recipe>.yaml [nproc=N] [key=value ...]
    minitron convert {gguf-to-hf,hf-to-nemo,nemo-to-hf} --input IN --output OUT
    minitron verify --nemo NEMO_DIR --hf HF_DIR [--tp N --pp N]   (under torchrun for N > 1)
    minitron model default                                         (path of the embedded model)
    minitron config --config FILE [key=value ...]                  (resolved config, documented)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path


def _quiet_third_party_warnings() -> None:
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
    from minitron import config, pipeline
    from minitron.recipe import Recipe

    recipe = config.load(Recipe, args.config, args.overrides)
    if args.output:
        recipe.output_root = str(Path(args.output))
    return pipeline.run(recipe)


def _load_with_nproc(path, overrides: list[str]):
    """Load a recipe; `nproc=N` among the overrides sets DP so that TP * PP * DP = N."""
    from minitron import config
    from minitron.errors import MinitronError
    from minitron.recipe import Recipe

    nproc = [int(o.split("=", 1)[1]) for o in overrides if o.startswith("nproc=")]
    recipe = config.load(Recipe, path, [o for o in overrides if not o.startswith("nproc=")])
    for n in nproc:
        mp = recipe.parallel.tensor_parallel * recipe.parallel.pipeline_parallel
        if n < 1 or n % mp:
            raise MinitronError(f"nproc={n} is not a multiple of tensor_parallel x pipeline_parallel = {mp}")
        recipe.parallel.data_parallel = n // mp
    return recipe


def cmd_train_stage(args) -> dict:
    """`minitron distill` / `minitron teacher-correct`: the recipe up to that stage (cached stages skip)."""
    import os

    from minitron import pipeline
    from minitron.errors import MinitronError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MinitronError(f"`minitron {args.command}` launches its own ranks (nproc=N); under an external "
                            "torchrun (e.g. multi-node) run `minitron train-job <stage>.work/job.json` instead")
    recipe = _load_with_nproc(args.config, args.overrides)
    if args.command == "teacher-correct":
        recipe.stages = ["import", "teacher_correction"]
    else:  # a corrected teacher is used when the recipe lists teacher correction
        recipe.stages = [s for s in ("import", "teacher_correction", "prune", "distill")
                         if s != "teacher_correction" or s in recipe.stages]
    if args.output:
        recipe.output_root = str(Path(args.output))
    config_errors = recipe.check()
    if config_errors:
        raise MinitronError("; ".join(config_errors))
    return pipeline.run(recipe)


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
    return p


def main(argv: list[str] | None = None) -> int:
    from minitron.errors import MinitronError

    _quiet_third_party_warnings()
    args = parser().parse_args(argv)
    try:
        result = args.func(args)
    except MinitronError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is not None and args.command != "model":
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
