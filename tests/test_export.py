"""Export (BF16/FP8, unified HF and TensorRT-LLM checkpoints) and build-engine on tiny Llamas.

Model Optimizer really quantizes and exports here; the TensorRT-LLM checkpoints are checked
against TensorRT-LLM 1.2's Llama format (deploy.trtllm_format) and recombined into HF tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import REPO, run_minitron, write_corpus, write_tiny_llama
from minitron.deploy.config import DeployConfig
from minitron.deploy.export import ExportRequest, export
from minitron.deploy.trtllm_format import merge_to_hf, validate_checkpoint
from minitron.data import DataConfig
from minitron.errors import MinitronError

FP8_MAX = 448.0  # largest float8_e4m3fn value


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    return DataConfig(source=str(write_corpus(root / "corpus.txt")), seq_length=32, cache_dir=str(root / "cache"))


def _export(src, out, data, format="trtllm", **deploy) -> dict:
    deploy = {"dtype": "bf16", "calib_samples": 8, "calib_seq_length": 32, **deploy}
    return export(ExportRequest(model=str(src), output=str(out), format=format, deploy=DeployConfig(**deploy),
                                data=data))


def _hf_tensors(src) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16) for k, v in load_file(src / "model.safetensors").items()}


# ---- TensorRT-LLM, BF16: exact ----------------------------------------------------------------
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_trtllm_bf16_recombines_exactly(tiny_hf, data, tmp_path, tp, pp):
    out = tmp_path / "ckpt"
    summary = _export(tiny_hf, out, data, format="trtllm", dtype="bf16", tp=tp, pp=pp)
    assert summary["checkpoint"]["tensors_per_rank"] == validate_checkpoint(out)["tensors_per_rank"]
    assert sorted(p.name for p in out.glob("rank*.safetensors")) == [f"rank{r}.safetensors" for r in range(tp * pp)]
    cfg = json.loads((out / "config.json").read_text())
    # head_size != hidden/heads (64/8 = 8): only an explicit head_size gives the right shapes.
    assert (cfg["head_size"], cfg["hidden_size"], cfg["num_attention_heads"]) == (24, 64, 8)
    assert cfg["mapping"] == {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}
    assert cfg["rotary_base"] == 500000.0
    assert cfg["rotary_scaling"]["type"] == "llama3" and cfg["rotary_scaling"]["factor"] == 8.0
    assert cfg["rotary_scaling"]["original_max_position_embeddings"] == 8192
    assert cfg["quantization"]["quant_algo"] is None and "rank" not in cfg
    assert cfg["logits_dtype"] == "float32"  # Model Optimizer writes float16
    ref, got = _hf_tensors(tiny_hf), merge_to_hf(out)
    assert set(got) == set(ref)
    for name, tensor in ref.items():
        assert torch.equal(got[name], tensor), name


def test_trtllm_naming_fc_is_gate_proj(tiny_hf, data, tmp_path):
    """fc = HF gate_proj, gate = HF up_proj, qkv = [q; k; v] rows (TP=1, no interleaving)."""
    out = tmp_path / "ckpt"
    _export(tiny_hf, out, data, format="trtllm", dtype="bf16")
    ref = _hf_tensors(tiny_hf)
    with safe_open(out / "rank0.safetensors", framework="pt") as f:
        fc, gate = (f.get_tensor(f"transformer.layers.2.mlp.{n}.weight") for n in ("fc", "gate"))
        assert torch.equal(fc, ref["model.layers.2.mlp.gate_proj.weight"])
        assert torch.equal(gate, ref["model.layers.2.mlp.up_proj.weight"])
        qkv = torch.cat([ref[f"model.layers.2.self_attn.{p}_proj.weight"] for p in "qkv"])
        assert torch.equal(f.get_tensor("transformer.layers.2.attention.qkv.weight"), qkv)
        assert f.get_slice("transformer.layers.2.attention.qkv.weight").get_shape() == [(8 + 2 * 4) * 24, 64]


def test_trtllm_tied_embeddings_pp2(tiny_hf_tied, data, tmp_path):
    """SmolLM2-style tied embeddings: the last pipeline stage still gets an lm_head (= embedding)."""
    out = tmp_path / "ckpt"
    _export(tiny_hf_tied, out, data, format="trtllm", dtype="bf16", tp=2, pp=2)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rotary_scaling"] is None and cfg["rotary_base"] == 10000.0 and cfg["tie_word_embeddings"]
    got = merge_to_hf(out)
    assert torch.equal(got.pop("lm_head.weight"), got["model.embed_tokens.weight"])
    ref = _hf_tensors(tiny_hf_tied)
    assert set(got) == set(ref) and all(torch.equal(got[k], v) for k, v in ref.items())


# ---- TensorRT-LLM, FP8 ------------------------------------------------------------------------
def test_trtllm_fp8_scales(tiny_hf, data, tmp_path):
    out = tmp_path / "ckpt"
    summary = _export(tiny_hf, out, data, format="trtllm", dtype="fp8", tp=2, kv_cache_fp8=True)
    assert summary["quantization"]["calibration_samples"] == 8 and summary["quantization"]["split"] == "train"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["quant_algo"] == "FP8" and cfg["quantization"]["kv_cache_quant_algo"] == "FP8"
    assert "lm_head" in cfg["quantization"]["exclude_modules"]
    assert validate_checkpoint(out)["min_scaling_factor"] > 0
    ref = _hf_tensors(tiny_hf)
    with safe_open(out / "rank1.safetensors", framework="pt") as f:
        w = f.get_tensor("transformer.layers.1.mlp.proj.weight")
        scale = f.get_tensor("transformer.layers.1.mlp.proj.weights_scaling_factor")
        assert w.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and float(scale) > 0
        assert f.get_tensor("transformer.layers.1.attention.qkv.activation_scaling_factor").item() > 0
        assert f.get_tensor("transformer.layers.1.attention.kv_cache_scaling_factor").item() > 0
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
    # rank 1 holds the second half of down_proj's input columns; dequantized it is the HF weight
    # up to FP8 rounding (3 mantissa bits: relative error <= 1/16 per element, far less on average).
    original = ref["model.layers.1.mlp.down_proj.weight"][:, 48:].float()
    dequant = w.float() * scale
    assert float(scale) == pytest.approx(float(ref["model.layers.1.mlp.down_proj.weight"].abs().max()) / FP8_MAX,
                                         rel=1e-2)
    assert ((dequant - original).abs() <= original.abs() / 16 + 1e-6).all()


# ---- unified HF checkpoints -------------------------------------------------------------------
def test_hf_bf16_loads_and_matches(tiny_hf, data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    _export(tiny_hf, out, data, format="hf", dtype="bf16")
    assert (out / "tokenizer.json").exists() and (out / "export.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    source = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.bfloat16).eval()
    ref = source.state_dict()
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, ref[name]), name
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, source(ids).logits)


def test_hf_fp8_quant_config_and_scales(tiny_hf_tied, data, tmp_path):
    out = tmp_path / "hf"
    summary = _export(tiny_hf_tied, out, data, format="hf", dtype="fp8", kv_cache_fp8=True)
    assert summary["checkpoint"]["fp8_weights"] == 4 * 7 and summary["checkpoint"]["kv_cache_quant_algo"] == "FP8"
    cfg = json.loads((out / "config.json").read_text())
    quant = cfg["quantization_config"]
    assert quant["quant_algo"] == "FP8" and quant["quant_method"] == "modelopt"
    assert "lm_head" in quant["ignore"]
    tensors = load_file(out / "model.safetensors")
    ref = _hf_tensors(tiny_hf_tied)
    for i in range(4):
        w = tensors[f"model.layers.{i}.self_attn.o_proj.weight"]
        scale = tensors[f"model.layers.{i}.self_attn.o_proj.weight_scale"]
        assert w.dtype == torch.float8_e4m3fn and scale.item() > 0
        assert tensors[f"model.layers.{i}.self_attn.o_proj.input_scale"].item() > 0
        original = ref[f"model.layers.{i}.self_attn.o_proj.weight"].float()
        assert ((w.float() * scale - original).abs() <= original.abs() / 16 + 1e-6).all()
    assert tensors["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_fp8_calibration_precision_is_chosen_and_the_export_stays_bf16(tiny_hf, data, tmp_path):
    """deploy.calib_dtype: fp32 (what auto picks on a CPU without native bf16) calibrates in fp32; the
    export is bf16 + FP8 either way; auto follows the hardware."""
    from minitron.runtime.precision import resolve

    fp32 = _export(tiny_hf, tmp_path / "fp32", data, format="hf", dtype="fp8", calib_dtype="fp32")
    auto = _export(tiny_hf, tmp_path / "auto", data, format="hf", dtype="fp8")
    assert fp32["quantization"]["precision"] == "float32"
    assert auto["quantization"]["precision"] == str(resolve("auto").dtype).replace("torch.", "")
    tensors = load_file(tmp_path / "fp32/model.safetensors")
    assert tensors["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert tensors["model.layers.0.mlp.down_proj.weight"].dtype == torch.float8_e4m3fn
    with pytest.raises(MinitronError, match=r"deploy.calib_dtype='fp16' must be one of \['auto', 'bf16'"):
        _export(tiny_hf, tmp_path / "bad", data, format="hf", dtype="fp8", calib_dtype="fp16")
    assert not (tmp_path / "bad").exists()


# ---- bad inputs: one line, nothing written ----------------------------------------------------
def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("case", ["not_llama", "shape_mismatch", "tp_not_divisible", "pp_not_divisible",
                                  "hf_with_tp"])
def test_bad_inputs_write_nothing(tiny_hf, data, tmp_path, case):
    src, kw = tiny_hf, {"format": "trtllm", "dtype": "fp8"}
    if case == "not_llama":
        src = _edit_config(tiny_hf, tmp_path / "src", model_type="mistral", architectures=["MistralForCausalLM"])
    elif case == "shape_mismatch":
        src = _edit_config(tiny_hf, tmp_path / "src", intermediate_size=128)
    elif case == "tp_not_divisible":
        kw["tp"] = 3
    elif case == "pp_not_divisible":
        kw["pp"] = 3
    else:
        kw.update(format="hf", tp=2)
    out = tmp_path / "out"
    with pytest.raises(MinitronError) as err:
        _export(src, out, data, **kw)
    assert "\n" not in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_non_empty_output_is_refused_and_kept(tiny_hf, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MinitronError, match="not empty"):
        _export(tiny_hf, out, data, format="hf", dtype="bf16")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failure_after_writing_leaves_nothing(tiny_hf, data, tmp_path, monkeypatch):
    """A late failure (here: the HF cross-check) removes the half-written folder."""
    import minitron.deploy.export as export_module

    def reject(cfg, arch, out):
        raise MinitronError(f"{out}: injected failure")

    monkeypatch.setattr(export_module, "_check_against_hf", reject)
    with pytest.raises(MinitronError, match="injected"):
        _export(tiny_hf, tmp_path / "out", data, format="trtllm", dtype="bf16", tp=2)
    assert list(tmp_path.iterdir()) == []


def test_validator_rejects_checkpoint_that_contradicts_config(tiny_hf, data, tmp_path):
    out = tmp_path / "ckpt"
    _export(tiny_hf, out, data, format="trtllm", dtype="bf16", tp=2)
    cfg = json.loads((out / "config.json").read_text())
    for key, value, message in (("head_size", 8, "does not match its config"),
                                ("num_hidden_layers", 6, "lacks transformer.layers.4"),
                                ("architecture", "MistralForCausalLM", "not supported")):
        (out / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(MinitronError, match=message):
            validate_checkpoint(out)
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "rank1.safetensors").unlink()
    with pytest.raises(MinitronError, match="rank1.safetensors: missing"):
        validate_checkpoint(out)


def _rewrite(ckpt, rank: int, drop: tuple[str, ...] = (), **config_changes) -> None:
    """Edit an exported checkpoint in place: drop tensors from one rank file, change config.json."""
    path = ckpt / f"rank{rank}.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if k not in drop}
    save_file(tensors, path)
    cfg = json.loads((ckpt / "config.json").read_text())
    for key, value in config_changes.items():
        target = cfg["quantization"] if key == "exclude_modules" else cfg
        target[key] = value
    (ckpt / "config.json").write_text(json.dumps(cfg))


def test_validator_follows_trtllm_rules(tiny_hf, data, tmp_path):
    """TensorRT-LLM 1.2's load-time rules that a shape check alone would miss."""
    fp8 = tmp_path / "fp8"
    _export(tiny_hf, fp8, data, format="trtllm", dtype="fp8", kv_cache_fp8=True)
    work = tmp_path / "work"

    def variant(**changes):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(fp8, work)
        _rewrite(work, 0, **changes)
        return work

    # exclude_modules null = quantize_layers' default list, which keeps lm_head in BF16 too
    assert validate_checkpoint(variant(exclude_modules=None))["quant_algo"] == "FP8"
    with pytest.raises(MinitronError, match="versions read differently"):
        validate_checkpoint(variant(exclude_modules=[]))
    # a missing lm_head is tied at build time only where shapes and dtypes agree
    assert validate_checkpoint(variant(drop=("lm_head.weight",)))["tensors_per_rank"][0] > 0
    with pytest.raises(MinitronError, match="can tie it to vocab_embedding only"):
        validate_checkpoint(variant(drop=("lm_head.weight",), exclude_modules=["*dense"]))
    # a K cache scale without its V partner trips an assert in TensorRT-LLM's preprocess_weights
    with pytest.raises(MinitronError, match="k_cache_scaling_factor without .*v_cache_scaling_factor"):
        validate_checkpoint(variant(drop=("transformer.layers.2.attention.v_cache_scaling_factor",)))
    # fields that add tensors or change the math are refused unless at plain-Llama values
    for key, value in (("attn_bias", True), ("residual_mlp", True), ("embedding_multiplier", 12.0),
                       ("moe", {"num_experts": 8, "top_k": 2})):
        with pytest.raises(MinitronError, match="plain Llama|mixture of experts"):
            validate_checkpoint(variant(**{key: value}))
    with pytest.raises(MinitronError, match="cp_size = 2 is not supported"):
        validate_checkpoint(variant(mapping={"world_size": 1, "tp_size": 1, "pp_size": 1, "cp_size": 2}))


