"""Export a Llama HF checkpoint as BF16 or FP8: a unified HF checkpoint or a TensorRT-LLM checkpoint.

Both writers are Model Optimizer's (``export_hf_checkpoint``, ``export_tensorrt_llm_checkpoint``);
this module adds what a deployable folder also needs and checks the result:

* inputs are checked first (Llama only, weights agree with config.json, TP/PP divide the shape,
  output folder absent or empty), so a bad request fails in one line before any work;
* everything is written into a temporary folder renamed into place on success
  (``minitron.io.atomic_output_dir``), so a failure leaves nothing behind;
* the TensorRT-LLM config gets ``rotary_base`` / ``rotary_scaling`` from the HF config: Model
  Optimizer 0.43 fills them from ``config.rope_theta`` / ``rope_scaling``, which transformers 5
  moved into ``rope_parameters``, so without this a Llama 3.1 engine would silently use RoPE
  base 10000 and no llama3 scaling;
* tied embeddings (SmolLM2): Model Optimizer writes ``lm_head`` explicitly (a copy of the
  embedding), which the last pipeline stage needs anyway since it holds no embedding;
* every TensorRT-LLM checkpoint is validated against TensorRT-LLM 1.2's Llama definition
  (``minitron.deploy.trtllm_format``); every HF export is re-read (names, dtypes, FP8 scales).
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minitron import config
from minitron.conversion.hf_checkpoint import SafetensorsReader, copy_sidecars
from minitron.data import DataConfig
from minitron.deploy.config import DeployConfig
from minitron.deploy.quantize import calibration_tokens, load_llama, quantize_fp8
from minitron.deploy.trtllm_format import validate_checkpoint
from minitron.errors import MinitronError
from minitron.io import atomic_output_dir, check_output_dir
from minitron.models import resolve_hf_source
from minitron.recipe import Recipe, load_recipe
from minitron.runtime.llama import LlamaArch
from minitron.runtime.precision import resolve as resolve_precision

FORMATS = ("hf", "trtllm")


@dataclass
class ExportRequest:
    model: str                                   # HF folder, .gguf or embedded:<name>
    output: str                                  # folder to write (must not exist or be empty)
    format: str = "trtllm"                       # one of FORMATS
    deploy: DeployConfig = field(default_factory=DeployConfig)  # dtype, TP/PP, calibration
    data: DataConfig | None = None               # calibration text; None = the default corpus


def export(req: ExportRequest) -> dict:
    """Run one export; returns the summary that is also written to <output>/export.json."""
    _check_request(req)
    check_output_dir(Path(req.output))
    hf_dir = resolve_hf_source(req.model)
    model, arch = _load_checked(hf_dir, req)
    summary = {"source": str(hf_dir), "format": req.format, "dtype": req.deploy.dtype, "tp": req.deploy.tp, "pp": req.deploy.pp}
    if req.deploy.dtype == "fp8":
        summary["quantization"] = _calibrate(model, hf_dir, req)
    for p in model.parameters():  # the exporters keep the weights' dtype; the quantizers' scales stay fp32
        p.data = p.data.to(torch.bfloat16)
    with atomic_output_dir(req.output) as tmp:
        if req.format == "hf":
            summary["checkpoint"] = _write_hf(model, hf_dir, tmp)
        else:
            summary["checkpoint"] = _write_trtllm(model, hf_dir, tmp, req, arch)
        summary["modelopt_version"] = _modelopt_version()
        (tmp / "export.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["output"] = str(req.output)
    return summary


def _check_request(req: ExportRequest) -> None:
    if req.format not in FORMATS:
        raise MinitronError(f"--format {req.format!r}: use one of {list(FORMATS)}")
    problems = req.deploy.check()
    if problems:
        raise MinitronError("; ".join(problems))
    if req.format == "hf" and (req.deploy.tp, req.deploy.pp) != (1, 1):
        raise MinitronError("--tp/--pp apply to --format trtllm only (a HF checkpoint is not sharded by rank)")


def _load_checked(hf_dir: Path, req: ExportRequest):
    """Refuse a layout the model cannot be split into (from config.json alone), then load it."""
    arch = LlamaArch.from_hf_dir(hf_dir)
    problems = [f"{name} {value} is not divisible by --tp {req.deploy.tp}" for name, value in
                (("num_attention_heads", arch.num_attention_heads), ("num_key_value_heads", arch.num_query_groups),
                 ("intermediate_size", arch.ffn_hidden_size)) if value % req.deploy.tp]
    if arch.num_layers % req.deploy.pp:
        problems.append(f"num_hidden_layers {arch.num_layers} is not divisible by --pp {req.deploy.pp}")
    if problems:
        raise MinitronError(f"{hf_dir}: " + "; ".join(problems))
    # Calibration runs at the hardware's precision (fp32 where the CPU lacks native bf16: bf16 there is
    # hundreds of times slower); both exporters write bf16 (+FP8) whatever the model was loaded in.
    precision = resolve_precision(req.deploy.calib_dtype if req.deploy.dtype == "fp8" else "bf16")
    return load_llama(hf_dir, precision.dtype)


def _calibrate(model, hf_dir: Path, req: ExportRequest) -> dict:
    data_cfg = req.data or DataConfig()
    tokens = calibration_tokens(hf_dir, data_cfg, req.deploy.calib_samples, req.deploy.calib_seq_length)
    with _quiet_modelopt():
        result = quantize_fp8(model, tokens, req.deploy.calib_batch_size, req.deploy.kv_cache_fp8)
    return {**result, "data_source": data_cfg.source, "split": "train",
            "precision": str(next(model.parameters()).dtype).replace("torch.", "")}


@contextlib.contextmanager
def _quiet_modelopt():
    """Model Optimizer prints progress to stdout and warns when tensorrt_llm is absent (expected
    here: it then builds the config itself). Keep stdout clean for the CLI's JSON summary."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*(tensorrt_llm|Trying the manual approach).*")
        warnings.filterwarnings("ignore", module=r"modelopt.*")
        yield


