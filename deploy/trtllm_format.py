"""What a TensorRT-LLM 1.2 Llama checkpoint must contain, and a validator that checks it.

A TensorRT-LLM checkpoint is ``config.json`` + one ``rank{N}.safetensors`` per GPU. ``trtllm-build``
builds ``LLaMAForCausalLM(config)`` for each rank and loads that rank's file into it
(``PretrainedModel.from_checkpoint`` -> ``load``), failing on a missing tensor or a shape
mismatch. The rules below are read off TensorRT-LLM's own Llama definition (1.x line, the
TensorRT-engine backend that 1.2 still ships; read from NVIDIA/TensorRT-LLM source, not copied):

* ``models/llama/model.py``: ``LLaMAModel`` = ``vocab_embedding`` (first PP rank only),
  ``layers`` = ``DecoderLayerList`` of this rank's layers indexed *locally* from 0, ``ln_f``
  (last PP rank); ``LLaMAForCausalLM.lm_head`` = ``ColumnLinear(hidden, pad_vocab_size(vocab, tp))``
  on the last PP rank. ``LLaMADecoderLayer`` = ``input_layernorm`` (RmsNorm), ``attention``
  (``qkv`` ColumnLinear, ``dense`` RowLinear, head size ``config.head_size``), ``post_layernorm``,
  ``mlp`` = ``GatedMLP`` (``fc`` = gate projection, ``gate`` = up projection, ``proj`` = down).
* ``layers/attention.py``: per rank ``qkv`` has ``(heads/tp + 2*ceil(kv_heads/tp)) * head_size``
  rows (KV heads are replicated when there are fewer than ``tp``); the Llama 3.1 ``rotary_scaling``
  dict is read by ``type`` or ``rope_type``.
* ``models/modeling_utils.py``: ``PretrainedConfig`` fields, ``use_parallel_embedding`` /
  ``embedding_sharding_dim`` (the embedding table is split over TP ranks by vocab rows when the dim
  is 0), ``load`` (``lm_head`` may be omitted when the same rank holds ``vocab_embedding``).
  ``share_embedding`` then ties them at build time, but silently does nothing when their shapes or
  dtypes differ, which leaves ``lm_head`` at random init; so a missing ``lm_head`` is accepted only
  where the shapes agree (below).
* ``mapping.py``: ``rank = pp_rank * tp + tp_rank``; ``pp_layers`` = ``pp_partition`` when given,
  else ``torch.tensor_split`` (the first ``layers % pp`` stages get one layer more).
* ``models/llama/config.py``: ``LLaMAConfig`` fields that add tensors or change the math
  (``attn_bias``, ``mlp_bias``, ``residual_mlp``, ``fc_after_embed``, the ``*_multiplier`` fields,
  ``moe``...) must be at their plain-Llama defaults when present.
* ``quantization/quantize.py`` + ``layers.py``: with ``quant_algo = FP8`` every Column/RowLinear
  not in ``exclude_modules`` (``fnmatchcase``; null means the default list ``DEFAULT_EXCLUDES``)
  becomes ``FP8Linear``: an ``float8_e4m3`` weight plus float32
  ``weights_scaling_factor`` and ``activation_scaling_factor`` of shape ``[1]``; with
  ``kv_cache_quant_algo = FP8`` each attention has ``kv_cache_scaling_factor`` ``[1]`` (its
  reciprocal is derived at load time when absent; separate K and V scales are folded into it, and
  one without the other fails an assert in ``preprocess_weights``).

TensorRT-LLM merely warns about tensors it does not expect; this validator rejects them, so a
typo in a name cannot silently leave a layer at random init.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from minitron.errors import MinitronError

ARCHITECTURES = ("LlamaForCausalLM",)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
QUANT_ALGOS = (None, "FP8")
KV_CACHE_QUANT_ALGOS = (None, "FP8")
FP8 = torch.float8_e4m3fn
#: Required config.json fields and their JSON types (modeling_utils.PretrainedConfig + LLaMAConfig).
REQUIRED = {"architecture": str, "dtype": str, "hidden_size": int, "num_hidden_layers": int,
            "num_attention_heads": int, "num_key_value_heads": int, "head_size": int,
            "intermediate_size": int, "vocab_size": int, "max_position_embeddings": int,
            "hidden_act": str, "norm_epsilon": (int, float), "position_embedding_type": str,
            "rotary_base": (int, float), "mapping": dict, "quantization": dict}
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")
#: quantize_layers' exclusions when config.json has ``exclude_modules: null``.
DEFAULT_EXCLUDES = ("*lm_head", "*router", "*vocab_embedding", "*position_embedding", "*block_embedding",
                    "*shared_expert_gate")
#: LLaMAConfig fields that add tensors or change the computation: accepted only at these values.
PLAIN_LLAMA = {"attn_bias": False, "mlp_bias": False, "residual_mlp": False, "fc_after_embed": False,
               "use_input_layernorm_in_first_layer": True, "use_last_layernorm": True, "layer_idx_offset": 0,
               "remove_duplicated_kv_heads": False, "embedding_multiplier": 1.0, "attention_multiplier": 1.0,
               "residual_multiplier": 1.0, "output_multiplier_scale": 1.0, "rotary_pct": 1.0}
#: Mapping fields for parallelism this validator does not model: accepted only at "off".
MAPPING_OFF = {"cp_size": (None, 1), "attn_cp_size": (None, -1, 1), "moe_cluster_size": (None, -1, 1),
               "enable_attention_dp": (None, False), "auto_parallel": (None, False)}


@dataclass(frozen=True)
class TrtllmConfig:
    """The parts of config.json that decide every tensor's name, shape and dtype."""

    dtype: torch.dtype
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_size: int
    ffn: int
    vocab: int
    tp: int
    pp: int
    pp_partition: tuple[int, ...] | None
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    exclude_modules: tuple[str, ...]
    parallel_embedding: bool
    embedding_dim: int

    def rank_layers(self, pp_rank: int) -> range:
        """Global indices of the layers on a pipeline stage (Mapping.pp_layers)."""
        sizes = self.pp_partition or [self.layers // self.pp + (r < self.layers % self.pp) for r in range(self.pp)]
        start = sum(sizes[:pp_rank])
        return range(start, start + sizes[pp_rank])

    def shares_embedding(self) -> bool:
        """Whether trtllm-build can tie a missing lm_head to vocab_embedding: same rank, shape and dtype."""
        same_shape = self.tp == 1 or (self.parallel_embedding and self.embedding_dim == 0)
        return self.pp == 1 and same_shape and not self.quantized("lm_head")

    def quantized(self, module: str) -> bool:
        """Whether a linear is FP8 (QuantConfig.is_module_excluded_from_quantization: fnmatch)."""
        return self.quant_algo == "FP8" and not any(fnmatch.fnmatchcase(module, p) for p in self.exclude_modules)


def read_config(ckpt: Path) -> dict:
    path = Path(ckpt) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MinitronError(f"{path}: not found; a TensorRT-LLM checkpoint is config.json + rank<N>.safetensors") \
            from None
    except json.JSONDecodeError as e:
        raise MinitronError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def parse_config(cfg: dict, source: str = "config.json") -> TrtllmConfig:
    """Check config.json's fields (types, supported values, divisibility) and return the shape facts."""
    for key, kind in REQUIRED.items():
        if key not in cfg:
            raise MinitronError(f"{source}: missing field {key!r} (TensorRT-LLM LLaMAConfig needs it)")
        if not isinstance(cfg[key], kind) or isinstance(cfg[key], bool):
            raise MinitronError(f"{source}: field {key!r} = {cfg[key]!r} has the wrong type")
    _check_values(cfg, source)
    mapping, quant = cfg["mapping"], cfg["quantization"]
    return TrtllmConfig(
        dtype=DTYPES[cfg["dtype"]], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
        heads=cfg["num_attention_heads"], kv_heads=cfg["num_key_value_heads"], head_size=cfg["head_size"],
        ffn=cfg["intermediate_size"], vocab=cfg["vocab_size"], tp=mapping["tp_size"], pp=mapping["pp_size"],
        pp_partition=tuple(mapping["pp_partition"]) if mapping.get("pp_partition") else None,
        quant_algo=quant.get("quant_algo"), kv_cache_quant_algo=quant.get("kv_cache_quant_algo"),
        exclude_modules=DEFAULT_EXCLUDES if quant.get("exclude_modules") is None else tuple(quant["exclude_modules"]),
        parallel_embedding=bool(cfg.get("use_parallel_embedding", False)),
        embedding_dim=int(cfg.get("embedding_sharding_dim", 0)))


def _check_values(cfg: dict, source: str) -> None:
    problems = []
    if cfg["architecture"] not in ARCHITECTURES:
        problems.append(f"architecture {cfg['architecture']!r} is not supported (only {list(ARCHITECTURES)})")
    if cfg["dtype"] not in DTYPES:
        problems.append(f"dtype {cfg['dtype']!r} is not one of {sorted(DTYPES)}")
    if cfg["hidden_act"] != "silu" or cfg["position_embedding_type"] != "rope_gpt_neox":
        problems.append("Llama needs hidden_act 'silu' and position_embedding_type 'rope_gpt_neox'")
    problems += _rotary_problems(cfg.get("rotary_scaling"))
    problems += _mapping_problems(cfg)
    quant = cfg["quantization"]
    if quant.get("quant_algo") not in QUANT_ALGOS or quant.get("kv_cache_quant_algo") not in KV_CACHE_QUANT_ALGOS:
        problems.append(f"quantization {quant} is not supported (quant_algo and kv_cache_quant_algo: null or FP8)")
    if quant.get("exclude_modules") == [] and quant.get("quant_algo"):
        # Older TensorRT-LLM reads [] as "the default exclusions", newer as "quantize everything".
        problems.append("quantization.exclude_modules is [], which TensorRT-LLM versions read differently; "
                        "list the excluded modules (e.g. [\"lm_head\"]) or use null for the defaults")
    problems += [f"{key} = {cfg[key]!r} is not a plain Llama (needs {value!r})"
                 for key, value in PLAIN_LLAMA.items() if key in cfg and cfg[key] != value]
    if (cfg.get("moe") or {}).get("num_experts", 0):
        problems.append("moe.num_experts > 0: a mixture of experts is not a Llama checkpoint this handles")
    if cfg.get("rotary_dim") not in (None, cfg["head_size"]):
        problems.append(f"rotary_dim {cfg['rotary_dim']} != head_size {cfg['head_size']} (partial RoPE)")
    if cfg.get("logits_dtype", "float32") not in DTYPES:
        problems.append(f"logits_dtype {cfg['logits_dtype']!r} is not one of {sorted(DTYPES)}")
    if cfg.get("embedding_sharding_dim", 0) not in (0, 1):
        problems.append("embedding_sharding_dim must be 0 or 1")
    if problems:
        raise MinitronError(f"{source}: " + "; ".join(problems))


def _rotary_problems(scaling) -> list[str]:
    if scaling is None:
        return []
    if not isinstance(scaling, dict):
        return [f"rotary_scaling must be an object or null, got {scaling!r}"]
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind != "llama3":
        return [f"rotary_scaling type {kind!r} is not supported here (llama3 or none)"]
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
               if not isinstance(scaling.get(k), (int, float))]
    return [f"llama3 rotary_scaling lacks {missing}"] if missing else []


