"""Llama architecture description and the one place that builds a Megatron-Core GPTModel from it.

`LlamaArch` is the common language of every stage: it is read from a Hugging Face
``config.json``, written into NeMo checkpoints, shrunk by pruning and written back to HF.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from minitron.errors import MinitronError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
# Megatron-Core hard-codes the llama3 rope-scaling shape; only `factor` is a parameter.
MEGATRON_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise MinitronError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


@dataclass(frozen=True)
class LlamaArch:
    """Shape and numerics of a Llama-family decoder (what Megatron and HF must agree on)."""

    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    norm_eps: float
    rope_theta: float
    #: llama3 rope scaling factor (Llama 3.1: 8.0); None = plain RoPE.
    rope_scaling_factor: float | None
    tie_word_embeddings: bool
    max_position_embeddings: int

    # ---- Hugging Face config ----------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, cfg: dict, source: str = "config.json") -> "LlamaArch":
        archs = cfg.get("architectures") or []
        if cfg.get("model_type") != "llama" or (archs and archs != ["LlamaForCausalLM"]):
            raise MinitronError(
                f"{source}: model_type={cfg.get('model_type')!r} architectures={archs} is not a "
                "Llama model; only LlamaForCausalLM checkpoints are supported"
            )
        for key, allowed in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if cfg.get(key, allowed) != allowed:
                raise MinitronError(f"{source}: {key}={cfg[key]!r} is not supported (expected {allowed!r})")
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
            rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
            arch = cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                ffn_hidden_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_query_groups=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling_factor=_llama3_factor(rope, source),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            )
        except KeyError as e:
            raise MinitronError(f"{source}: missing field {e.args[0]!r}") from None
        arch.validate(source)
        return arch

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> "LlamaArch":
        return cls.from_hf_config(read_json(Path(path) / "config.json"), str(Path(path) / "config.json"))

    def to_hf_config(self, base: dict | None = None) -> dict:
        """HF ``config.json`` for this shape.

        With `base` (the config the model came from) only the shape fields change, so an
        unpruned round trip returns `base` exactly and token ids, rope settings etc. survive.
        """
        shape = dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                     intermediate_size=self.ffn_hidden_size, num_hidden_layers=self.num_layers,
                     num_attention_heads=self.num_attention_heads,
                     num_key_value_heads=self.num_query_groups, head_dim=self.head_dim)
        if base:
            cfg = dict(base)
            if LlamaArch.from_hf_config(base) != self:
                cfg.update(shape)
            if LlamaArch.from_hf_config(cfg) != self:
                raise MinitronError("cannot express this architecture by reshaping the original config")
            return cfg
        rope = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling_factor is not None:
            rope = {"rope_type": "llama3", "factor": self.rope_scaling_factor,
                    **MEGATRON_LLAMA3_ROPE, "rope_theta": self.rope_theta}
        return dict(architectures=["LlamaForCausalLM"], model_type="llama", **shape,
                    rms_norm_eps=self.norm_eps, rope_parameters=rope,
                    tie_word_embeddings=self.tie_word_embeddings,
                    max_position_embeddings=self.max_position_embeddings, hidden_act="silu",
                    attention_bias=False, mlp_bias=False)

    def validate(self, source: str = "config") -> None:
        problems = []
        if self.num_attention_heads % self.num_query_groups:
            problems.append(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads={self.num_query_groups}")
        for name in ("vocab_size", "hidden_size", "ffn_hidden_size", "num_layers", "head_dim"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if problems:
            raise MinitronError(f"{source}: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "model config") -> "LlamaArch":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(names - set(d))
        if unknown or missing:
            raise MinitronError(f"{source}: unknown keys {unknown}, missing keys {missing}")
        arch = cls(**d)
        arch.validate(source)
        return arch

    @property
    def query_projection_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: attention, gated MLP, two norms."""
        attn = self.hidden_size * self.head_dim * (2 * self.num_attention_heads + 2 * self.num_query_groups)
        return attn + 3 * self.hidden_size * self.ffn_hidden_size + 2 * self.hidden_size

    def num_parameters(self) -> int:
        emb = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * self.layer_parameters + emb + self.hidden_size


