"""Export a Llama HF checkpoint (a pruned student included) to one GGUF file for llama.cpp and Ollama.

Written with the `gguf` package, the writer llama.cpp ships, with what llama.cpp's own converter
(`convert_hf_to_gguf.py`, LlamaModel) writes for a dense Llama:

* hyperparameters under ``llama.*``; ``attention.key_length``/``value_length`` and
  ``rope.dimension_count`` are the head dimension, which after pruning is not hidden/heads
  (SmolLM2 width student: hidden 384, 6 heads x 64; Llama-3.1-Minitron-4B-Width: 3072, 32 x 128);
* tensor names from gguf's own HF -> GGUF name map; q and k rows reordered from transformers'
  rotate-half RoPE layout to llama.cpp's interleaved one, per head (k per KV head);
* llama3 RoPE scaling as the ``rope_freqs`` tensor (llama.cpp divides each frequency by it);
* tied embeddings: no ``output.weight`` (llama.cpp reads ``token_embd`` for the output);
* the tokenizer: byte-level BPE vocab with token types, merges, special token ids, add-BOS and the chat
  template (gguf's SpecialVocab reads them from the checkpoint's tokenizer files); the pre-tokenizer
  name llama.cpp needs is derived from tokenizer.json, and one it has no name for is refused;
* F32, F16, BF16, or llama.cpp's Q8_0 (gguf's own quantizer; norms, rope factors and any matrix whose
  rows are not a multiple of the 32-value block stay F32/F16, as llama.cpp's converter keeps them).

The file is written under a temporary name and renamed when complete; an existing target is refused
unless ``overwrite``. `minitron.deploy.runtime_check` runs the result in llama.cpp.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from minitron.conversion.hf_checkpoint import SafetensorsReader
from minitron.conversion.llama_mapping import hf_shapes
from minitron.errors import MinitronError
from minitron.runtime.llama import LlamaArch, read_json

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")

#: tokenizer.json pre-tokenizer (as tokenizers serialises it) -> llama.cpp's ``tokenizer.ggml.pre``.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                 "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _pre_tokenizer_name(tokenizer_json: dict, source: Path) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}

    def byte_level(p: dict, regex: bool) -> bool:
        return p.get("type") == "ByteLevel" and not p.get("add_prefix_space") and p.get("use_regex", True) == regex

    if byte_level(pre, True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") \
            and byte_level(parts[1], True):
        return "smollm"
    if len(parts) == 2 and parts[0].get("type") == "Split" and \
            parts[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT and byte_level(parts[1], False):
        return "llama-bpe"
    raise MinitronError(f"{source}: pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp name this exporter "
                        "knows (byte-level GPT-2, SmolLM or Llama 3); GGUF export supports those")


def llama3_rope_factors(arch: LlamaArch, rope: dict) -> np.ndarray:
    """Per rotary frequency, the divisor Llama 3.1's RoPE scaling applies (transformers'
    `_compute_llama3_parameters`, as a factor per frequency the way llama.cpp stores it)."""
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    original = rope.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / arch.rope_theta ** (np.arange(0, arch.head_dim, 2, dtype=np.float64) / arch.head_dim)
    wavelength = 2 * math.pi / freqs
    smooth = (original / wavelength - low) / (high - low)
    scale = np.where(wavelength < original / high, 1.0,
                     np.where(wavelength > original / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return scale.astype(np.float32)


def rope_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows from transformers' rotate-half order (per head: all first halves, then all second halves)
    to llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    if rows % (2 * heads):
        raise MinitronError(f"rope_interleave: {rows} rows are not heads={heads} x an even head_dim")
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def export_gguf(hf_dir: str | Path, output: str | Path, dtype: str = "f32", overwrite: bool = False) -> dict:
    """Write `hf_dir` (a Llama HF checkpoint) as one GGUF file; the summary (sizes, types, seconds)."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise MinitronError(f"--gguf-dtype {dtype!r}: llama.cpp export supports {', '.join(GGUF_DTYPES)}")
    hf_dir, output = Path(hf_dir), Path(output)
    if output.suffix != ".gguf":
        raise MinitronError(f"{output}: a GGUF export is one file; give a path ending in .gguf")
    if output.exists() and not overwrite:
        raise MinitronError(f"{output}: exists; pass --overwrite to replace it")
    start = time.perf_counter()
    cfg = read_json(hf_dir / "config.json")
    arch = LlamaArch.from_hf_config(cfg, str(hf_dir / "config.json"))
    reader = SafetensorsReader(hf_dir)
    reader.check_shapes(hf_shapes(arch), hf_dir / "config.json")
    if not (hf_dir / "tokenizer.json").is_file():
        raise MinitronError(f"{hf_dir}: no tokenizer.json; GGUF carries the tokenizer, export a folder that has it")
    tokenizer_json = json.loads((hf_dir / "tokenizer.json").read_text())
    pre = _pre_tokenizer_name(tokenizer_json, hf_dir / "tokenizer.json")
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        _hyperparameters(writer, arch, hf_dir.name, dtype)
        _tokenizer(writer, hf_dir, arch, pre, has_merges=bool(tokenizer_json.get("model", {}).get("merges")))
        counts = _tensors(writer, reader, arch, rope, dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=True)
        writer.close()
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return {"source": str(hf_dir), "output": str(output), "format": "gguf", "dtype": dtype,
            "bytes": output.stat().st_size, "tensor_types": counts, "tokenizer_pre": pre,
            "rope_freqs": arch.rope_scaling_factor is not None, "tied_embeddings": arch.tie_word_embeddings,
            "seconds": round(time.perf_counter() - start, 2)}


