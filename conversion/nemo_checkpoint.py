"""NeMo 2 checkpoints: ``context/`` (model config, tokenizer) + ``weights/`` (torch_dist).

``weights/`` is a Megatron-Core distributed checkpoint, so it loads at any TP/PP: every rank
asks only for its own shards. Keys carry NeMo's ``module.`` prefix and Transformer-Engine
layer names (Megatron's local spec maps onto them), as NeMo and Megatron-Bridge write them.

``context/`` holds

* ``io.json`` + ``model.yaml`` + ``nemo_tokenizer/``: written by NeMo 2.7's own code
  (``conversion/nemo_bridge.py`` run in NeMo's environment), so ``nemo.lightning.io.load_context``,
  ``llm.export_ckpt``, ``llm.finetune`` and ``llm.generate`` accept the checkpoint. Where NeMo is
  reachable (`nemo_python`): the NGC NeMo container, the checkout's ``.venv-nemo`` (``make nemo-env``), or
  ``MINITRON_NEMO_PYTHON``;
* ``minitron.yaml``: the architecture, dtype and original HF config, so minitron reads its own
  checkpoints without starting NeMo (seconds saved on every load).

Reading: ``minitron.yaml`` if present; else ``io.json`` through NeMo (a checkpoint NeMo wrote,
e.g. by ``llm.import_ckpt``; the answer is cached by the file's hash); else the ``model.yaml`` of
this repository's earlier ``minitron/nemo2-llama/v1`` checkpoints.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from megatron.core import dist_checkpointing
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from minitron.conversion.hf_checkpoint import copy_sidecars
from minitron.errors import MinitronError
from minitron.io import cache_dir
from minitron.runtime.llama import MEGATRON_LLAMA3_ROPE, LlamaArch, torch_dtype

CONTEXT, WEIGHTS, TOKENIZER = "context", "weights", "nemo_tokenizer"
METADATA, IO_JSON, LEGACY_MODEL_YAML = "minitron.yaml", "io.json", "model.yaml"
FORMAT, LEGACY_FORMAT = "minitron/nemo2-llama/v2", "minitron/nemo2-llama/v1"
PREFIX = "module."
NEMO_PYTHON_ENV = "MINITRON_NEMO_PYTHON"
BRIDGE = Path(__file__).with_name("nemo_bridge.py")
#: What `make nemo-env` builds in the checkout (conversion/ sits at its root).
CHECKOUT_NEMO_PYTHON = Path(__file__).resolve().parents[1] / ".venv-nemo" / "bin" / "python"


# ---- where NeMo is ----------------------------------------------------------------------------
def nemo_python() -> str | None:
    """The Python that has NeMo 2.7: ``$MINITRON_NEMO_PYTHON`` (``off`` disables), else this interpreter when
    it has ``nemo.collections.llm`` (NGC NeMo container), else the checkout's ``.venv-nemo`` (``make nemo-env``),
    else None."""
    chosen = os.environ.get(NEMO_PYTHON_ENV, "").strip()
    if chosen.lower() in ("off", "0", "none"):
        return None
    if chosen:
        if not (Path(chosen).is_file() and os.access(chosen, os.X_OK)):
            raise MinitronError(f"{NEMO_PYTHON_ENV}={chosen}: not an executable; point it at the python of an "
                                "environment with nemo_toolkit 2.7 (make nemo-env builds .venv-nemo)")
        return chosen
    try:
        found = importlib.util.find_spec("nemo.collections.llm") is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return sys.executable
    return str(CHECKOUT_NEMO_PYTHON) if os.access(CHECKOUT_NEMO_PYTHON, os.X_OK) else None


def require_nemo(what: str) -> str:
    python = nemo_python()
    if python is None:
        raise MinitronError(f"{what}: needs NeMo 2.7 (nemo_toolkit) to read or write NeMo's context; run `make "
                            f"nemo-env` once (or use the NeMo container, or set {NEMO_PYTHON_ENV})")
    return python


class _Bridge:
    """One `nemo_bridge.py serve` process: NeMo is imported once (seconds), then each request takes milliseconds.
    Its stderr (NeMo's own output) goes to a temporary file, read back only to explain a failure."""

    def __init__(self, python: str):
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        env.pop("PYTHONPATH", None)  # NeMo's environment must not see this project's packages
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([python, str(BRIDGE), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True, env=env)

    def ask(self, request: dict, what: str) -> dict:
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        answer = json.loads(line) if line.strip() else {}
        if not answer or "error" in answer:
            detail = answer.get("error") or self._last_words()
            raise MinitronError(f"{what}: NeMo failed ({detail})")
        return answer

    def _last_words(self) -> str:
        self.log.seek(0)
        lines = [line for line in self.log.read().splitlines() if line.strip()]
        return (lines[-1][:300] if lines else "no output") + f"; exit status {self.process.poll()}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


_BRIDGES: dict[str, _Bridge] = {}


def _bridge(python: str) -> _Bridge:
    if python not in _BRIDGES or _BRIDGES[python].process.poll() is not None:
        if not _BRIDGES:
            atexit.register(lambda: [b.close() for b in _BRIDGES.values()])
        _BRIDGES[python] = _Bridge(python)
    return _BRIDGES[python]


def start_nemo() -> None:
    """Start NeMo in the background, where it is reachable, so that the first context to write finds it
    imported (the pipeline calls this before the stages that write checkpoints)."""
    python = nemo_python()
    if python is not None:
        _bridge(python)


def run_bridge(request: dict, what: str) -> dict:
    """One request (``{"op": "write"|"read", ...}``) to NeMo's side (`nemo_bridge.py`); its JSON answer."""
    return _bridge(require_nemo(what)).ask(request, what)


# ---- context ----------------------------------------------------------------------------------------
#: Files that make an HF tokenizer (one of these sets), as NeMo's AutoTokenizer loads it.
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))