@pytest.mark.parametrize("partition", [None, [1, 1, 2]])
def test_validator_uneven_pipeline_split(tiny_hf, data, tmp_path, partition):
    """Mapping.pp_layers: pp_partition when given, else torch.tensor_split (4 layers / 3 = 2, 1, 1)."""
    one = tmp_path / "pp1"
    _export(tiny_hf, one, data, format="trtllm", dtype="bf16")
    sizes = partition or [2, 1, 1]
    full, three = load_file(one / "rank0.safetensors"), tmp_path / "pp3"
    three.mkdir()
    first = 0
    for rank, size in enumerate(sizes):
        shard = {k.replace(f"layers.{first + i}.", f"layers.{i}."): v for i in range(size)
                 for k, v in full.items() if f"layers.{first + i}." in k}
        if rank == 0:
            shard["transformer.vocab_embedding.weight"] = full["transformer.vocab_embedding.weight"]
        if rank == len(sizes) - 1:
            shard.update({k: full[k] for k in ("transformer.ln_f.weight", "lm_head.weight")})
        save_file(shard, three / f"rank{rank}.safetensors")
        first += size
    cfg = json.loads((one / "config.json").read_text())
    cfg["mapping"] = {"world_size": 3, "tp_size": 1, "pp_size": 3, **({"pp_partition": partition} if partition else {})}
    (three / "config.json").write_text(json.dumps(cfg))
    assert validate_checkpoint(three)["tensors_per_rank"] == [1 + 7 * sizes[0], 7 * sizes[1], 2 + 7 * sizes[2]]
    got, ref = merge_to_hf(three), merge_to_hf(one)
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    cfg["mapping"] = {**cfg["mapping"], "pp_partition": [2, 2, 0]}
    (three / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MinitronError, match="pp_partition"):
        validate_checkpoint(three)


