"""NeMo 2's own code writing and reading the ``context/`` of a NeMo 2 Llama checkpoint.

Runs inside an environment that has ``nemo_toolkit`` 2.7 (the NGC NeMo container, or the
``.venv-nemo`` that ``make nemo-env`` builds: NeMo 2.7 pins transformers 4.57 and Model
Optimizer 0.37, so it cannot share this project's main environment). This file imports only
the standard library at the top, so it runs as a plain script by path::

    <nemo python> nemo_bridge.py write SPEC.json CONTEXT_DIR   # NeMo's io_dump of LlamaModel + trainer
    <nemo python> nemo_bridge.py read CONTEXT_DIR              # NeMo's load_context -> JSON on stdout
    <nemo python> nemo_bridge.py serve                         # both, one JSON request per stdin line

Importing NeMo takes seconds and a write a fraction of one, so minitron keeps one ``serve`` process
per run and sends it every checkpoint (``{"op": "write", "spec": ..., "context_dir": ...}`` or
``{"op": "read", "context_dir": ...}``); each answer is one JSON line on stdout, and everything NeMo
itself prints goes to stderr.

``write`` builds NeMo's ``LlamaModel(LlamaConfig | Llama31Config, tokenizer=AutoTokenizer(dir))``
and a CPU ``nl.Trainer`` and dumps their ``TrainerContext`` exactly as NeMo's own checkpoint
callback and ``llm.import_ckpt`` do (``io.json``, ``model.yaml``, the tokenizer under
``nemo_tokenizer/``). ``read`` loads ``io.json`` with ``nemo.lightning.io.load_context`` and
reports the model config. The weights (``weights/``, a Megatron-Core torch_dist checkpoint) are
written and read by minitron itself: they are plain Megatron-Core, the same in both.

The result (or a one-line error) is the last line of stdout, as JSON (``write``/``read``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

TOKENIZER = "nemo_tokenizer"
#: Megatron-Core fusions that need Transformer Engine (or Apex) to build the model; off where TE is missing.
TE_FUSIONS = ("apply_rope_fusion", "bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion",
              "gradient_accumulation_fusion", "persist_layer_norm")
#: Config fields reported by `read` (LlamaConfig, plus Llama31Config's RoPE scaling).
FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
          "kv_channels", "seq_length", "rotary_base", "rotary_percent", "layernorm_epsilon",
          "share_embeddings_and_output_weights", "vocab_size", "init_method_std", "normalization",
          "gated_linear_unit", "add_bias_linear", "add_qkv_bias", "position_embedding_type", "bf16", "fp16",
          "scale_factor", "low_freq_factor", "high_freq_factor", "old_context_len")


def write(spec: dict, context_dir: Path) -> dict:
    """NeMo's context for a Llama model of `spec` = {"config_class", "config": {...}, "dtype", "tokenizer"}."""
    import torch
    from nemo import lightning as nl
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer
    from nemo.collections.llm.gpt.model import llama
    from nemo.lightning.io.pl import TrainerContext

    kwargs = dict(spec["config"])
    kwargs["params_dtype"] = getattr(torch, spec["dtype"])
    kwargs["bf16"], kwargs["fp16"] = spec["dtype"] == "bfloat16", spec["dtype"] == "float16"
    if not _have_transformer_engine():
        kwargs.update({name: False for name in TE_FUSIONS})
    config = getattr(llama, spec["config_class"])(**kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer(str(loadable_tokenizer(Path(spec["tokenizer"]), Path(tmp) / TOKENIZER)))
        model = llama.LlamaModel(config, tokenizer=tokenizer)
        trainer = nl.Trainer(devices=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             strategy=nl.MegatronStrategy(ddp="pytorch", setup_optimizers=False))
        trainer.strategy.connect(model)
        TrainerContext.from_trainer(trainer).io_dump(context_dir, yaml_attrs=["model"])
    return {"written": str(context_dir), "te_fusions": _have_transformer_engine()}


def read(context_dir: Path) -> dict:
    """The model config of a NeMo 2 checkpoint's context, as NeMo itself loads it."""
    from nemo.collections.llm.gpt.model import llama
    from nemo.lightning.io import load_context

    model = load_context(context_dir, subpath="model")
    config = model.config
    kind = f"{type(model).__name__}({type(config).__name__})"
    llama4 = getattr(llama, "Llama4Config", ())
    if not isinstance(model, llama.LlamaModel) or not isinstance(config, llama.LlamaConfig) \
            or (llama4 and isinstance(config, llama4)):
        raise ValueError(f"the checkpoint holds {kind}, not a dense Llama model (LlamaModel with a LlamaConfig)")
    out = {name: getattr(config, name) for name in FIELDS if hasattr(config, name)}
    out["activation"] = getattr(config.activation_func, "__name__", str(config.activation_func))
    out["llama31_rope"] = isinstance(config, llama.Llama31Config)
    out["params_dtype"] = str(config.params_dtype).replace("torch.", "")
    out["kind"] = kind
    tokenizer = getattr(model, "tokenizer", None)
    out["tokenizer_vocab_size"] = getattr(tokenizer, "vocab_size", None)
    # The tokenizer artifact's folder inside the context (NeMo names it after the folder it came from).
    hf_tokenizer = getattr(tokenizer, "tokenizer", None)
    where = Path(getattr(hf_tokenizer, "name_or_path", "") or "")
    out["tokenizer_dir"] = where.resolve().relative_to(context_dir.resolve()).as_posix() \
        if where.is_dir() and where.resolve().is_relative_to(context_dir.resolve()) else None
    return out


def loadable_tokenizer(src: Path, dst: Path) -> Path:
    """A copy of the HF tokenizer files that this (older) transformers can load.

    transformers 5 records its generic fast tokenizer as ``TokenizersBackend``, a class that
    transformers 4.57 (NeMo 2.7's pin) does not have; ``PreTrainedTokenizerFast`` is the same
    tokenizer (``tokenizer.json``) under the name both versions know.
    """
    import transformers

    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file() and not path.name.endswith((".safetensors", ".bin", ".pt", ".gguf")):
            shutil.copy2(path, dst / path.name)
    config_path = dst / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if config.get("tokenizer_class") and not hasattr(transformers, config["tokenizer_class"]):
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config_path.write_text(json.dumps(config, indent=2))
    return dst


def _have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def serve() -> int:
    """Answer requests until stdin closes; NeMo's own output goes to stderr, the answers alone to stdout."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # print() and C-level writes of NeMo and its dependencies
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") == "write":
                result = write(request["spec"], Path(request["context_dir"]))
            elif request.get("op") == "read":
                result = read(Path(request["context_dir"]))
            else:
                raise ValueError(f"unknown request {request.get('op')!r}: write or read")
        except Exception as e:  # reported as one line to the caller, who turns it into its own error
            result = {"error": _one_line(e)}
        answers.write(json.dumps(result, default=str) + "\n")
    return 0


def _one_line(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {first}"


def main(argv: list[str]) -> int:
    if argv == ["serve"]:
        return serve()
    try:
        if len(argv) == 3 and argv[0] == "write":
            result = write(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
        elif len(argv) == 2 and argv[0] == "read":
            result = read(Path(argv[1]))
        else:
            raise ValueError("usage: nemo_bridge.py write SPEC.json CONTEXT_DIR | read CONTEXT_DIR | serve")
    except Exception as e:  # reported as one line to the caller, who turns it into its own error
        print(json.dumps({"error": _one_line(e)}))
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
