"""Recipe sections `distill` and `teacher_correction`: one training-loop config for both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from minitron.config import at_least_one, doc


@dataclass
class KDConfig:
    temperature: float = doc(1.0, "logit KL temperature (Minitron: 1.0, forward KL)")
    top_k: Optional[int] = doc(None, "distil only the teacher's top-k logits (None: full vocabulary)")
    lm_loss: bool = doc(False, "also add the student's LM loss (Minitron: logits-only, false)")
    kd_loss_scale: float = doc(1.0, "weight of the KD loss relative to the LM loss when lm_loss is true")
    intermediate_pairs: list[list[str]] = doc([], "[student_module, teacher_module, cosine|mse] hidden-state "
                                              "losses, e.g. for depth-pruned students "
                                              "[decoder.layers.7, decoder.layers.15, cosine]")
    chunk_tokens: int | Literal["auto"] | None = doc(
        "auto", "compute the logit KL over chunks of this many tokens (the same loss in less memory); auto: sized "
                "for the device (minitron/training/kd_loss.py); null: Model Optimizer's unchunked loss")

    def check(self) -> list[str]:
        problems = []
        if self.temperature <= 0:
            problems.append("kd.temperature must be > 0")
        if self.top_k is not None and self.top_k < 1:
            problems.append("kd.top_k must be >= 1")
        if isinstance(self.chunk_tokens, int) and self.chunk_tokens < 1:
            problems.append("kd.chunk_tokens must be >= 1, auto or null")
        bad = [p for p in self.intermediate_pairs if len(p) not in (2, 3)]
        if bad:
            problems.append(f"kd.intermediate_pairs entries need 2 or 3 items, got {bad}")
        return problems


@dataclass
class TrainConfig:
    steps: int = doc(100, "optimizer steps")
    micro_batch_size: int | None = doc(4, "sequences per forward/backward on one rank; null: one micro-batch per "
                                          "rank and step (global_batch_size / data-parallel size)")
    global_batch_size: int = doc(16, "sequences per optimizer step over all data-parallel ranks "
                                     "(a multiple of micro_batch_size x DP; the rest is gradient accumulation)")
    lr: float = doc(1e-4, "peak learning rate (Minitron distillation: 1e-4)")
    min_lr: float = doc(1e-5, "final learning rate of the cosine decay")
    warmup_steps: int = doc(10, "linear warmup steps")
    weight_decay: float = doc(0.1, "AdamW weight decay")
    adam_beta1: float = doc(0.9, "AdamW beta1")
    adam_beta2: float = doc(0.95, "AdamW beta2")
    adam_eps: float = doc(1e-8, "AdamW epsilon")
    clip_grad: float = doc(1.0, "clip the global gradient norm to this (0 disables)")
    precision: Literal["auto", "bf16", "fp32"] = doc(
        "auto", "bf16 compute with fp32 master weights, or fp32 throughout; auto: bf16 where the hardware computes "
                "it natively, else fp32 (minitron/runtime/precision.py)")
    seed: int = doc(1234, "seed for initialisation order, dropout and data order")
    log_interval: int = doc(1, "steps between log lines / TensorBoard points")
    eval_interval: int = doc(50, "steps between validations (and at the end)")
    eval_samples: int = doc(16, "validation-split sequences per validation")
    save_interval: int = doc(50, "steps between checkpoints (and at the end)")
    keep_last: int = doc(2, "checkpoints to keep")
    resume: Literal["auto", "never"] = doc("auto", "auto: continue from the newest complete checkpoint")
    kd: KDConfig = doc(KDConfig, "distillation loss (ignored by teacher correction)")

    def micro_batch(self, data_parallel: int) -> int:
        """Sequences per micro-batch on each of `data_parallel` ranks (resolving null)."""
        return self.micro_batch_size or max(1, self.global_batch_size // data_parallel)

    def check(self) -> list[str]:
        problems = at_least_one(self, ("steps", "global_batch_size", "log_interval",
                                       "eval_interval", "eval_samples", "save_interval", "keep_last"))
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            problems.append(f"micro_batch_size={self.micro_batch_size} must be >= 1 (or null)")
        elif self.micro_batch_size and self.global_batch_size % self.micro_batch_size:
            problems.append(f"global_batch_size={self.global_batch_size} is not a multiple of "
                            f"micro_batch_size={self.micro_batch_size}")
        if not 0 <= self.min_lr <= self.lr:
            problems.append("need 0 <= min_lr <= lr")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            problems.append(f"warmup_steps={self.warmup_steps} must be in [0, steps)")
        return problems