# ---- CLI and build-engine ---------------------------------------------------------------------
def test_cli_build_engine_without_gpu_writes_checkpoint_then_stops(tiny_hf, tmp_path):
    from minitron.deploy.engine import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT-LLM 1.2 and a GPU are here: see the gpu test")
    corpus = write_corpus(tmp_path / "corpus.txt")
    ckpt = tmp_path / "ckpt"
    result = run_minitron("build-engine", "--model", str(tiny_hf), "--dtype", "fp8", "--checkpoint", str(ckpt),
                          "--calib-samples", "4", "--calib-seq-length", "16", "--max-seq-len", "64",
                          "--max-input-len", "32", "--data-source", str(corpus),
                          env_extra={"MINITRON_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 3, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "engine not built" in lines[0] and "Traceback" not in result.stderr
    assert validate_checkpoint(ckpt)["quant_algo"] == "FP8"
    assert not (tmp_path / "ckpt-engine").exists()


def test_cli_takes_the_recipe_deploy_section_and_flags_override_it(tiny_hf, tmp_path):
    from conftest import write_tiny_recipe
    from minitron.deploy.engine import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT-LLM 1.2 and a GPU are here: see the gpu test")
    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import]", "[]", extra=(
        "deploy: {dtype: fp8, tp: 2, calib_samples: 4, calib_seq_length: 16, max_batch_size: 3, "
        "max_input_len: 32, max_seq_len: 64}\n"))
    env = {"MINITRON_CACHE": str(tmp_path / "cache")}
    ckpt = tmp_path / "ckpt"
    result = run_minitron("build-engine", "--config", str(recipe), "--model", str(tiny_hf), "--checkpoint", str(ckpt),
                          "--max-seq-len", "48", env_extra=env)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "max_batch_size 3 max_input_len 32 max_seq_len 48" in result.stderr  # recipe, then the flag
    summary = validate_checkpoint(ckpt)
    assert (summary["tp"], summary["quant_algo"]) == (2, "FP8")
    assert json.loads((ckpt / "export.json").read_text())["quantization"]["calibration_samples"] == 4
    bad = run_minitron("export", "--config", str(recipe), "deploy.max_input_len=128", "--model", str(tiny_hf),
                       "--output", str(tmp_path / "never"), env_extra=env)
    assert bad.returncode == 2 and "deploy.max_input_len 128 exceeds deploy.max_seq_len 64" in bad.stderr
    assert not (tmp_path / "never").exists()


