"""Minitron's logit loss (forward KL, teacher -> student) computed over token chunks.

Model Optimizer's ``LogitsKLLoss`` upcasts both [tokens x vocab] logit tensors to fp32, takes two
log-softmaxes and an elementwise KL, and keeps them all for backward: for SmolLM2 (vocab 49,152) and
2,048 tokens a micro-batch, each of those tensors is 400 MB, for Llama 3.1 (128,256) over 1 GB. Their
cost is memory traffic and allocation (page faults on CPU), not FLOPs.

``ChunkedLogitsKLLoss`` computes the same per-token loss chunk by chunk: only a [chunk x vocab]
working set exists at a time, and it writes the
gradient ``(softmax(s/T) - softmax(t/T)) / T`` straight into the one gradient tensor autograd needs
(computed with the loss, whose softmaxes it shares; chunks small enough to stay in cache).
The result equals Model Optimizer's loss to fp32 rounding (tests/test_training.py checks it). With
tensor parallelism the vocabulary is split over ranks and Model Optimizer's own loss (with its
cross-rank softmax) is used unchanged.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from modelopt.torch.distill.plugins.megatron import LogitsKLLoss


class _ChunkedForwardKL(torch.autograd.Function):
    """Per-token KL(teacher || student) of [n, vocab] logits, chunked over tokens.

    Forward computes each chunk's loss and its gradient in one go (the softmaxes it needs for the loss
    are the gradient), in cache-sized pieces with in-place ops; backward only scales the stored
    gradient by the incoming one.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, temperature: float, chunk: int, need_grad: bool):
        n = student.shape[0]
        loss = torch.empty(n, dtype=torch.float32, device=student.device)
        grad = torch.empty_like(student) if need_grad else None
        # Three fp32 [chunk x vocab] work buffers, reused by every chunk (no allocation in the loop).
        s_buf, t_buf, d_buf = (torch.empty(min(chunk, n), student.shape[1], dtype=torch.float32,
                                           device=student.device) for _ in range(3))
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            s, t = s_buf[:m].copy_(student[i:i + m]), t_buf[:m].copy_(teacher[i:i + m])
            if temperature != 1.0:
                s.div_(temperature)
                t.div_(temperature)
            lse_s, lse_t = torch.logsumexp(s, -1, keepdim=True), torch.logsumexp(t, -1, keepdim=True)
            # sum_k p_t (log p_t - log p_s) = sum_k p_t (t - s) - lse_t + lse_s, as sum_k p_t = 1
            diff = torch.sub(t, s, out=d_buf[:m])
            p_t = t.sub_(lse_t).exp_()
            loss[i:i + m] = diff.mul_(p_t).sum(-1) - lse_t[:, 0] + lse_s[:, 0]
            if need_grad:
                g = s.sub_(lse_s).exp_().sub_(p_t)  # (p_s - p_t) / T
                grad[i:i + m] = g if temperature == 1.0 else g.div_(temperature)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_loss[:, None].to(grad.dtype)), None, None, None, None


def chunked_forward_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                       chunk: int = 16) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) per position of [..., vocab] logits, shape [...]."""
    need_grad = torch.is_grad_enabled() and student.requires_grad  # validation: no gradient to compute
    flat = _ChunkedForwardKL.apply(student.reshape(-1, student.shape[-1]),
                                   teacher.detach().reshape(-1, teacher.shape[-1]), temperature, chunk, need_grad)
    return flat.view(student.shape[:-1])


class ChunkedLogitsKLLoss(LogitsKLLoss):
    """Drop-in for Model Optimizer's LogitsKLLoss (same inputs, same [b, s] output, same loss)."""

    def __init__(self, model_config, temperature: float = 1.0, reverse: bool = False, chunk_tokens: int = 16):
        super().__init__(model_config, temperature=temperature, reverse=reverse)
        self._chunk = chunk_tokens

    def forward(self, predictions, targets):
        if self._reverse or parallel_state.get_tensor_model_parallel_world_size() > 1:
            return super().forward(predictions, targets)
        predictions, targets = self.pre_forward(predictions, targets)
        loss = chunked_forward_kl(predictions, targets, self._temperature, self._chunk)
        return self.post_forward(loss, tp_reduce=True)