def check_tokenizer_files(folder: Path) -> None:
    if not any(all((folder / name).is_file() for name in names) for names in TOKENIZER_FILES):
        raise MinitronError(f"{folder}: no tokenizer files (tokenizer.json, tokenizer.model, or vocab.json + "
                            "merges.txt); copy the model's tokenizer files into it")


def write_context(nemo_dir: Path, arch: LlamaArch, dtype: torch.dtype, hf_config: dict,
                  tokenizer_src: Path) -> None:
    """NeMo's context (where NeMo is reachable) + minitron.yaml + the tokenizer."""
    ctx = Path(nemo_dir) / CONTEXT
    if nemo_python() is not None:
        run_bridge({"op": "write", "spec": nemo_spec(arch, dtype, hf_config, Path(tokenizer_src)),
                    "context_dir": str(ctx.absolute())}, f"{ctx}: writing NeMo's context")
    else:
        _note_once("NeMo 2.7 not reachable: NeMo checkpoints get minitron's context but not NeMo's io.json; run "
                   "`make nemo-env` once to add it (then `minitron convert nemo-context DIR` for ones written before)")
    (ctx / TOKENIZER).mkdir(parents=True, exist_ok=True)
    if not any((ctx / TOKENIZER).iterdir()):
        copy_sidecars(tokenizer_src, ctx / TOKENIZER)
    doc = {"format": FORMAT, "architecture": "llama", "dtype": str(dtype).replace("torch.", ""),
           "arch": arch.to_dict(), "hf_config": hf_config}
    (ctx / METADATA).write_text(yaml.safe_dump(doc, sort_keys=False))


def add_nemo_context(nemo_dir: str | Path) -> dict:
    """`minitron convert nemo-context DIR`: give a checkpoint of this repo NeMo's io.json (in place)."""
    nemo_dir = Path(nemo_dir)
    arch, dtype, hf_config = read_context(nemo_dir)
    if (nemo_dir / CONTEXT / IO_JSON).is_file():
        return {"output": str(nemo_dir), "written": False, "reason": "already has context/io.json"}
    require_nemo(str(nemo_dir))
    with tempfile.TemporaryDirectory(dir=nemo_dir) as tmp:
        staged = Path(tmp) / CONTEXT
        write_context(Path(tmp), arch, dtype, hf_config, tokenizer_dir(nemo_dir))
        old = nemo_dir / f".{CONTEXT}.old"
        (nemo_dir / CONTEXT).rename(old)
        staged.rename(nemo_dir / CONTEXT)
        shutil.rmtree(old)
    return {"output": str(nemo_dir), "written": True}


#: Llama31Config's RoPE-scaling fields -> the HF names of Megatron-Core's fixed llama3 RoPE values.
NEMO_LLAMA31_ROPE = {"low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor",
                     "old_context_len": "original_max_position_embeddings"}


