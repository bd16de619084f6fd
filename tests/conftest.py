"""Shared fixtures: tiny random Llama checkpoints written as real HF folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Writing NeMo's context starts NeMo (seconds per process), which the checkout's .venv-nemo makes reachable:
# only the interop tests ask for it.
os.environ["MINITRON_NEMO_PYTHON"] = "off"

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def tiny_llama_config(tied: bool = False, **overrides):
    """Shaped like Llama 3.1 (untied, llama3 rope, GQA, head_dim != hidden/heads), but tiny."""
    from transformers import LlamaConfig

    kw = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=4, head_dim=24, rms_norm_eps=1e-5,
              rope_scaling=dict(LLAMA31_ROPE), rope_theta=500000.0, max_position_embeddings=16384,
              tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    config = LlamaConfig(**kw)
    config.architectures = ["LlamaForCausalLM"]
    return config


def write_tiny_llama(path: Path, tied: bool = False, dtype=torch.float32, seed: int = 0,
                     max_shard_size: str | None = None, **overrides) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tied, **overrides)).to(dtype).eval()
    # Random init leaves norms at 1.0: perturb them so a swapped norm cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    byte_tokenizer().save_pretrained(path)
    return path


def byte_tokenizer():
    """A real 256-token byte-level tokenizer (no merges), so tiny models read real text."""
    from minitron.data.tokenizer import byte_level_tokenizer

    return byte_level_tokenizer()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="session")
def tiny_hf_tied(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_tied") / "hf", tied=True,
                            rope_scaling=None, rope_theta=10000.0, num_key_value_heads=2, head_dim=16)


@pytest.fixture(scope="session")
def tiny_nemo(tiny_hf, tmp_path_factory) -> Path:
    from minitron.conversion.convert import hf_to_nemo

    out = tmp_path_factory.mktemp("tiny_nemo") / "nemo"
    hf_to_nemo(tiny_hf, out)
    return out


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    from minitron.conversion.gguf_to_hf import default_model_dir

    return default_model_dir()


def tokens(n: int = 23, vocab: int = 256, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, n), generator=g)


def write_corpus(path: Path) -> Path:
    """400 short English paragraphs: enough text for every split of the data pipeline."""
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog while llamas "
                                  f"graze on the high plateau number {i * 7 % 13}." for i in range(400)))
    return path


def write_tiny_recipe(tmp_path: Path, hf: Path, stages: str, students: str, extra: str = "") -> Path:
    """A recipe for a tiny model: small calibration, a search grid that fits hidden 64."""
    text = write_corpus(tmp_path / "corpus.txt")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""# Run: minitron run --config tiny.yaml
name: tiny
stages: {stages}
model: {{source: {hf}}}
data: {{source: {text}, seq_length: 32, cache_dir: {tmp_path / 'data'}}}
prune:
  calibration_samples: 8
  calibration_batch_size: 4
  validation_samples: 4
  selection_samples: 4
  hidden_size_divisor: 16
  ffn_hidden_size_divisor: 16
  students: {students}
{extra}""")
    return recipe


def write_train_yaml(path: Path, steps: int, interval: int, micro_batch_size: int = 1, precision: str = "fp32") -> Path:
    """A tiny training YAML (global batch 4, warmup 1, eval and checkpoint every `interval` steps)."""
    path.write_text(f"# Run: (test)\nsteps: {steps}\nmicro_batch_size: {micro_batch_size}\nglobal_batch_size: 4\n"
                    f"warmup_steps: 1\nlr: 1.0e-3\neval_interval: {interval}\nsave_interval: {interval}\n"
                    f"eval_samples: 4\nprecision: {precision}\n")
    return path


def stage_summary(stage_dir: Path) -> dict:
    """A stage's summary.json with its run-relative paths ("./<stage>/...") resolved against its run folder."""
    stage_dir = Path(stage_dir)
    text = (stage_dir / "summary.json").read_text()
    return json.loads(text.replace('"./', json.dumps(str(stage_dir.parent) + "/")[:-1]))


def run_minitron(*args: str, cwd: Path | None = None, env_extra: dict | None = None, env_unset: tuple = ()):
    env = {k: v for k, v in {**os.environ, **(env_extra or {})}.items() if k not in env_unset}
    return subprocess.run([sys.executable, "-m", "minitron.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env)


def pytest_configure(config):
    # Under pytest-xdist (`make test` runs two workers) the workers would race to unpack the embedded model into
    # the shared cache on first use; the controller unpacks it once, before they start.
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        from minitron.conversion.gguf_to_hf import default_model_dir

        default_model_dir()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
