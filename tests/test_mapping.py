import pytest
import torch

from conftest import tiny_llama_config
from minitron.conversion import llama_mapping as table
from minitron.runtime.llama import LlamaArch

ARCH = LlamaArch.from_hf_config(tiny_llama_config().to_dict())


def rule(kind):
    return next(r for r in table.expand(ARCH) if r.kind == kind)


def test_qkv_is_interleaved_per_query_group():
    d, g, per = ARCH.head_dim, ARCH.num_query_groups, ARCH.num_attention_heads // ARCH.num_query_groups
    h = ARCH.hidden_size
    # Fill each head with its own id so the layout is visible.
    q = torch.arange(ARCH.num_attention_heads).repeat_interleave(d)[:, None].expand(-1, h).float()
    k = 100 + torch.arange(g).repeat_interleave(d)[:, None].expand(-1, h).float()
    v = 200 + torch.arange(g).repeat_interleave(d)[:, None].expand(-1, h).float()
    qkv = table.merge(rule("qkv"), [q, k, v], ARCH)
    heads = qkv[::d, 0].tolist()
    expected = []
    for grp in range(g):
        expected += [grp * per + j for j in range(per)] + [100 + grp, 200 + grp]
    assert heads == expected


@pytest.mark.parametrize("kind", ["qkv", "gate_up"])
def test_split_inverts_merge_exactly(kind):
    r = rule(kind)
    shapes = table.hf_shapes(ARCH)
    parts = [torch.randn(shapes[name]) for name in r.hf]
    back = table.split(r, table.merge(r, parts, ARCH), ARCH)
    assert all(torch.equal(a, b) for a, b in zip(parts, back))


def test_shape_mismatch_inside_merge_is_caught():
    r = rule("gate_up")
    with pytest.raises(AssertionError, match="gate_proj"):
        table.merge(r, [torch.randn(3, ARCH.hidden_size), torch.randn(ARCH.ffn_hidden_size, ARCH.hidden_size)], ARCH)


def test_table_covers_every_hf_tensor_once():
    names = [h for r in table.expand(ARCH) for h in r.hf]
    assert len(names) == len(set(names))
    assert set(names) == set(table.hf_shapes(ARCH))