def _hyperparameters(writer, arch: LlamaArch, name: str, dtype: str) -> None:
    import gguf

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer.add_name(name)
    writer.add_context_length(arch.max_position_embeddings)
    writer.add_embedding_length(arch.hidden_size)
    writer.add_block_count(arch.num_layers)
    writer.add_feed_forward_length(arch.ffn_hidden_size)
    writer.add_head_count(arch.num_attention_heads)
    writer.add_head_count_kv(arch.num_query_groups)
    writer.add_key_length(arch.head_dim)  # not hidden/heads after pruning: always written
    writer.add_value_length(arch.head_dim)
    writer.add_rope_dimension_count(arch.head_dim)
    writer.add_rope_freq_base(arch.rope_theta)
    writer.add_layer_norm_rms_eps(arch.norm_eps)
    writer.add_vocab_size(arch.vocab_size)
    writer.add_file_type(file_type)
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer(writer, hf_dir: Path, arch: LlamaArch, pre: str, has_merges: bool) -> None:
    """Byte-level BPE as llama.cpp's converter writes it (its `_set_vocab_gpt2`)."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=False)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(arch.vocab_size):
        if i not in by_id:  # embedding rows beyond the tokenizer's vocabulary
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(hf_dir, load_merges=has_merges, n_vocab=arch.vocab_size)
    if not has_merges:  # a byte-level BPE without merges: llama.cpp still needs the list
        writer.add_token_merges([""])
    special.add_to_gguf(writer, quiet=True)


def _tensors(writer, reader: SafetensorsReader, arch: LlamaArch, rope: dict, dtype: str) -> dict[str, int]:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, arch.num_layers)
    counts: dict[str, int] = {}
    for name, tensor in reader.tensors():
        if name.endswith("rotary_emb.inv_freq") or (arch.tie_word_embeddings and name == "lm_head.weight"):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise MinitronError(f"{reader.dir}: tensor {name} has no GGUF name for a Llama model")
        data = tensor.float().numpy()
        if name.endswith("self_attn.q_proj.weight"):
            data = rope_interleave(data, arch.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            data = rope_interleave(data, arch.num_query_groups)
        kind = _add(writer, target, data, dtype)
        counts[kind] = counts.get(kind, 0) + 1
    if arch.rope_scaling_factor is not None:
        rope_freqs = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        kind = _add(writer, rope_freqs, llama3_rope_factors(arch, rope), "f32")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _add(writer, name: str, data: np.ndarray, dtype: str) -> str:
    """One tensor in the file's type; vectors stay F32 and Q8_0 falls back to F16 for rows that are not whole
    32-value blocks (both as llama.cpp's converter does). The type written."""
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, data)
        return "f32"
    if dtype == "f16" or (dtype == "q8_0" and data.shape[-1] % 32):
        writer.add_tensor(name, data.astype(np.float16))
        return "f16"
    kind = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    packed = gguf.quants.quantize(data, kind)
    writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
    return dtype
