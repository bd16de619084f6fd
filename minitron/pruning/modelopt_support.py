"""Make Megatron's plain-PyTorch layers prunable by Model Optimizer.

Without Transformer Engine or Apex, Megatron's local layer spec builds ``torch.nn.RMSNorm``,
which Model Optimizer has no dynamic module for (it knows TE's and Apex's fused norms). We
register one, built exactly like Model Optimizer's own ``_DynamicFusedLayerNorm``.
"""

from __future__ import annotations

import torch

_REGISTERED = False


def register_torch_rmsnorm() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from modelopt.torch.nas.modules.norm import _DynamicLayerNorm
    from modelopt.torch.nas.registry import DMRegistry

    if torch.nn.RMSNorm not in DMRegistry:

        @DMRegistry.register({torch.nn.RMSNorm: "torch.nn.RMSNorm"})
        class _DynamicTorchRMSNorm(_DynamicLayerNorm):
            """``torch.nn.RMSNorm`` whose width follows the model's hidden_size hparam."""

            def _setup(self, *, num_features):
                self._register_hparam("num_features", num_features)
                self._register_dynamic_attribute("weight", self._cut_to_active_features)
                self._register_dynamic_attribute("normalized_shape", self._get_normalized_shape)

    _REGISTERED = True