def nemo_spec(arch: LlamaArch, dtype: torch.dtype, hf_config: dict, tokenizer: Path) -> dict:
    """NeMo's config class and fields for `arch` (what NeMo's own HF importer would set)."""
    config = {"num_layers": arch.num_layers, "hidden_size": arch.hidden_size,
              "ffn_hidden_size": arch.ffn_hidden_size, "num_attention_heads": arch.num_attention_heads,
              "num_query_groups": arch.num_query_groups, "kv_channels": arch.head_dim,
              "seq_length": arch.max_position_embeddings, "rotary_base": arch.rope_theta,
              "layernorm_epsilon": arch.norm_eps, "share_embeddings_and_output_weights": arch.tie_word_embeddings,
              "vocab_size": arch.vocab_size, "init_method_std": float(hf_config.get("initializer_range", 0.02)),
              "make_vocab_size_divisible_by": 128}
    config_class = "LlamaConfig"
    if arch.rope_scaling_factor is not None:
        config_class = "Llama31Config"
        config.update(scale_factor=arch.rope_scaling_factor,
                      **{nemo: MEGATRON_LLAMA3_ROPE[hf] for nemo, hf in NEMO_LLAMA31_ROPE.items()})
    return {"config_class": config_class, "config": config, "dtype": str(dtype).replace("torch.", ""),
            "tokenizer": str(Path(tokenizer).resolve())}


def arch_from_nemo(cfg: dict, source: str) -> tuple[LlamaArch, torch.dtype]:
    """LlamaArch + dtype from the config NeMo loaded; anything minitron cannot run is one clear error."""
    wanted = {"normalization": "RMSNorm", "gated_linear_unit": True, "add_bias_linear": False,
              "add_qkv_bias": False, "position_embedding_type": "rope", "activation": "silu", "rotary_percent": 1.0}
    wrong = [f"{k}={cfg.get(k)!r} (need {v!r})" for k, v in wanted.items() if k in cfg and cfg[k] != v]
    if cfg["llama31_rope"]:
        wrong += [f"{k}={cfg[k]} (Megatron-Core's llama3 RoPE fixes {MEGATRON_LLAMA3_ROPE[hf]})"
                  for k, hf in NEMO_LLAMA31_ROPE.items() if float(cfg[k]) != float(MEGATRON_LLAMA3_ROPE[hf])]
    if wrong:
        raise MinitronError(f"{source}: {cfg['kind']} is not a Llama architecture minitron runs: {'; '.join(wrong)}")
    vocab = cfg.get("vocab_size") or cfg.get("tokenizer_vocab_size")
    if not vocab:
        raise MinitronError(f"{source}: neither the config nor the tokenizer gives a vocabulary size")
    heads = int(cfg["num_attention_heads"])
    arch = LlamaArch(vocab_size=int(vocab), hidden_size=int(cfg["hidden_size"]),
                     ffn_hidden_size=int(cfg["ffn_hidden_size"]), num_layers=int(cfg["num_layers"]),
                     num_attention_heads=heads, num_query_groups=int(cfg.get("num_query_groups") or heads),
                     head_dim=int(cfg.get("kv_channels") or int(cfg["hidden_size"]) // heads),
                     norm_eps=float(cfg["layernorm_epsilon"]), rope_theta=float(cfg["rotary_base"]),
                     rope_scaling_factor=float(cfg["scale_factor"]) if cfg["llama31_rope"] else None,
                     tie_word_embeddings=bool(cfg["share_embeddings_and_output_weights"]),
                     max_position_embeddings=int(cfg["seq_length"]))
    arch.validate(source)
    dtype = torch.bfloat16 if cfg.get("bf16") else torch.float16 if cfg.get("fp16") else torch_dtype(cfg["params_dtype"])
    return arch, dtype


def read_context(nemo_dir: str | Path) -> tuple[LlamaArch, torch.dtype, dict]:
    """(architecture, dtype, original HF config or {}) of a NeMo 2 checkpoint."""
    ctx = Path(nemo_dir) / CONTEXT
    if (ctx / METADATA).is_file():
        return _read_metadata(ctx / METADATA, FORMAT)
    legacy = ctx / LEGACY_MODEL_YAML
    if legacy.is_file() and not (ctx / IO_JSON).is_file():
        return _read_metadata(legacy, LEGACY_FORMAT)
    if (ctx / IO_JSON).is_file():
        arch, dtype = arch_from_nemo(_nemo_config(ctx), str(ctx / IO_JSON))
        return arch, dtype, {}
    raise MinitronError(f"{ctx}: no {IO_JSON} or {METADATA}; {nemo_dir} is not a NeMo 2 checkpoint "
                        "(convert an HF model with `minitron convert hf-to-nemo`)")


def _read_metadata(path: Path, expected: str) -> tuple[LlamaArch, torch.dtype, dict]:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise MinitronError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != expected:
        raise MinitronError(f"{path}: unknown checkpoint format {doc.get('format') if isinstance(doc, dict) else doc!r}")
    return LlamaArch.from_dict(doc["arch"], str(path)), torch_dtype(doc["dtype"]), doc.get("hf_config") or {}


def _nemo_config(ctx: Path) -> dict:
    """NeMo's reading of ``io.json``, cached by the file's hash (starting NeMo takes ~10 s)."""
    raw = (ctx / IO_JSON).read_bytes()
    try:
        json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinitronError(f"{ctx / IO_JSON}: corrupted, not valid JSON ({e}); re-save the checkpoint with NeMo") from None
    cached = cache_dir() / "nemo-contexts" / f"{hashlib.sha256(raw).hexdigest()[:32]}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    cfg = run_bridge({"op": "read", "context_dir": str(ctx.absolute())}, f"{ctx / IO_JSON}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cfg))
    tmp.rename(cached)
    return cfg


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)


