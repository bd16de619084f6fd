"""The ``eval`` section of a recipe: perplexity, lm-evaluation-harness tasks and throughput."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from minitron.config import at_least_one, doc
from minitron.runtime.precision import check as check_precision


@dataclass
class PerplexitySection:
    split: Literal["validation", "test"] = doc("test", "held-out split of `data` to score")
    file: Optional[str] = doc(None, "score this text file instead (.txt/.jsonl/.json/.parquet, read like "
                                    "data.source)")
    max_tokens: int = doc(32768, "score the first N tokens of the split or file (same tokens for every model)")
    window: Optional[int] = doc(None, "tokens per window; null = data.seq_length")
    stride: Optional[int] = doc(None, "tokens between window starts; null = window // 2 (see "
                                      "minitron/evaluation/perplexity.py for the method)")
    batch_size: int = doc(4, "windows per forward pass")

    def check(self) -> list[str]:
        problems = at_least_one(self, ["max_tokens", "batch_size"], "eval.perplexity.")
        for key in ("window", "stride"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                problems.append(f"eval.perplexity.{key}={getattr(self, key)} must be >= 1 or null")
        return problems


@dataclass
class LmEvalSection:
    tasks: list[str] = doc(["pydocs_cloze", "pydocs_choice"],
                           "lm-evaluation-harness tasks: pydocs_* (built from the held-out split) and standard "
                           "ones such as hellaswag or mmlu (skipped where their data cannot be reached)")
    limit: Optional[int] = doc(200, "items per task (null = all)")
    models: list[str] = doc([], "the models to run the tasks on, as name patterns (fnmatch: teacher*, "
                                "*-distilled*); empty = every evaluated model")
    num_fewshot: int = doc(0, "few-shot examples per item")
    batch_size: int = doc(8, "lm-eval batch size")
    dtype: str = doc("auto", "model dtype inside lm-eval: auto|bf16|fp32 (auto: bf16 where the hardware "
                             "computes it natively, else fp32)")

    def check(self) -> list[str]:
        problems = at_least_one(self, ["batch_size"], "eval.lm_eval.") + check_precision(self.dtype, "eval.lm_eval.dtype")
        if self.limit is not None and self.limit < 1:
            problems.append(f"eval.lm_eval.limit={self.limit} must be >= 1 or null")
        if self.num_fewshot < 0:
            problems.append(f"eval.lm_eval.num_fewshot={self.num_fewshot} must be >= 0")
        return problems


@dataclass
class ThroughputSection:
    batch_sizes: list[int] = doc([1, 8], "batch sizes to measure")
    prompt_tokens: int = doc(128, "prompt length (held-out text)")
    new_tokens: int = doc(32, "greedy tokens generated per request (EOS ignored)")
    repeats: int = doc(3, "timed runs per point (median), after one warm-up")
    dtype: str = doc("auto", "model dtype for the speed measurement: auto|bf16|fp32")

    def check(self) -> list[str]:
        problems = at_least_one(self, ["prompt_tokens", "new_tokens", "repeats"], "eval.throughput.")
        problems += check_precision(self.dtype, "eval.throughput.dtype")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            problems.append(f"eval.throughput.batch_sizes={self.batch_sizes} must be a non-empty list of sizes >= 1")
        return problems


@dataclass
class EvalConfig:
    models: list[str] = doc([], "which models of the run to evaluate (names as in the report: teacher, "
                                "teacher-corrected, <student>-pruned, <student>-distilled, "
                                "<student>-distilled@uncorrected); empty = all")
    extra_models: list[str] = doc([], "more HF checkpoints to evaluate alongside, as NAME=HF_DIR (e.g. an "
                                      "FP8 export)")
    dtype: str = doc("auto", "model dtype for perplexity: auto|bf16|fp32")
    perplexity: PerplexitySection = doc(PerplexitySection, "held-out perplexity")
    lm_eval: LmEvalSection = doc(LmEvalSection, "downstream tasks through lm-evaluation-harness")
    throughput: ThroughputSection = doc(ThroughputSection, "prefill/decode speed, teacher vs students")
    skip: list[Literal["perplexity", "lm_eval", "throughput"]] = doc([], "measurements to leave out")

    def check(self) -> list[str]:
        return check_precision(self.dtype, "eval.dtype")