def _llama3_factor(rope: dict, source: str) -> float | None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise MinitronError(f"{source}: rope type {kind!r} is not supported (default or llama3 only)")
    for key, expected in MEGATRON_LLAMA3_ROPE.items():
        if float(rope.get(key, expected)) != expected:
            raise MinitronError(
                f"{source}: llama3 rope {key}={rope[key]} differs from Megatron-Core's fixed {expected}"
            )
    return float(rope["factor"])


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MinitronError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise MinitronError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


# ---- Megatron-Core model ----------------------------------------------------------------------
def transformer_engine_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def layer_spec(use_te: bool | None = None, training_layers: bool = False):
    """Transformer-Engine spec in the NGC container, Megatron's plain-PyTorch spec elsewhere.

    Both produce the same distributed-checkpoint keys (the local spec maps its layernorm names
    onto TE's fused ones), so a checkpoint moves freely between them. ``training_layers`` swaps the
    local spec's core attention and norms for :mod:`minitron.runtime.training_layers`.
    """
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if use_te is None:
        use_te = transformer_engine_available()
    if use_te:
        return specs.get_gpt_layer_with_transformer_engine_spec()
    spec = specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    if training_layers:
        from minitron.runtime.training_layers import Fp32RMSNorm, SDPAttention, residual_add

        spec.submodules.self_attention.submodules.core_attention = SDPAttention
        spec.submodules.input_layernorm = spec.submodules.pre_mlp_layernorm = Fp32RMSNorm
        spec.submodules.self_attn_bda = spec.submodules.mlp_bda = residual_add
    return spec


def transformer_config(arch: LlamaArch, dtype: torch.dtype = torch.float32, **overrides):
    from megatron.core import parallel_state
    from megatron.core.transformer import TransformerConfig

    kwargs = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def build_gpt_model(arch: LlamaArch, dtype: torch.dtype | str = torch.float32, *,
                    use_te: bool | None = None, init_weights: bool = True,
                    parallel_output: bool = True, training_layers: bool = False, **config_overrides):
    """A Megatron-Core GPTModel for this rank's pipeline stage and tensor shard.

    ``init_weights=False`` skips random initialisation (the weights are about to be loaded).
    ``training_layers=True`` (training without Transformer Engine): fused attention, fp32 norms and
    Megatron's ``fp32_residual_connection``, so bf16 training keeps an fp32 residual stream.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    dtype = torch_dtype(dtype)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    for name, value in (("vocab_size", arch.vocab_size), ("num_query_groups", arch.num_query_groups),
                        ("ffn_hidden_size", arch.ffn_hidden_size),
                        ("num_attention_heads", arch.num_attention_heads)):
        if value % tp:
            raise MinitronError(f"{name}={value} is not divisible by tensor_parallel={tp}")
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if arch.num_layers % pp:
        raise MinitronError(f"num_layers={arch.num_layers} is not divisible by pipeline_parallel={pp}")
    if use_te is None:
        use_te = transformer_engine_available()
    spec = layer_spec(use_te, training_layers)
    if training_layers and not use_te:
        from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

        from minitron.runtime.training_layers import Fp32RMSNorm

        # The block's final norm too: it takes the fp32 residual stream and feeds the output layer.
        spec = TransformerBlockSubmodules(layer_specs=[spec] * (arch.num_layers // pp), layer_norm=Fp32RMSNorm)
        config_overrides = {"fp32_residual_connection": True, **config_overrides}
    config = transformer_config(arch, dtype, perform_initialization=init_weights, **config_overrides)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=arch.vocab_size,
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        parallel_output=parallel_output,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
        rope_scaling=arch.rope_scaling_factor is not None,
        rope_scaling_factor=arch.rope_scaling_factor or 8.0,
    )
    # Megatron's torch-norm fallback (no TE/Apex) ignores params_dtype and stays fp32, which
    # breaks the fused bf16 RMSNorm kernel; keep every weight in the requested dtype.
    model.to(dtype)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model