# ---- unified HF checkpoint ---------------------------------------------------------------------
def _write_hf(model, hf_dir: Path, out: Path) -> dict:
    from modelopt.torch.export import export_hf_checkpoint

    with _quiet_modelopt():
        export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=out)
    copy_sidecars(hf_dir, out)  # tokenizer and chat template: the folder must serve on its own
    return check_hf_export(out)


def check_hf_export(out: Path) -> dict:
    """Re-read an exported HF folder: Llama config, BF16 tensors, and for FP8 the quantization
    config plus a positive float32 weight_scale/input_scale beside every FP8 weight."""
    cfg = json.loads((out / "config.json").read_text())
    LlamaArch.from_hf_config({k: v for k, v in cfg.items() if k != "quantization_config"}, str(out / "config.json"))
    reader = SafetensorsReader(out)
    fp8 = [n for n, (_, _, d) in reader.meta.items() if d == torch.float8_e4m3fn]
    quant = cfg.get("quantization_config")
    if fp8 and (not quant or quant.get("quant_algo") != "FP8"):
        raise MinitronError(f"{out}: FP8 weights without an FP8 quantization_config in config.json")
    scales = {n for n in reader.meta if n.endswith("_scale")}  # weight/input, and k/v with an FP8 KV cache
    for name in fp8:
        missing = {name.replace(".weight", f".{s}") for s in ("weight_scale", "input_scale")} - scales
        if missing:
            raise MinitronError(f"{out}: FP8 weight {name} without its {sorted(missing)[0]}")
    for name in sorted(scales):
        _check_scale(reader, name, out)
    other = {str(d) for n, (_, _, d) in reader.meta.items() if n not in fp8 and not n.endswith("_scale")}
    if other != {"torch.bfloat16"}:
        raise MinitronError(f"{out}: unquantized tensors must be bfloat16, found {sorted(other)}")
    return {"tensors": len(reader.meta), "fp8_weights": len(fp8),
            "quant_algo": quant.get("quant_algo") if quant else None,
            "kv_cache_quant_algo": _hf_kv_algo(out)}


def _check_scale(reader, name: str, out: Path) -> None:
    from safetensors import safe_open

    path, _, dtype = reader.meta[name]
    with safe_open(path, framework="pt") as f:
        value = f.get_tensor(name)
    if dtype != torch.float32 or not bool((value > 0).all()) or not bool(torch.isfinite(value).all()):
        raise MinitronError(f"{out}: {name} must be a finite positive float32 scale, got {value.tolist()} {dtype}")


def _hf_kv_algo(out: Path):
    path = out / "hf_quant_config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("quantization", {}).get("kv_cache_quant_algo")


# ---- TensorRT-LLM checkpoint -------------------------------------------------------------------
def _write_trtllm(model, hf_dir: Path, out: Path, req: ExportRequest, arch) -> dict:
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    with _quiet_modelopt():
        export_tensorrt_llm_checkpoint(model, "llama", torch.bfloat16, out, inference_tensor_parallel=req.deploy.tp,
                                       inference_pipeline_parallel=req.deploy.pp)
    cfg = json.loads((out / "config.json").read_text())
    _complete_config(cfg, json.loads((hf_dir / "config.json").read_text()))
    (out / "config.json").write_text(json.dumps(cfg, indent=4) + "\n")
    if cfg["quantization"].get("quant_algo") != "MIXED_PRECISION":
        (out / "quant_cfg.json").unlink(missing_ok=True)  # only read for mixed precision
    _check_against_hf(cfg, arch, out)
    copy_sidecars(hf_dir, out)  # the tokenizer travels with the checkpoint (trtllm-build ignores it)
    return validate_checkpoint(out)


