"""NeMo 2 interop, checked by NeMo 2.7 itself (in its own environment, `make nemo-env`).

* A pruned checkpoint this project writes (head_dim != hidden/heads, fewer layers) loads with NeMo's
  `load_context` as LlamaModel/Llama31Config, NeMo's trainer restores its weights, and NeMo's HF exporter
  gives exactly (bit for bit) the tensors of minitron's own HF export.
* A checkpoint NeMo writes (NeMo's io API + `nemo_save`) goes through `minitron run` (import -> prune),
  and the imported teacher's HF tensors equal NeMo's own HF export of it.
* Bad NeMo checkpoints fail before any work with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_minitron, stage_summary, write_tiny_llama, write_tiny_recipe

NEMO_SIDE = REPO / "tests" / "nemo_side.py"


@pytest.fixture(scope="module")
def nemo_python() -> str:
    python = os.environ.get("MINITRON_TEST_NEMO_PYTHON") or str(REPO / ".venv-nemo" / "bin" / "python")
    if not Path(python).is_file():
        pytest.skip("NeMo 2.7 environment missing: `make nemo-env` (make test builds it)")
    return python


@pytest.fixture
def with_nemo(nemo_python, monkeypatch) -> str:
    """minitron writes/reads NeMo's context through this NeMo environment (this test only)."""
    monkeypatch.setenv("MINITRON_NEMO_PYTHON", nemo_python)
    return nemo_python