def _mapping_problems(cfg: dict) -> list[str]:
    m = cfg["mapping"]
    tp, pp = m.get("tp_size"), m.get("pp_size")
    if not all(isinstance(v, int) and v >= 1 for v in (tp, pp, m.get("world_size"))):
        return [f"mapping {m} needs positive integers world_size, tp_size, pp_size"]
    problems = [f"mapping {key} = {m[key]!r} is not supported (only {allowed[-1]!r})"
                for key, allowed in MAPPING_OFF.items() if key in m and m[key] not in allowed]
    if m.get("attn_tp_size") not in (None, -1, tp):
        problems.append(f"mapping attn_tp_size {m['attn_tp_size']} != tp_size {tp} is not supported")
    if m["world_size"] != tp * pp:
        problems.append(f"mapping world_size {m['world_size']} != tp_size {tp} x pp_size {pp}")
    heads, kv_heads, layers = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    if heads % tp or cfg["intermediate_size"] % tp:
        problems.append(f"num_attention_heads and intermediate_size must divide by tp_size {tp}")
    if heads % kv_heads:
        problems.append("num_attention_heads must be a multiple of num_key_value_heads")
    if kv_heads % tp and tp % kv_heads:
        problems.append(f"num_key_value_heads {kv_heads} and tp_size {tp}: one must divide the other")
    partition = m.get("pp_partition")
    if partition is not None and (not isinstance(partition, list) or len(partition) != pp or sum(partition) != layers
                                  or not all(isinstance(n, int) and n > 0 for n in partition)):
        problems.append(f"mapping pp_partition {partition} must be {pp} positive layer counts summing to {layers}")
    if layers < pp:
        problems.append(f"num_hidden_layers {layers} < pp_size {pp}: a pipeline stage would have no layer")
    return problems


