"""The recipe's ``cpu_budget`` section: what a CPU recipe runs where it computes in fp32.

``precision: auto`` computes in fp32 on CPUs without native bf16 (`minitron.runtime.precision`), where a
token costs several times its bf16 time. A CPU recipe that must fit a wall time on every machine names a
smaller budget here (training steps, calibration sequences, the uncorrected-teacher comparison, lm-eval items
and models; never the held-out perplexity tokens, so students are compared on the same text everywhere);
`apply` is the one place that applies it, when the recipe is loaded, so every stage,
`minitron plan` and `minitron config` see the budget that will run. Stage summaries and the report say
what was reduced and why. GPUs and CPUs with native bf16 run the recipe as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from minitron.config import doc

#: The budget's fields by the recipe section they shrink.
TRAINING_FIELDS = {"teacher_correction": "teacher_correction_steps", "distill": "distill_steps"}


@dataclass
class CpuBudgetConfig:
    reason: str = doc("", "why the budget is smaller, in words, for the report")
    teacher_correction_steps: Optional[int] = doc(None, "teacher correction steps instead of its `steps`")
    distill_steps: Optional[int] = doc(None, "distillation steps instead of its `steps`")
    lm_eval_limit: Optional[int] = doc(None, "lm-eval items per task instead of eval.lm_eval.limit")
    lm_eval_models: Optional[list[str]] = doc(None, "eval.lm_eval.models instead of its list (which models "
                                                    "the lm-eval tasks run on, as name patterns)")
    from_uncorrected_teacher: Optional[list[str]] = doc(
        None, "distill.from_uncorrected_teacher instead of its list where distillation computes in fp32 on a "
              "CPU ([] leaves out the uncorrected-teacher comparison)")
    calibration_samples: Optional[int] = doc(None, "prune.calibration_samples (and at most as many "
                                                   "prune.repair_samples) where the CPU has no native bf16")

    def check(self) -> list[str]:
        keys = ("teacher_correction_steps", "distill_steps", "lm_eval_limit", "calibration_samples")
        return [f"cpu_budget.{k}={getattr(self, k)} must be >= 1 or null" for k in keys
                if getattr(self, k) is not None and getattr(self, k) < 1]


def apply(recipe) -> dict[str, list[str]]:
    """Shrink, in place, the parts of `recipe` that compute in fp32 on this machine's CPU to its `cpu_budget`;
    the changes in words, by recipe section (`teacher_correction`, `distill`, `prune`, `eval`). A section already
    smaller than the budget keeps its size."""
    from minitron.runtime.precision import fp32_on_cpu  # torch: only for recipes that have a budget

    budget, applied = recipe.cpu_budget, {}
    if budget is None:
        return applied
    for section_name, field in TRAINING_FIELDS.items():
        section, steps = getattr(recipe, section_name), getattr(budget, field)
        if section is None or steps is None:
            continue
        cfg = section.train_config()
        if steps >= cfg.steps or not fp32_on_cpu(cfg.precision):
            continue
        # The same schedule, shorter: warmup keeps its share of the steps (at least one step if any).
        warmup = max(min(cfg.warmup_steps, 1), round(cfg.warmup_steps * steps / cfg.steps))
        section.overrides = [*section.overrides, f"steps={steps}", f"warmup_steps={warmup}"]
        batch = cfg.global_batch_size
        note = (f"{steps} steps (cpu_budget.{field}) instead of {cfg.steps}, {steps * batch} sequences instead "
                f"of {cfg.steps * batch}")
        applied[section_name] = [note + (f", warmup_steps {warmup} instead of {cfg.warmup_steps}"
                                         if warmup != cfg.warmup_steps else "")]
    distill, uncorrected = recipe.distill, budget.from_uncorrected_teacher
    if distill is not None and uncorrected is not None and set(uncorrected) < set(distill.from_uncorrected_teacher) \
            and fp32_on_cpu(distill.train_config().precision):
        applied.setdefault("distill", []).append(
            f"distilled from the uncorrected teacher: {uncorrected or 'none'} (cpu_budget.from_uncorrected_teacher) "
            f"instead of {distill.from_uncorrected_teacher}")
        distill.from_uncorrected_teacher = list(uncorrected)
    # Pruning computes in prune.dtype (fp32) on every CPU; its calibration costs what fp32 costs where bf16 training
    # does, so it shrinks where training does: on CPUs without native bf16.
    prune, n = recipe.prune, budget.calibration_samples
    if n is not None and n < prune.calibration_samples and fp32_on_cpu("auto"):
        applied["prune"] = [f"{n} calibration sequences (cpu_budget.calibration_samples) instead of "
                            f"{prune.calibration_samples}" + (f", repair on {n} instead of {prune.repair_samples}"
                                                              if n < prune.repair_samples else "")]
        prune.calibration_samples, prune.repair_samples = n, min(n, prune.repair_samples)
    # Held-out perplexity is never shrunk: recovery is compared on the same tokens on every machine.
    lm, notes, skip = recipe.eval.lm_eval, [], recipe.eval.skip
    if budget.lm_eval_limit is not None and (lm.limit is None or budget.lm_eval_limit < lm.limit) \
            and "lm_eval" not in skip and fp32_on_cpu(lm.dtype):
        notes.append(f"lm-eval on {budget.lm_eval_limit} items per task (cpu_budget.lm_eval_limit) instead of "
                     f"{lm.limit if lm.limit is not None else 'all'}")
        lm.limit = budget.lm_eval_limit
    if budget.lm_eval_models is not None and budget.lm_eval_models != lm.models and "lm_eval" not in skip \
            and fp32_on_cpu(lm.dtype):
        notes.append(f"lm-eval on the models {budget.lm_eval_models} (cpu_budget.lm_eval_models) instead of "
                     f"{lm.models or 'all'}")
        lm.models = list(budget.lm_eval_models)
    if notes:
        applied["eval"] = notes
    return applied


def summary_fields(recipe, section: str) -> dict:
    """`budget` (what `apply` shrank in `section`, in words) and its `budget_reason`, for a stage's summary.json;
    empty where the section runs as written (the report marks such results as not comparable with full runs)."""
    budget = recipe.applied_budget.get(section)
    return {"budget": "; ".join(budget), "budget_reason": recipe.cpu_budget.reason} if budget else {}
