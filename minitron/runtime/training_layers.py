"""Two drop-in modules for Megatron's plain-PyTorch (local) layer spec, used when training without
Transformer Engine (on CPU):

* :class:`SDPAttention`: core attention through ``torch.nn.functional.scaled_dot_product_attention``
  (PyTorch's fused flash-attention kernel on CPU, forward and backward) in place of Megatron's
  ``DotProductAttention``, which materializes the [b, heads, s, s] scores, masks them, softmaxes them
  and repeats the key/value groups for every query head. Same math: causal softmax(QK^T * scale) V.
* :class:`Fp32RMSNorm` and :func:`residual_add`: an fp32 residual stream in bf16 training, as
  ``torch.autocast`` keeps it. Megatron's ``fp32_residual_connection`` makes the embedding output fp32,
  but its bias-dropout-add casts the residual down to the layer output's dtype (bf16) at every add, and
  its torch norm cannot take fp32 input with bf16 weights. Here the add keeps the residual's dtype and
  each norm computes in fp32 and feeds its bf16 linear layer. Without this the residual stream is
  rounded to bf16 twice per layer and the logits drift twice as far from fp32 as autocast's.

Both are exact no-ops numerically in fp32 apart from the attention kernel's summation order.
Verification and conversion keep Megatron's own modules (they compare against transformers bit for
bit); pruning keeps them too (Model Optimizer's dynamic modules know Megatron's classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention


class SDPAttention(DotProductAttention):
    """Megatron's core attention, computed by PyTorch's fused scaled-dot-product attention.

    Inputs and output keep Megatron's layout: query [s, b, heads, d], key/value [s, b, groups, d],
    output [s, b, heads * d]. Anything the fused path does not cover (an explicit mask, attention
    dropout, query-key layer scaling, sliding windows, learnable softmax offsets) falls back to
    Megatron's implementation.
    """

    def _fused_ok(self, attention_mask, attention_bias, packed_seq_params) -> bool:
        c = self.config
        return (attention_mask is None and attention_bias is None and packed_seq_params is None
                and self.attention_dropout.p == 0.0 and not c.apply_query_key_layer_scaling
                and c.window_size is None and self.softmax_offset is None)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if not self._fused_ok(attention_mask, attention_bias, packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        s, b = query.shape[0], query.shape[1]
        # [s, b, n, d] -> [b, n, s, d]; the kernel broadcasts the key/value groups over query heads.
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                                 enable_gqa=k.shape[1] != q.shape[1])
        return context.permute(2, 0, 1, 3).reshape(s, b, self.hidden_size_per_partition)


def residual_add(training: bool, fused: bool = False):
    """Megatron's bias-dropout-add (its ``get_bias_dropout_add`` signature), keeping the residual's dtype.

    Megatron's version casts the residual to the branch output's dtype; here the sum promotes
    (fp32 residual + bf16 branch -> fp32).
    """

    def add(x_with_bias, residual: torch.Tensor, prob: float) -> torch.Tensor:
        x, bias = x_with_bias
        if bias is not None:
            x = x + bias
        return residual + F.dropout(x, p=prob, training=training)

    return add


class Fp32RMSNorm(torch.nn.RMSNorm):
    """RMSNorm in fp32 for any input dtype; the output has the weights' dtype (bf16 when training in bf16).

    Takes Megatron's norm constructor arguments, like the local spec's ``WrappedTorchNorm``.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_ignored):
        super().__init__(normalized_shape=hidden_size, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps)
        return out.to(self.weight.dtype)