def test_bench_trtllm_without_gpu_writes_checkpoints_then_stops(tiny_hf, tmp_path):
    """benchmarks/bench_trtllm.py: teacher + a pruned-shaped student x BF16/FP8 checkpoints, then exit 3."""
    from minitron.deploy.engine import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT-LLM 1.2 and a GPU are here: the bench would build and measure engines")
    student = write_tiny_llama(tmp_path / "student", hidden_size=48, intermediate_size=64, num_hidden_layers=2)
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks/bench_trtllm.py"), "--model", f"teacher={tiny_hf}",
           "--model", f"width={student}", "--data-source", str(corpus), "--calib-samples", "4",
           "--prompt-tokens", "8", "--new-tokens", "4", "--output", str(out)]
    env = {**os.environ, "MINITRON_CACHE": str(tmp_path / "cache")}
    for attempt in range(2):  # the second run reuses the checkpoints
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        assert result.returncode == 3, result.stderr[-2000:]
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "engines not built" in errors[0] and "4 checkpoints" in errors[0]
        if attempt == 0:
            stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint/export.json")}
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint/export.json")} == stamps
    for name, layers in (("teacher", 4), ("width", 2)):
        for dtype, algo in (("bf16", None), ("fp8", "FP8")):
            ckpt = out / f"{name}-{dtype}" / "checkpoint"
            assert validate_checkpoint(ckpt)["quant_algo"] == algo
            assert json.loads((ckpt / "config.json").read_text())["num_hidden_layers"] == layers
    assert not list(out.glob("*/engine"))
    plan = json.loads((out / "plan.json").read_text())
    assert [(e["model"], e["dtype"]) for e in plan["entries"]] == [
        ("teacher", "bf16"), ("teacher", "fp8"), ("width", "bf16"), ("width", "fp8")]
    assert plan["end_id"] == 2 and plan["settings"]["prompt_tokens"] == 8
    # the prompts are the held-out test split's first tokens, B rows of P
    from minitron.evaluation.perplexity import split_tokens

    data = DataConfig(source=str(corpus), cache_dir=str(tmp_path / "cache-test"))
    held_out = split_tokens(data, tiny_hf, "test", max_tokens=64)
    prompts = load_file(out / "prompts.safetensors")
    assert sorted(prompts) == ["batch_1", "batch_8"] and prompts["batch_8"].dtype == torch.int32
    assert torch.equal(prompts["batch_8"].long(), held_out[:64].view(8, 8))
    # phase 2 alone (what the GPU machine runs) stops the same way
    result = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "benchmarks/bench_trtllm.py"), "--plan",
                             str(out)], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 3 and "--plan" in result.stderr.splitlines()[-1]
    assert _training_stack_imports(result.stderr) == set()  # the TensorRT-LLM container has none of it