def tokenizer_dir(nemo_dir: str | Path) -> Path:
    """The HF tokenizer folder of a checkpoint: ``context/nemo_tokenizer`` (minitron and NeMo's importers),
    or wherever NeMo's context says its tokenizer artifact lies."""
    ctx = Path(nemo_dir) / CONTEXT
    if (ctx / TOKENIZER).is_dir() or not (ctx / IO_JSON).is_file():
        return ctx / TOKENIZER
    found = _nemo_config(ctx).get("tokenizer_dir")
    if not found:
        raise MinitronError(f"{ctx / IO_JSON}: the model has no HF tokenizer in its context; minitron needs one")
    return ctx / found


def save_weights(model: torch.nn.Module, nemo_dir: str | Path) -> None:
    """Collective over all ranks: each writes its own shards."""
    weights = Path(nemo_dir) / WEIGHTS
    weights.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(prefix=PREFIX), str(weights))


def load_weights(model: torch.nn.Module, nemo_dir: str | Path) -> None:
    """Fill `model` (this rank's TP/PP piece) from a checkpoint written at any TP/PP."""
    weights = Path(nemo_dir) / WEIGHTS
    check_weights_complete(weights)
    try:
        state = dist_checkpointing.load(model.sharded_state_dict(prefix=PREFIX), str(weights))
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise MinitronError(f"{weights}: cannot load checkpoint into this model "
                            f"({type(e).__name__}: {first})") from None
    # Only the model's tensors: NeMo's common.pt also holds Lightning's trainer state (epoch, loops, ...).
    state = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    model.load_state_dict(state, strict=True)


def content_digest(nemo_dir: str | Path) -> str:
    """SHA-256 over every file of ``weights/`` (names and bytes): equal digests mean equal weights.

    Reads the whole checkpoint once (16 GB for Llama 3.1 8B: seconds to a minute), which is cheap next to
    the calibration it keys.
    """
    weights = Path(nemo_dir) / WEIGHTS
    check_weights_complete(weights)
    files = tuple((str(p.relative_to(weights)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in sorted(p for p in weights.rglob("*") if p.is_file()))
    return _digest_files(weights.resolve(), files)


@functools.lru_cache(maxsize=8)  # every student of a run keys its scores by the same teacher: hash it once
def _digest_files(weights: Path, files: tuple[tuple[str, int, int], ...]) -> str:
    """`files` (name, size, mtime) is the cache key: a file rewritten in place is read again."""
    digest = hashlib.sha256()
    for name, _, _ in files:
        digest.update(name.encode() + b"\0")
        with (weights / name).open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def check_weights_complete(weights: Path) -> None:
    """Every shard file the checkpoint's metadata refers to must exist."""
    if not (weights / ".metadata").is_file():
        raise MinitronError(f"{weights}/.metadata: missing; the checkpoint is incomplete or not torch_dist")
    try:
        metadata = FileSystemReader(str(weights)).read_metadata()
    except Exception as e:
        raise MinitronError(f"{weights}/.metadata: unreadable ({type(e).__name__})") from None
    files = sorted({item.relative_path for item in (metadata.storage_data or {}).values()})
    for name in files:
        if not (weights / name).is_file():
            raise MinitronError(f"{weights / name}: checkpoint shard missing ({len(files)} expected); "
                                "the checkpoint is incomplete")
