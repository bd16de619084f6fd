"""`minitron`: one command, one subcommand per job. This module only parses and dispatches.

The usage text lives in the parser (`minitron --help`, `minitron <command> --help`). Each subcommand names
its function as ``"module:function"`` (COMMANDS); only the chosen one is imported, so `minitron serve --help`
or `build-engine` in the TensorRT-LLM container never load Megatron-Core. Every function takes the parsed
arguments and returns what is printed as JSON (or None).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings

from minitron import config
from minitron.cluster.config import add_arguments as launch_arguments
from minitron.deploy.config import DeployConfig
from minitron.deploy.serving import client as serving_client
from minitron.deploy.serving import server as serving_server
from minitron.errors import MinitronError
from minitron.recipe import DEFAULT_RECIPE
from minitron.runtime import cpu_runtime

REPO = DEFAULT_RECIPE.parents[1]

#: subcommand -> "module:function" that runs it.
COMMANDS = {
    "run": "minitron.pipeline:run_command",
    "plan": "minitron.plan:plan_command",
    "launch": "minitron.cluster.launch:launch_command",
    "prune": "minitron.pipeline:train_command",
    "distill": "minitron.pipeline:train_command",
    "teacher-correction": "minitron.pipeline:train_command",
    "eval": "minitron.pipeline:eval_command",
    "report": "minitron.pipeline:eval_command",
    "config": "minitron.recipe:show_config",
    "data": "minitron.pipeline:data_command",
    "convert": "minitron.conversion.convert:convert_command",
    "verify": "minitron.conversion.verify:verify_command",
    "model": "minitron.pipeline:model_command",
    "export": "minitron.deploy.export:export_command",
    "runtimes": "minitron.deploy.runtimes:runtimes_command",
    "build-engine": "minitron.deploy.engine:build_engine_command",
    "serve": "minitron.deploy.serving.server:serve",
    "query": "minitron.deploy.serving.client:query",
}


#: Subcommands that compute with torch on this machine: they run under the tuned CPU runtime (Intel OpenMP,
#: tcmalloc) where it is installed. Serving keeps its own thread settings (deploy/serving/server.py).
COMPUTE_COMMANDS = {"run", "prune", "distill", "teacher-correction", "eval", "verify", "export", "convert", "data",
                    "runtimes"}
#: Old subcommand names that still work, each saying once which name replaced it.
DEPRECATED = {"teacher-correct": "teacher-correction"}
#: Subcommands that read a recipe (--config, default: the CPU demo's) and take key=value overrides.
RECIPE_COMMANDS = {"run", "plan", "prune", "distill", "teacher-correction", "eval", "report", "config", "data",
                   "runtimes"}


def quiet_third_party_warnings() -> None:
    # Megatron/DCP warn about Apex, TE and CPU tensors on every import; set
    # MINITRON_SHOW_WARNINGS=1 to see them.
    if os.environ.get("MINITRON_SHOW_WARNINGS") != "1":
        for module in ("megatron", "torch.distributed", "modelopt", "transformers"):
            warnings.filterwarnings("ignore", module=module)
        warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).* not installed")


def _recipe_command(sub, name: str, text: str, overrides_example: str = "parallel.tensor_parallel=2",
                    output: bool = True, **kwargs):
    p = sub.add_parser(name, help=text, **kwargs)
    _recipe_arguments(p, overrides_example)
    if output:
        p.add_argument("--output", help="output root (default: the recipe's output_root)")
    return p


def _recipe_arguments(p, overrides_example: str) -> None:
    p.add_argument("--config", default=None, help=f"recipe YAML (default: {DEFAULT_RECIPE.relative_to(REPO)}, the "
                                                  "CPU demo)")
    p.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {overrides_example}")


def _deploy_command(sub, name: str, text: str, engine: bool):
    """export / build-engine: the recipe's `deploy` fields as flags (unset flags keep the recipe's values)."""
    p = sub.add_parser(name, help=text)
    p.add_argument("--model", required=not engine, help="HF checkpoint folder, .gguf or embedded:<name>"
                   + ("; exports to --checkpoint first" if engine else ""))
    p.add_argument("--config", default=None, help="recipe YAML: its `deploy` section gives the defaults of the flags "
                   "below, its `data` section the calibration text")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides (with --config), e.g. deploy.tp=2")
    p.add_argument("--data-source", default=None, help="calibration text (default: the recipe's or embedded corpus)")
    engine_only = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")
    config.add_flags(p, DeployConfig, skip=() if engine else engine_only)
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minitron", description="Minitron pruning + distillation recipes")
    sub = p.add_subparsers(dest="command", required=True)

    _recipe_command(sub, "run", "run a recipe end to end (stages cached)")
    c = _recipe_command(sub, "plan", "memory per GPU, tokens/s and wall time of a recipe's training stages on a "
                                     "cluster; refuses layouts that cannot fit or do not divide the GPUs",
                        "parallel.tensor_parallel=8", output=False)
    c.add_argument("--nodes", type=int, required=True)
    c.add_argument("--gpus-per-node", type=int, default=8)
    c.add_argument("--gpu", default="h100-80gb", help="h100-80gb, h200-141gb, a100-80gb, b200-180gb")
    c.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization assumed for throughput")
    c.add_argument("--recompute", action="store_true", help="full activation recomputation")
    c.add_argument("--teacher", default=None, help="llama3.1-8b or an HF folder, when model.source is not here")
    launch_arguments(sub.add_parser("launch", help="submit a minitron command (a whole recipe: one task per stage) "
                                                   "with NVIDIA NeMo-Run: local, docker, slurm, dgxcloud, lepton"))
    _recipe_command(sub, "prune", "prune the recipe's students (import and, when the recipe corrects the teacher, "
                                  "teacher correction first)", "prune.only=[width]")
    _recipe_command(sub, "distill", "distil the recipe's pruned students (runs import/prune first if needed; nproc=N)")
    _recipe_command(sub, "teacher-correction", "fine-tune the recipe's teacher on the distillation data (nproc=N)",
                    aliases=list(DEPRECATED))
    e = _recipe_command(sub, "eval", "measure every model of a recipe's run: perplexity, lm-eval tasks, speed",
                        "eval.lm_eval.limit=50")
    e.add_argument("--model", action="append", metavar="NAME=HF_DIR",
                   help="also evaluate this HF checkpoint (e.g. a quantized export); repeatable")
    _recipe_command(sub, "report", "write report.md and plots for a recipe's run")
    r = _recipe_command(sub, "runtimes", "the run's corrected teacher and distilled students in every runtime format "
                                         "(GGUF, ONNX), each checked and timed there, for the report's Runtimes table")
    r.add_argument("--overwrite", action="store_true", help="redo models that have runtimes.json already")
    c = _recipe_command(sub, "config", "print a recipe's resolved config", output=False)
    c.add_argument("--explain", action="store_true", help="also print every key's documentation")

    d = sub.add_parser("data", help="tokenize a recipe's data.source into Megatron indexed datasets (train/validation/"
                                    "test), on N processes; the folder can go into another recipe's data.blend")
    d.add_argument("action", choices=["prepare"])
    _recipe_arguments(d, "data.source=/data/web/shards")
    d.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: data.workers)")
    d.add_argument("--output", default=None, help="write the dataset here instead of the cache (shared storage)")
    d.add_argument("--tokenizer", default=None, help="HF tokenizer folder (default: model.source's)")

    c = sub.add_parser("convert", help="convert checkpoints between GGUF, HF and NeMo 2")
    c.add_argument("direction", choices=["gguf-to-hf", "hf-to-nemo", "nemo-to-hf", "nemo-context"],
                   help="nemo-context: give a NeMo 2 checkpoint of this repository NeMo's own context "
                        "(io.json), in place")
    c.add_argument("--input", required=True, help="source file or folder")
    c.add_argument("--output", help="target folder (must not exist or be empty); default runs/convert/...")
    c.add_argument("--dtype", default="float32", help="gguf-to-hf only: dtype of the written weights")

    v = sub.add_parser("verify", help="compare Megatron (NeMo checkpoint) and HF logits")
    v.add_argument("--nemo", required=True)
    v.add_argument("--hf", required=True)
    v.add_argument("--tp", type=int, default=1)
    v.add_argument("--pp", type=int, default=1)
    v.add_argument("--text", default=None)
    v.add_argument("--logits-out", default=None, help="also save the Megatron logits (safetensors)")
    v.add_argument("--result-file", default=None, help=argparse.SUPPRESS)

    m = sub.add_parser("model", help="a model's folder: default = the embedded model; newest = the product of a "
                                     "run's newest distillation, else the embedded model")
    m.add_argument("which", choices=["default", "newest"])
    _recipe_arguments(m, "output_root=/scratch/runs")
    m.add_argument("--output", help="output root of the run (newest; default: the recipe's output_root)")

    e = _deploy_command(sub, "export", "export BF16/FP8 as a unified HF or a TensorRT-LLM checkpoint, a GGUF file "
                                       "for llama.cpp, or an ONNX Runtime GenAI folder", engine=False)
    e.add_argument("--format", choices=["hf", "trtllm", "gguf", "onnx"], default="trtllm")
    e.add_argument("--output", required=True, help="target folder (must not exist or be empty); for gguf a .gguf file")
    e.add_argument("--gguf-dtype", choices=["f32", "f16", "bf16", "q8_0"], default="f16",
                   help="GGUF tensor type (--format gguf)")
    e.add_argument("--onnx-precision", choices=["fp32", "int4"], default="fp32",
                   help="ONNX weights (--format onnx; CPU execution provider)")
    e.add_argument("--all", action="store_true", help="every runtime format (GGUF f32/bf16/q8_0, ONNX fp32/int4) "
                                                      "into the --output folder, each checked and timed in its "
                                                      "runtime (runtimes.json); --format is ignored")
    e.add_argument("--overwrite", action="store_true", help="replace an existing export (--format gguf or onnx, "
                                                            "--all)")
    e.add_argument("--check", action="store_true", help="--format gguf/onnx: run the export in llama.cpp / ONNX "
                                                        "Runtime and compare with transformers (greedy match, "
                                                        "max |Δ logprob|)")

    b = _deploy_command(sub, "build-engine", "TensorRT engine with trtllm-build (TensorRT-LLM 1.2; GPU); "
                                             "exit 3 when no GPU/TensorRT-LLM", engine=True)
    b.add_argument("--checkpoint", required=True, help="TensorRT-LLM checkpoint folder (written first with --model)")
    b.add_argument("--output", default=None, help="engine folder (default: <checkpoint>-engine)")
    b.add_argument("--workers", type=int, default=1, help="parallel builds (one per rank on multi-GPU hosts)")

    serving_server.add_arguments(sub.add_parser("serve", help="serve a model: PyTriton (HTTP/gRPC) + "
                                                               "OpenAI-compatible API"))
    serving_client.add_arguments(sub.add_parser("query", help="send one request to a running `minitron serve`"))
    assert set(sub.choices) == set(COMMANDS) | set(DEPRECATED), "every subcommand needs a COMMANDS entry"
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_third_party_warnings()
    args = parser().parse_args(argv)
    if args.command in DEPRECATED:
        print(f"note: `minitron {args.command}` is deprecated: use `minitron {DEPRECATED[args.command]}`",
              file=sys.stderr)
        args.command = DEPRECATED[args.command]
    module, function = COMMANDS[args.command].split(":")
    try:
        result = getattr(importlib.import_module(module), function)(args)
    except MinitronError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 3: build-engine had no GPU/TensorRT-LLM (checkpoint is fine)
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


def entry() -> None:
    """The `minitron` command. A compute subcommand first re-runs itself once under the tuned CPU runtime
    (`minitron.runtime.cpu_runtime`); `main` itself never does, so in-process callers are safe."""
    if sys.argv[1:2] and DEPRECATED.get(sys.argv[1], sys.argv[1]) in COMPUTE_COMMANDS:
        cpu_runtime.use_tuned_runtime()
    sys.exit(main())


if __name__ == "__main__":
    entry()
