"""The NeMo half of the interop tests: runs under NeMo 2.7's Python (``.venv-nemo``), never under pytest.

    python tests/nemo_side.py export NEMO_CKPT HF_OUT          # NeMo loads the checkpoint and exports it to HF
    python tests/nemo_side.py write  NEMO_CKPT TOKENIZER KIND  # NeMo writes a checkpoint (KIND: llama31 | gpt)

``export`` is NeMo's own path: ``nemo.lightning.io.load_context`` (the model and config classes),
NeMo's trainer-based restore (``ModelConnector.nemo_load``: MegatronStrategy + MegatronCheckpointIO
read ``weights/`` into NeMo's model), and NeMo's ``HFLlamaExporter``: its HF config, and its state
transforms applied to the checkpoint's tensors as NeMo's ``ckpt_load`` reads them. (NeMo's
``apply`` feeds the transforms from the restored model instead; without Transformer Engine NeMo
builds that model with Megatron's local layer names, which its Llama transforms do not know, so on
CPU the tensors come from ``ckpt_load``: NeMo's own reader, Transformer-Engine names, as on GPUs.)

``write`` builds ``LlamaModel(Llama31Config(...))`` (or a non-Llama ``GPTModel``) with NeMo's
``AutoTokenizer`` and saves it with NeMo's ``ModelConnector.nemo_setup``/``nemo_save``, as
``llm.import_ckpt`` does after converting weights (whose HF importer needs Transformer Engine).

CPU: NeMo 2.7 calls ``torch.cuda.Stream``/``stream``/``synchronize``/``current_device`` and asserts
CUDA in its checkpoint device fix-up, all of it device bookkeeping around the checkpoint I/O. Those
calls are made no-ops below (as ``minitron/runtime/cpu_compat.py`` does for Megatron-Core); nothing
on the data path is replaced.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    torch.cuda.Stream = lambda *a, **k: None
    torch.cuda.stream = lambda s: contextlib.nullcontext()
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conversion"))
from nemo_bridge import loadable_tokenizer  # noqa: E402  (the script beside minitron's NeMo writer)

NO_TE = dict(apply_rope_fusion=False, bias_activation_fusion=False, bias_dropout_fusion=False,
             masked_softmax_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False)


def export(ckpt: Path, out: Path) -> dict:
    import nemo.lightning.io.pl as nemo_pl
    from nemo.collections.llm.gpt.model.llama import HFLlamaExporter
    from nemo.lightning.io import load_context
    from nemo.lightning.io.state import _ModelState
    from safetensors.torch import save_file

    if not torch.cuda.is_available():
        nemo_pl._fix_tensors_device = lambda checkpoint: checkpoint  # CUDA-only device fix-up
    model = load_context(ckpt / "context", subpath="model")
    exporter = HFLlamaExporter(str(ckpt))
    restored, _ = exporter.nemo_load(ckpt, cpu=True)  # NeMo's own restore of weights/ into its model
    restored_params = sum(p.numel() for p in restored.parameters())
    state, _ = exporter.ckpt_load(ckpt)
    target = exporter.init(dtype=model.config.params_dtype)
    target = exporter.convert_state(_ModelState(state, model.config), target)
    out.mkdir(parents=True)
    tensors = {k: v.contiguous() for k, v in target.state_dict().items()
               if not (exporter.config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(exporter.config.to_json_string())
    return {"model_class": type(model).__name__, "config_class": type(model.config).__name__,
            "restored_parameters": restored_params, "tensors": len(tensors)}


def write(ckpt: Path, tokenizer: Path, kind: str) -> dict:
    from nemo.collections import llm
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer
    from nemo.collections.llm.gpt.model.llama import HFLlamaImporter, Llama31Config

    tokenizer = loadable_tokenizer(tokenizer, ckpt.parent / f"{ckpt.name}.tokenizer" / "nemo_tokenizer")
    shape = dict(num_layers=3, hidden_size=64, ffn_hidden_size=96, num_attention_heads=8, num_query_groups=4,
                 kv_channels=24, seq_length=512, vocab_size=256, bf16=False, params_dtype=torch.float32, **NO_TE)
    if kind == "llama31":
        model = llm.LlamaModel(Llama31Config(**shape, rotary_base=500000.0, layernorm_epsilon=1e-5),
                               tokenizer=AutoTokenizer(str(tokenizer)))
    else:  # a GPT of another family: LayerNorm, GELU, biases
        model = llm.GPTModel(llm.GPTConfig(**shape), tokenizer=AutoTokenizer(str(tokenizer)))
    torch.manual_seed(0)
    connector = HFLlamaImporter(str(tokenizer))  # only its NeMo-side setup/save are used
    trainer = connector.nemo_setup(model, ckpt_async_save=False)
    model.configure_model()
    with torch.no_grad():  # NeMo sets up the model lazily (uninitialized memory): give it real values
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    connector.nemo_save(ckpt, trainer)
    return {"written": str(ckpt), "parameters": sum(p.numel() for p in model.parameters())}


def main(argv: list[str]) -> int:
    if argv[0] == "export":
        result = export(Path(argv[1]), Path(argv[2]))
    elif argv[0] == "write":
        result = write(Path(argv[1]), Path(argv[2]), argv[3])
    else:
        raise SystemExit(__doc__)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":  # guard: Megatron's checkpoint writer starts worker processes
    sys.exit(main(sys.argv[1:]))