def expected_tensors(c: TrtllmConfig, rank: int, tied: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor rank `rank` must hold.

    `tied`: the rank file has no lm_head and reuses vocab_embedding (only legal on a rank that
    has both, i.e. PP=1).
    """
    pp_rank = rank // c.tp  # Mapping: rank = pp_rank * tp + tp_rank; all TP ranks hold the same shapes
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    if pp_rank == 0:
        out["transformer.vocab_embedding.weight"] = (_embedding_shape(c), c.dtype)
    kv_per_rank = max(1, math.ceil(c.kv_heads / c.tp))
    linear_shapes = {"attention.qkv": ((c.heads // c.tp + 2 * kv_per_rank) * c.head_size, c.hidden),
                     "attention.dense": (c.hidden, c.heads // c.tp * c.head_size),
                     "mlp.fc": (c.ffn // c.tp, c.hidden), "mlp.gate": (c.ffn // c.tp, c.hidden),
                     "mlp.proj": (c.hidden, c.ffn // c.tp)}
    for local, _ in enumerate(c.rank_layers(pp_rank)):
        prefix = f"transformer.layers.{local}"
        out[f"{prefix}.input_layernorm.weight"] = ((c.hidden,), c.dtype)
        out[f"{prefix}.post_layernorm.weight"] = ((c.hidden,), c.dtype)
        for name, shape in linear_shapes.items():
            out.update(_linear(f"{prefix}.{name}", shape, c))
        if c.kv_cache_quant_algo == "FP8":
            out[f"{prefix}.attention.kv_cache_scaling_factor"] = ((1,), torch.float32)
    if pp_rank == c.pp - 1:
        out["transformer.ln_f.weight"] = ((c.hidden,), c.dtype)
        if not tied:
            out.update(_linear("lm_head", (math.ceil(c.vocab / c.tp), c.hidden), c))
    return out


def _embedding_shape(c: TrtllmConfig) -> tuple[int, int]:
    if not c.parallel_embedding or c.tp == 1:
        return (c.vocab, c.hidden)
    if c.embedding_dim == 0:
        return (math.ceil(c.vocab / c.tp), c.hidden)
    return (c.vocab, c.hidden // c.tp)


def _linear(module: str, shape: tuple[int, int], c: TrtllmConfig) -> dict:
    if not c.quantized(module):
        return {f"{module}.weight": (shape, c.dtype)}
    return {f"{module}.weight": (shape, FP8),
            f"{module}.weights_scaling_factor": ((1,), torch.float32),
            f"{module}.activation_scaling_factor": ((1,), torch.float32)}


def validate_checkpoint(ckpt: str | Path) -> dict:
    """Check a TensorRT-LLM checkpoint folder; one-line MinitronError on the first problem.

    Returns a summary (config facts, tensors per rank, the smallest FP8 scale seen).
    """
    ckpt = Path(ckpt)
    c = parse_config(read_config(ckpt), str(ckpt / "config.json"))
    world = c.tp * c.pp
    extra_files = sorted(p.name for p in ckpt.glob("rank*.safetensors")
                         if p.name not in {f"rank{r}.safetensors" for r in range(world)})
    if extra_files:
        raise MinitronError(f"{ckpt}: {extra_files[0]} does not belong to a world of {world} ranks")
    counts, min_scale = [], math.inf
    for rank in range(world):
        n, s = _validate_rank(ckpt / f"rank{rank}.safetensors", c, rank)
        counts.append(n)
        min_scale = min(min_scale, s)
    return {"tp": c.tp, "pp": c.pp, "dtype": str(c.dtype).replace("torch.", ""), "quant_algo": c.quant_algo,
            "kv_cache_quant_algo": c.kv_cache_quant_algo, "tensors_per_rank": counts,
            "min_scaling_factor": None if min_scale == math.inf else min_scale}


def _validate_rank(path: Path, c: TrtllmConfig, rank: int) -> tuple[int, float]:
    if not path.is_file():
        raise MinitronError(f"{path}: missing; mapping tp_size={c.tp} x pp_size={c.pp} needs one file per rank")
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        last_stage = rank // c.tp == c.pp - 1
        tied = last_stage and "lm_head.weight" not in names and "transformer.vocab_embedding.weight" in names
        if tied and not c.shares_embedding():
            raise MinitronError(f"{path}: lacks lm_head.weight, and TensorRT-LLM can tie it to vocab_embedding only "
                                "with pp_size 1, an unquantized lm_head and an embedding split by vocab rows "
                                "(or not split); write lm_head explicitly")
        expected = expected_tensors(c, rank, tied)
        optional = {n: s for n, s in _kv_alternatives(expected).items() if n in names}
        missing = sorted(n for n in set(expected) - names if not _kv_from_k_and_v(n, names))
        extra = sorted(names - set(expected) - set(optional))
        lone = sorted(n for n in names if n.endswith(_KV_SCALES) and _kv_partner(n) not in names)
        expected = {n: s for n, s in {**expected, **optional}.items() if n in names}
        if missing:
            raise MinitronError(f"{path}: lacks {missing[0]} (and {len(missing) - 1} more) that config.json implies")
        if extra:
            raise MinitronError(f"{path}: unexpected tensor {extra[0]} (and {len(extra) - 1} more); "
                                "TensorRT-LLM's Llama has no such parameter")
        if lone:
            raise MinitronError(f"{path}: {lone[0]} without {_kv_partner(lone[0])}; "
                                "TensorRT-LLM needs separate K and V cache scales together")
        min_scale = math.inf
        for name, (shape, dtype) in expected.items():
            t = f.get_slice(name)
            got_shape, got_dtype = tuple(t.get_shape()), _DTYPE_NAMES.get(t.get_dtype())
            if got_shape != shape or got_dtype != dtype:
                raise MinitronError(f"{path}: {name} is {list(got_shape)} {got_dtype}, config.json implies "
                                    f"{list(shape)} {dtype}; the checkpoint does not match its config")
            if name.endswith("scaling_factor"):
                value = float(f.get_tensor(name).min())
                if not value > 0 or not math.isfinite(value):
                    raise MinitronError(f"{path}: {name} = {value}; scaling factors must be finite and > 0")
                min_scale = min(min_scale, value)
    return len(expected), min_scale


def _kv_alternatives(expected: dict) -> dict:
    """FP8 KV-cache scales TensorRT-LLM also accepts: separate K and V scales (preprocess_weights
    folds them into kv_cache_scaling_factor = max(k, v)) and a precomputed reciprocal."""
    out = {}
    for name, spec in expected.items():
        if name.endswith(".kv_cache_scaling_factor"):
            for alt in ("k_cache_scaling_factor", "v_cache_scaling_factor", "kv_cache_rcp_scaling_factor"):
                out[name.replace("kv_cache_scaling_factor", alt)] = spec
    return out


_KV_SCALES = (".k_cache_scaling_factor", ".v_cache_scaling_factor")


def _kv_partner(name: str) -> str:
    """The V cache scale of a K cache scale and vice versa."""
    k, v = _KV_SCALES
    return name.replace(k, v) if name.endswith(k) else name.replace(v, k)


def _kv_from_k_and_v(name: str, names: set[str]) -> bool:
    return name.endswith(".kv_cache_scaling_factor") and all(
        name.replace("kv_cache", kind) in names for kind in ("k_cache", "v_cache"))


_DTYPE_NAMES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F8_E4M3": FP8}


# ---- back to Hugging Face names (to prove an export exact) -------------------------------------
def merge_to_hf(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """Recombine all rank files into HF Llama tensors (unpadded); BF16/FP16 checkpoints only.

    The inverse of the TP/PP split: qkv rows are [q heads of this rank; its kv heads; its v
    heads], fc = gate_proj, gate = up_proj, dense/proj are split by input columns, embedding and
    lm_head by vocab rows. Used by the tests to show the exporter lost nothing.
    """
    ckpt = Path(ckpt)
    c = parse_config(read_config(ckpt))
    if c.quant_algo is not None:
        raise MinitronError(f"{ckpt}: merge_to_hf handles unquantized checkpoints only")
    shards = [_load(ckpt / f"rank{r}.safetensors") for r in range(c.tp * c.pp)]
    out = {}
    for pp_rank in range(c.pp):
        ranks = shards[pp_rank * c.tp:(pp_rank + 1) * c.tp]
        for local, layer in enumerate(c.rank_layers(pp_rank)):
            out.update(_merge_layer(c, ranks, local, layer))
    first, last = shards[:c.tp], shards[(c.pp - 1) * c.tp:]
    out["model.embed_tokens.weight"] = _cat(first, "transformer.vocab_embedding.weight", c.embedding_dim
                                            if c.parallel_embedding else None)[:c.vocab]
    out["model.norm.weight"] = last[0]["transformer.ln_f.weight"]
    if "lm_head.weight" in last[0]:
        out["lm_head.weight"] = _cat(last, "lm_head.weight", 0)[:c.vocab]
    return out


def _merge_layer(c: TrtllmConfig, ranks: list[dict], local: int, layer: int) -> dict[str, torch.Tensor]:
    src, dst = f"transformer.layers.{local}", f"model.layers.{layer}"
    kv_per_rank = max(1, math.ceil(c.kv_heads / c.tp))
    q_rows, kv_rows = c.heads // c.tp * c.head_size, kv_per_rank * c.head_size
    qs, ks, vs = zip(*(r[f"{src}.attention.qkv.weight"].split([q_rows, kv_rows, kv_rows]) for r in ranks))
    if c.kv_heads < c.tp:  # replicated KV heads: keep one copy per head
        step = c.tp // c.kv_heads
        ks, vs = ks[::step], vs[::step]
    return {f"{dst}.self_attn.q_proj.weight": torch.cat(qs), f"{dst}.self_attn.k_proj.weight": torch.cat(ks),
            f"{dst}.self_attn.v_proj.weight": torch.cat(vs),
            f"{dst}.self_attn.o_proj.weight": _cat(ranks, f"{src}.attention.dense.weight", 1),
            f"{dst}.mlp.gate_proj.weight": _cat(ranks, f"{src}.mlp.fc.weight", 0),
            f"{dst}.mlp.up_proj.weight": _cat(ranks, f"{src}.mlp.gate.weight", 0),
            f"{dst}.mlp.down_proj.weight": _cat(ranks, f"{src}.mlp.proj.weight", 1),
            f"{dst}.input_layernorm.weight": ranks[0][f"{src}.input_layernorm.weight"],
            f"{dst}.post_attention_layernorm.weight": ranks[0][f"{src}.post_layernorm.weight"]}


def _cat(ranks: list[dict], name: str, dim: int | None) -> torch.Tensor:
    if dim is None or len(ranks) == 1:
        return ranks[0][name]
    return torch.cat([r[name] for r in ranks], dim=dim)


def _load(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}