def nemo_side(python: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([python, str(NEMO_SIDE), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_tensors(a_dir: Path, b_dir: Path) -> int:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), f"{name} differs"
    return len(a)


def test_pruned_checkpoint_loads_in_nemo_and_exports_bit_for_bit(with_nemo, tmp_path, tiny_hf):
    from minitron.conversion import nemo_checkpoint as nemo
    from minitron.conversion.convert import nemo_to_hf
    from minitron.runtime import distributed
    from minitron.runtime.llama import LlamaArch, build_gpt_model

    base = LlamaArch.from_hf_dir(tiny_hf)  # Llama 3.1 shaped: llama3 RoPE, GQA, head_dim 24 != 64/8
    pruned = LlamaArch(**{**base.to_dict(), "hidden_size": 48, "ffn_hidden_size": 64, "num_attention_heads": 4,
                          "num_query_groups": 2, "num_layers": 3})
    distributed.initialize(1, 1)
    torch.manual_seed(0)
    model = build_gpt_model(pruned, torch.float32, use_te=False)
    ckpt = tmp_path / "pruned_nemo"
    nemo.write_context(ckpt, pruned, torch.float32, json.loads((tiny_hf / "config.json").read_text()), tiny_hf)
    nemo.save_weights(model, ckpt)
    assert (ckpt / "context" / "io.json").is_file() and (ckpt / "context" / "minitron.yaml").is_file()

    nemo_to_hf(ckpt, tmp_path / "minitron_hf")
    result = nemo_side(with_nemo, "export", str(ckpt), str(tmp_path / "nemo_hf"))
    assert (result["model_class"], result["config_class"]) == ("LlamaModel", "Llama31Config")
    assert result["restored_parameters"] == sum(p.numel() for p in model.parameters())
    assert assert_same_tensors(tmp_path / "minitron_hf", tmp_path / "nemo_hf") == 3 * 9 + 3
    ours = json.loads((tmp_path / "minitron_hf" / "config.json").read_text())
    theirs = json.loads((tmp_path / "nemo_hf" / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "vocab_size"):
        assert theirs[key] == ours[key], key
    assert theirs["rope_scaling"]["factor"] == ours["rope_parameters"]["factor"] == 8.0
    # And minitron reads the context NeMo wrote, without its own minitron.yaml.
    (ckpt / "context" / "minitron.yaml").unlink()
    arch, dtype, _ = nemo.read_context(ckpt)
    assert (arch, dtype) == (pruned, torch.float32)


def test_convert_finds_the_checkouts_nemo_env_without_settings(nemo_python, tmp_path, tiny_hf):
    """After `make nemo-env`, with no environment variable: `minitron convert hf-to-nemo` writes NeMo's own
    context (through the checkout's .venv-nemo), and NeMo's load_context + exporter read the checkpoint."""
    from minitron.conversion import nemo_checkpoint as nemo

    if nemo.CHECKOUT_NEMO_PYTHON != Path(nemo_python):
        pytest.skip(f"the NeMo environment under test is {nemo_python}, not the checkout's")
    proc = run_minitron("convert", "hf-to-nemo", "--input", str(tiny_hf), "--output", str(tmp_path / "nemo"),
                        env_unset=("MINITRON_NEMO_PYTHON",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NeMo 2.7 not reachable" not in proc.stderr
    assert (tmp_path / "nemo" / "context" / "io.json").is_file()
    result = nemo_side(nemo_python, "export", str(tmp_path / "nemo"), str(tmp_path / "nemo_hf"))
    assert (result["model_class"], result["config_class"]) == ("LlamaModel", "Llama31Config")
    ours = load_file(str(tiny_hf / "model.safetensors"))
    theirs = load_file(str(tmp_path / "nemo_hf" / "model.safetensors"))
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # Off switch, and the note that names the one command that makes NeMo reachable.
    off = run_minitron("convert", "hf-to-nemo", "--input", str(tiny_hf), "--output", str(tmp_path / "plain"),
                       env_extra={"MINITRON_NEMO_PYTHON": "off"})
    assert off.returncode == 0 and not (tmp_path / "plain" / "context" / "io.json").exists()
    assert "run `make nemo-env` once" in off.stderr


def test_missing_tokenizer_is_named_before_nemo_starts(with_nemo, tmp_path, tiny_hf):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_hf, bare)
    for path in bare.glob("tokenizer*"):
        path.unlink()
    proc = run_minitron("convert", "hf-to-nemo", "--input", str(bare), "--output", str(tmp_path / "nemo"),
                        env_extra={"MINITRON_NEMO_PYTHON": with_nemo})
    assert proc.returncode == 2 and "no tokenizer files (tokenizer.json" in proc.stderr
    assert "AUTOTOKENIZER" not in proc.stderr and not (tmp_path / "nemo").exists()


def test_nemo_written_checkpoint_runs_through_minitron(with_nemo, tmp_path):
    teacher = tmp_path / "nemo_teacher"
    tokenizer = write_tiny_llama(tmp_path / "tok_src")
    nemo_side(with_nemo, "write", str(teacher), str(tokenizer), "llama31")
    assert not (teacher / "context" / "minitron.yaml").exists()  # NeMo's checkpoint, nothing of ours
    nemo_side(with_nemo, "export", str(teacher), str(tmp_path / "nemo_export"))

    recipe = write_tiny_recipe(tmp_path, teacher, "[import, prune]",
                               "[{name: width, hidden_size: 48, ffn_hidden_size: 64}]")
    proc = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"),
                        env_extra={"MINITRON_NEMO_PYTHON": with_nemo})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    imported = stage_summary(run / "import")
    assert imported["source_format"] == "nemo2"
    assert_same_tensors(Path(imported["hf"]), tmp_path / "nemo_export")
    pruned = stage_summary(run / "prune-width")
    assert pruned["arch"]["hidden_size"] == 48 and pruned["arch"]["head_dim"] == 24
    assert (run / "prune-width" / "nemo" / "context" / "io.json").is_file()


def test_bad_nemo_checkpoints_fail_in_one_line(with_nemo, tmp_path):
    from minitron.conversion import nemo_checkpoint as nemo
    from minitron.errors import MinitronError

    tokenizer = write_tiny_llama(tmp_path / "tok_src")
    gpt = tmp_path / "gpt"
    nemo_side(with_nemo, "write", str(gpt), str(tokenizer), "gpt")
    with pytest.raises(MinitronError, match=r"GPTModel\(GPTConfig\), not a dense Llama model") as e:
        nemo.read_context(gpt)
    assert "\n" not in str(e.value)

    broken = tmp_path / "broken"
    (broken / "context").mkdir(parents=True)
    (broken / "weights").mkdir()
    (broken / "context" / "io.json").write_text('{"root": {"type": ')
    with pytest.raises(MinitronError, match=r"io.json: corrupted, not valid JSON") as e:
        nemo.read_context(broken)
    assert "\n" not in str(e.value)

    recipe = write_tiny_recipe(tmp_path, gpt, "[import, prune]", "[{name: width, hidden_size: 48}]")
    proc = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"),
                        env_extra={"MINITRON_NEMO_PYTHON": with_nemo})
    assert proc.returncode != 0 and "not a dense Llama model" in proc.stderr
    assert not (tmp_path / "runs" / "tiny" / "import").exists()  # nothing half-written