def _training_stack_imports(importtime_log: str) -> set[str]:
    """Top-level packages of the training/serving stack in a `python -X importtime` log."""
    imported = {line.rsplit("|", 1)[-1].strip() for line in importtime_log.splitlines()
                if line.startswith("import time")}
    return imported & {"megatron", "modelopt", "nemo", "pytriton", "lm_eval", "datasets"}


def test_build_engine_from_a_checkpoint_needs_no_training_stack(tiny_hf, data, tmp_path):
    """What runs in the TensorRT-LLM container (deploy/gpu_checks.sh) imports no Megatron or Model Optimizer."""
    ckpt = tmp_path / "ckpt"
    _export(tiny_hf, ckpt, data, format="trtllm", dtype="bf16")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "minitron.cli", "build-engine", "--checkpoint",
                             str(ckpt), "--max-seq-len", "64", "--max-input-len", "32"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode in (0, 3), result.stderr[-2000:]
    assert _training_stack_imports(result.stderr) == set()


def test_cli_export_prints_summary(tiny_hf, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "hf"
    result = run_minitron("export", "--model", str(tiny_hf), "--format", "hf", "--dtype", "fp8", "--output", str(out),
                          "--calib-samples", "4", "--calib-seq-length", "16", "--data-source", str(corpus),
                          env_extra={"MINITRON_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["checkpoint"]["quant_algo"] == "FP8" and summary["quantization"]["calibration_samples"] == 4


@pytest.mark.gpu
def test_build_engine_on_gpu(tiny_hf, data, tmp_path):
    from minitron.deploy.engine import EngineRequest, build_engine, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    for dtype in ("bf16", "fp8"):
        ckpt = tmp_path / f"ckpt-{dtype}"
        _export(tiny_hf, ckpt, data, format="trtllm", dtype=dtype)
        lengths = DeployConfig(max_batch_size=2, max_input_len=32, max_seq_len=64)
        result = build_engine(EngineRequest(str(ckpt), str(tmp_path / f"engine-{dtype}"), deploy=lengths))
        assert list((tmp_path / f"engine-{dtype}").glob("rank0.engine")), result
