"""The one Llama weight-mapping table, used in both directions (HF -> Megatron and back).

Each row names one Megatron-Core parameter (local layer spec, TP=1/PP=1 names) and the HF
tensors it is made of. ``qkv`` and ``gate_up`` rows merge several HF tensors; their `merge` and
`split` are exact inverses and assert every shape they touch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minitron.runtime.llama import LlamaArch


@dataclass(frozen=True)
class Rule:
    megatron: str
    hf: tuple[str, ...]
    kind: str = "copy"  # copy | qkv | gate_up


_L = "model.layers.{i}"
LLAMA_RULES = (
    Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",)),
    Rule("decoder.layers.{i}.input_layernorm.weight", (f"{_L}.input_layernorm.weight",)),
    Rule("decoder.layers.{i}.self_attention.linear_qkv.weight",
         (f"{_L}.self_attn.q_proj.weight", f"{_L}.self_attn.k_proj.weight", f"{_L}.self_attn.v_proj.weight"),
         "qkv"),
    Rule("decoder.layers.{i}.self_attention.linear_proj.weight", (f"{_L}.self_attn.o_proj.weight",)),
    Rule("decoder.layers.{i}.pre_mlp_layernorm.weight", (f"{_L}.post_attention_layernorm.weight",)),
    Rule("decoder.layers.{i}.mlp.linear_fc1.weight",
         (f"{_L}.mlp.gate_proj.weight", f"{_L}.mlp.up_proj.weight"), "gate_up"),
    Rule("decoder.layers.{i}.mlp.linear_fc2.weight", (f"{_L}.mlp.down_proj.weight",)),
    Rule("decoder.final_layernorm.weight", ("model.norm.weight",)),
    Rule("output_layer.weight", ("lm_head.weight",)),  # absent when embeddings are tied
)


def expand(arch: LlamaArch) -> list[Rule]:
    """The table with layer indices filled in, for this architecture."""
    rules = []
    for rule in LLAMA_RULES:
        if rule.megatron == "output_layer.weight" and arch.tie_word_embeddings:
            continue
        layers = range(arch.num_layers) if "{i}" in rule.megatron else [None]
        for i in layers:
            rules.append(Rule(rule.megatron.format(i=i), tuple(h.format(i=i) for h in rule.hf), rule.kind))
    return rules


def hf_shapes(arch: LlamaArch) -> dict[str, tuple[int, ...]]:
    """Shape of every HF tensor the architecture implies (to check a config against weights)."""
    h, f, d = arch.hidden_size, arch.ffn_hidden_size, arch.head_dim
    per_layer = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (arch.num_attention_heads * d, h),
        "self_attn.k_proj.weight": (arch.num_query_groups * d, h),
        "self_attn.v_proj.weight": (arch.num_query_groups * d, h),
        "self_attn.o_proj.weight": (h, arch.num_attention_heads * d),
        "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f),
    }
    shapes = {"model.embed_tokens.weight": (arch.vocab_size, h), "model.norm.weight": (h,)}
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, h)
    for i in range(arch.num_layers):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def _check(t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    assert tuple(t.shape) == tuple(shape), f"{what}: shape {tuple(t.shape)}, expected {tuple(shape)}"


def merge(rule: Rule, tensors: list[torch.Tensor], arch: LlamaArch) -> torch.Tensor:
    """HF tensors -> the Megatron tensor of `rule`."""
    if rule.kind == "copy":
        return tensors[0]
    h = arch.hidden_size
    if rule.kind == "gate_up":
        gate, up = tensors
        _check(gate, (arch.ffn_hidden_size, h), rule.hf[0])
        _check(up, (arch.ffn_hidden_size, h), rule.hf[1])
        return torch.cat([gate, up], dim=0)
    # qkv: Megatron interleaves per query group: [q heads of group g, k_g, v_g] for each g.
    q, k, v = tensors
    g, d = arch.num_query_groups, arch.head_dim
    per_group = arch.num_attention_heads // g
    _check(q, (arch.num_attention_heads * d, h), rule.hf[0])
    _check(k, (g * d, h), rule.hf[1])
    _check(v, (g * d, h), rule.hf[2])
    qkv = torch.cat([q.reshape(g, per_group * d, h), k.reshape(g, d, h), v.reshape(g, d, h)], dim=1)
    return qkv.reshape(-1, h)


def split(rule: Rule, tensor: torch.Tensor, arch: LlamaArch) -> list[torch.Tensor]:
    """The Megatron tensor of `rule` -> its HF tensors (inverse of `merge`)."""
    if rule.kind == "copy":
        return [tensor]
    h = arch.hidden_size
    if rule.kind == "gate_up":
        _check(tensor, (2 * arch.ffn_hidden_size, h), rule.megatron)
        gate, up = tensor.chunk(2, dim=0)
        return [gate.contiguous(), up.contiguous()]
    g, d = arch.num_query_groups, arch.head_dim
    per_group = arch.num_attention_heads // g
    _check(tensor, ((arch.num_attention_heads + 2 * g) * d, h), rule.megatron)
    grouped = tensor.reshape(g, (per_group + 2) * d, h)
    q, k, v = grouped.split([per_group * d, d, d], dim=1)
    return [q.reshape(-1, h).contiguous(), k.reshape(-1, h).contiguous(), v.reshape(-1, h).contiguous()]
