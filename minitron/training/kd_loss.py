"""Minitron's logit loss (forward KL, teacher -> student) computed over token chunks.

Model Optimizer's ``LogitsKLLoss`` upcasts both [tokens x vocab] logit tensors to fp32, takes two
log-softmaxes and an elementwise KL, and keeps them all for backward: for SmolLM2 (vocab 49,152) and
2,048 tokens a micro-batch, each of those tensors is 400 MB, for Llama 3.1 (128,256) over 1 GB. Their
cost is memory traffic and allocation (page faults on CPU), not FLOPs.

``ChunkedLogitsKLLoss`` computes the same per-token loss chunk by chunk: only a [chunk x vocab]
working set exists at a time, and it writes the gradient
``(softmax(s/T) - softmax(t/T)) / T`` straight into the one gradient tensor autograd needs (computed
with the loss, whose softmaxes it shares).
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

    Forward computes each chunk's loss and its gradient in one go (the softmaxes the loss needs are
    the gradient), chunk by chunk; backward only scales the stored gradient by the incoming one.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, temperature: float, chunk: int, need_grad: bool):
        n = student.shape[0]
        loss = torch.empty(n, dtype=torch.float32, device=student.device)
        grad = torch.empty_like(student) if need_grad else None
        p_buf = torch.empty(min(chunk, n), student.shape[1], dtype=torch.float32, device=student.device)
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            # Fused log-softmax kernels (one read of the logits each) and in-place arithmetic: nine passes
            # over a chunk's [chunk x vocab] fp32 working set, against fifteen with separate logsumexps.
            log_p_s, log_p_t = _log_softmax(student[i:i + m], temperature), _log_softmax(teacher[i:i + m], temperature)
            p_t = torch.exp(log_p_t, out=p_buf[:m])
            loss[i:i + m] = torch.linalg.vecdot(p_t, log_p_t.sub_(log_p_s))  # sum_k p_t (log p_t - log p_s)
            if need_grad:
                g = log_p_s.exp_().sub_(p_t)  # d KL / d (s/T) = p_s - p_t
                grad[i:i + m] = g if temperature == 1.0 else g.div_(temperature)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_loss[:, None].to(grad.dtype)), None, None, None, None


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 log-softmax of logits / T, a new tensor (the logits are left as they are)."""
    x = logits.float()  # fp32 logits: the same tensor, so no in-place ops on x below
    return torch.log_softmax(x if temperature == 1.0 else x / temperature, -1)


def chunk_tokens_for(vocab_size: int, device: torch.device) -> int:
    """`kd.chunk_tokens: auto`: tokens per chunk, from the vocabulary size and the device.

    On CPU, 2^21 fp32 values per chunk (8 MiB per temporary: 42 tokens of SmolLM2's vocabulary, 16 of
    Llama 3.1's): small enough to stay in cache, large enough that the per-kernel start of the thread
    pool does not dominate (the measured trade-off: docs/cpu.md). On GPUs, 2^26 values (256 MiB per
    temporary): a few large kernels per micro-batch, the [tokens x vocab] fp32 tensors still never all
    at once.
    """
    values = 2 ** 26 if device.type == "cuda" else 2 ** 21
    return max(1, values // vocab_size)


def chunked_forward_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                       chunk: int | str = "auto") -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) per position of [..., vocab] logits, shape [...]."""
    need_grad = torch.is_grad_enabled() and student.requires_grad  # validation: no gradient to compute
    if chunk == "auto":
        chunk = chunk_tokens_for(student.shape[-1], student.device)
    flat = _ChunkedForwardKL.apply(student.reshape(-1, student.shape[-1]),
                                   teacher.detach().reshape(-1, teacher.shape[-1]), temperature, chunk, need_grad)
    return flat.view(student.shape[:-1])


class ChunkedLogitsKLLoss(LogitsKLLoss):
    """Drop-in for Model Optimizer's LogitsKLLoss (same inputs, same [b, s] output, same loss)."""

    def __init__(self, model_config, temperature: float = 1.0, reverse: bool = False,
                 chunk_tokens: int | str = "auto"):
        super().__init__(model_config, temperature=temperature, reverse=reverse)
        self._chunk = chunk_tokens

    def forward(self, predictions, targets):
        if self._reverse or parallel_state.get_tensor_model_parallel_world_size() > 1:
            return super().forward(predictions, targets)
        predictions, targets = self.pre_forward(predictions, targets)
        loss = chunked_forward_kl(predictions, targets, self._temperature, self._chunk)
        return self.post_forward(loss, tp_reduce=True)
