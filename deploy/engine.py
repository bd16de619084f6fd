"""TensorRT engines from TensorRT-LLM checkpoints with ``trtllm-build`` (TensorRT-LLM 1.2.x).

The TensorRT-engine path (``trtllm-build``) was removed from TensorRT-LLM main in 2026; 1.2.x is
the last line that has it, so the version is checked before anything runs. ``trtllm-build``
needs an NVIDIA GPU and the TensorRT-LLM container (``nvcr.io/nvidia/tensorrt-llm/release:1.2.x``).
Elsewhere ``minitron build-engine`` validates (and, with ``--model``, first writes) the checkpoint,
then stops with one line and exit status 3 (``EngineUnavailable``): the checkpoint is ready to be
carried to a GPU machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from minitron.deploy.config import DeployConfig
from minitron.deploy.export import deploy_settings, export, export_request
from minitron.deploy.trtllm_format import validate_checkpoint
from minitron.errors import MinitronError
from minitron.io import atomic_output_dir, check_output_dir

SUPPORTED_TRTLLM = "1.2."


class EngineUnavailable(MinitronError):
    """No GPU / no TensorRT-LLM 1.2 here: the checkpoint is written, the engine is not built."""

    exit_code = 3


@dataclass
class EngineRequest:
    checkpoint: str                              # TensorRT-LLM checkpoint folder
    output: str                                  # engine folder (must not exist or be empty)
    deploy: DeployConfig = field(default_factory=DeployConfig)  # engine lengths and batch
    workers: int = 1                             # parallel builds (one per rank on multi-GPU hosts)


def build_engine(req: EngineRequest) -> dict:
    """Validate the checkpoint, then run trtllm-build into an atomic output folder."""
    _check_lengths(req)
    checkpoint = validate_checkpoint(req.checkpoint)
    check_output_dir(Path(req.output))
    reason = unavailable_reason()
    if reason:
        raise EngineUnavailable(f"engine not built: {reason}; the checkpoint {req.checkpoint} is valid "
                                f"({checkpoint['dtype']}, quant {checkpoint['quant_algo']}, tp {checkpoint['tp']} "
                                f"pp {checkpoint['pp']}; engine max_batch_size {req.deploy.max_batch_size} max_input_len "
                                f"{req.deploy.max_input_len} max_seq_len {req.deploy.max_seq_len}): run this command in the "
                                "TensorRT-LLM 1.2 container on a GPU machine (deploy/gpu_checks.sh)")
    with atomic_output_dir(req.output) as tmp:
        command = trtllm_build_command(req, tmp)
        result = subprocess.run(command, capture_output=True, text=True)
        (tmp / "build.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no output"])[-1]
            raise MinitronError(f"trtllm-build failed (exit {result.returncode}): {last}")
    return {"engine": req.output, "checkpoint": checkpoint, "command": command,
            "tensorrt_llm": _trtllm_version()}


def _check_lengths(req: EngineRequest) -> None:
    problems = req.deploy.check() + ([f"--workers {req.workers} must be >= 1"] if req.workers < 1 else [])
    if problems:
        raise MinitronError("; ".join(problems))


def trtllm_build_command(req: EngineRequest, output_dir: Path) -> list[str]:
    """The trtllm-build call (TensorRT-LLM 1.2 flags). FP8 checkpoints need no extra flag: the
    quantization comes from the checkpoint's config.json."""
    command = ["trtllm-build", "--checkpoint_dir", str(req.checkpoint), "--output_dir", str(output_dir),
               "--max_batch_size", str(req.deploy.max_batch_size), "--max_input_len", str(req.deploy.max_input_len),
               "--max_seq_len", str(req.deploy.max_seq_len), "--gemm_plugin", "auto", "--workers", str(req.workers)]
    if req.deploy.max_num_tokens:
        command += ["--max_num_tokens", str(req.deploy.max_num_tokens)]
    return command


def unavailable_reason() -> str | None:
    """Why trtllm-build cannot run here (None when it can). Cheap: imports nothing heavy."""
    import torch

    version = _trtllm_version()
    if version is None:
        return "TensorRT-LLM is not installed (pip package tensorrt_llm 1.2.x)"
    if not version.startswith(SUPPORTED_TRTLLM):
        return f"TensorRT-LLM {version} is installed but engines need 1.2.x (the TensorRT backend left later releases)"
    if shutil.which("trtllm-build") is None:
        return "trtllm-build is not on PATH"
    if not torch.cuda.is_available():
        return "no NVIDIA GPU is visible (torch.cuda.is_available() is False)"
    return None


def _trtllm_version() -> str | None:
    for name in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def build_engine_command(args) -> dict:
    """`minitron build-engine`: (optionally export, then) trtllm-build; exit 3 where no GPU/TensorRT-LLM.

    Without --config and --model nothing of the training stack runs: this is what the TensorRT-LLM
    container (no Megatron-Core, no Model Optimizer) executes.
    """
    exported = None
    if args.model:
        if Path(args.checkpoint).exists() and any(Path(args.checkpoint).iterdir()):
            raise MinitronError(f"{args.checkpoint}: exists; drop --model to build from it, or pass a new --checkpoint")
        exported = export(export_request(args, args.checkpoint, "trtllm"))
        print(f"checkpoint written: {args.checkpoint}", file=sys.stderr)
    output = args.output or str(Path(args.checkpoint).with_name(Path(args.checkpoint).name + "-engine"))
    deploy, _ = deploy_settings(args)
    result = build_engine(EngineRequest(checkpoint=args.checkpoint, output=output, deploy=deploy, workers=args.workers))
    return {**result, "export": exported} if exported else result