def _complete_config(cfg: dict, hf_cfg: dict) -> None:
    """Set the RoPE fields from the HF config (see the module docstring for why), float32 logits."""
    rope = dict(hf_cfg.get("rope_parameters") or hf_cfg.get("rope_scaling") or {})
    cfg["rotary_base"] = float(rope.get("rope_theta", hf_cfg.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in (None, "default"):
        cfg["rotary_scaling"] = None
    else:  # TensorRT-LLM reads the kind from "type" (or "rope_type"); keep both.
        cfg["rotary_scaling"] = {**{k: v for k, v in rope.items() if k != "rope_theta"}, "type": kind,
                                 "rope_type": kind}
    cfg["tie_word_embeddings"] = bool(hf_cfg.get("tie_word_embeddings", False))
    # Model Optimizer asks for float16 logits; an engine's logits are compared with (and sampled
    # like) the HF model's, so keep them float32 (the GEMM itself stays in the model dtype).
    cfg["logits_dtype"] = "float32"
    # Model Optimizer leaves the rank of the last file it wrote in the shared config; the rank of
    # a process comes from the mapping at load time, so drop the misleading field.
    cfg.pop("rank", None)


def _check_against_hf(cfg: dict, arch, out: Path) -> None:
    """The exported config must describe the same model as the HF source."""
    pairs = {"num_hidden_layers": arch.num_layers, "hidden_size": arch.hidden_size,
             "num_attention_heads": arch.num_attention_heads, "num_key_value_heads": arch.num_query_groups,
             "head_size": arch.head_dim, "intermediate_size": arch.ffn_hidden_size, "vocab_size": arch.vocab_size}
    wrong = {k: (cfg.get(k), v) for k, v in pairs.items() if cfg.get(k) != v}
    if wrong:
        raise MinitronError(f"{out}/config.json disagrees with the HF source on {wrong} (exported, expected)")


def _modelopt_version() -> str:
    from importlib.metadata import version

    return version("nvidia-modelopt")


# ---- the commands: the recipe's `deploy` section, then the flags -----------------------------------
def deploy_settings(args) -> tuple[DeployConfig, Recipe | None]:
    """(DeployConfig, recipe or None): --config's `deploy` section or the defaults, then every flag that
    was given (the flags are DeployConfig's own fields, `config.add_flags`)."""
    if args.overrides and not args.config:
        raise MinitronError(f"key=value overrides {args.overrides} need --config RECIPE")
    recipe = load_recipe(args.config, args.overrides) if args.config else None
    deploy = config.apply_flags(recipe.deploy if recipe else DeployConfig(), args)
    problems = deploy.check()
    if problems:
        raise MinitronError("; ".join(problems))
    return deploy, recipe


def export_request(args, output: str, fmt: str) -> ExportRequest:
    """What `export` and `build-engine --model` ask Model Optimizer for; calibration text from the
    recipe's `data` section (or --data-source)."""
    deploy, recipe = deploy_settings(args)
    data = recipe.data if recipe else DataConfig()
    if args.data_source:
        data.source = args.data_source
    return ExportRequest(model=args.model, output=output, format=fmt, deploy=deploy, data=data)


def export_command(args) -> dict:
    """`minitron export`: BF16 or FP8 (Model Optimizer PTQ), as a unified HF or a TensorRT-LLM checkpoint; or
    one GGUF file for llama.cpp (`minitron.deploy.gguf_export`) or an ONNX Runtime GenAI folder
    (`minitron.deploy.onnx_export`), each checked in its runtime with --check."""
    if args.all:
        from minitron.deploy.runtimes import export_all

        if args.overrides or args.config:
            raise MinitronError("--all takes no recipe (--config, overrides): it converts --model as it is")
        return export_all(resolve_hf_source(args.model), args.output, args.overwrite)
    if args.format in ("gguf", "onnx"):
        return runtime_export_command(args)
    for flag in ("overwrite", "check"):
        if getattr(args, flag):
            raise MinitronError(f"--{flag} applies to --format gguf and onnx only")
    return export(export_request(args, args.output, args.format))


def runtime_export_command(args) -> dict:
    """--format gguf / onnx: the checkpoint as it is, for llama.cpp / ONNX Runtime; --check runs it there."""
    from minitron.conversion.sample_text import SAMPLE_TEXT

    if args.overrides or args.config:
        raise MinitronError(f"--format {args.format} takes no recipe (--config, overrides): it converts --model "
                            "as it is")
    hf_dir = resolve_hf_source(args.model)
    if args.format == "gguf":
        from minitron.deploy.gguf_export import export_gguf
        from minitron.deploy.runtime_check import compare_gguf as compare

        summary = export_gguf(hf_dir, args.output, args.gguf_dtype, args.overwrite)
    else:
        from minitron.deploy.onnx_export import export_onnx
        from minitron.deploy.runtime_check import compare_onnx as compare

        summary = export_onnx(hf_dir, args.output, args.onnx_precision, args.overwrite)
    if args.check:
        from transformers import AutoTokenizer

        prompt = AutoTokenizer.from_pretrained(hf_dir)(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
        summary["check"] = compare(args.output, hf_dir, prompt)
    return summary
