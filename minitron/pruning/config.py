"""Recipe section `prune`: calibration settings and the students to cut from the teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from minitron.config import at_least_one, doc
from minitron.parallel import ParallelConfig


@dataclass
class StudentConfig:
    name: str = doc("student", "student name; outputs go to <run>/prune-<name>/")
    hidden_size: Optional[int] = doc(None, "target hidden size (width); None keeps the teacher's")
    ffn_hidden_size: Optional[int] = doc(None, "target MLP size (width); None keeps the teacher's")
    num_attention_heads: Optional[int] = doc(None, "target query heads; a multiple of the KV groups, which are kept")
    num_layers: Optional[int] = doc(None, "target number of layers (depth); None keeps all")
    importance: Literal["activation", "magnitude", "random"] = doc(
        "activation", "width ranking: Minitron activations, weight magnitude or seeded random (baselines)")
    depth_method: Literal["importance", "contiguous", "lm_loss", "tail"] = doc(
        "importance", "which layers go: lowest Minitron layer scores, the lowest-scoring contiguous block "
        "(first and last layers kept), lowest LM-loss increase when removed one at a time, or simply the last ones")
    drop_layers: list[int] = doc([], "depth by name: the layers to drop, 1-indexed as Model Optimizer numbers "
                                     "them (Llama-3.1-Minitron-4B-Depth: 16..31 of 32); num_layers must agree")
    params: Optional[float] = doc(None, "instead of a shape: parameter budget as a fraction of the teacher "
                                        "(e.g. 0.5); Model Optimizer searches shapes and picks the best by "
                                        "validation loss")

    def check(self) -> list[str]:
        shape = [self.hidden_size, self.ffn_hidden_size, self.num_attention_heads, self.num_layers,
                 self.drop_layers or None]
        problems = []
        if self.params is not None and any(v is not None for v in shape):
            problems.append(f"student {self.name}: give either params or a target shape, not both")
        if self.params is None and all(v is None for v in shape):
            problems.append(f"student {self.name}: give a target shape (hidden_size, ...) or params")
        if self.params is not None and not 0 < self.params < 1:
            problems.append(f"student {self.name}: params={self.params} must be a fraction in (0, 1)")
        for key, value in zip(("hidden_size", "ffn_hidden_size", "num_attention_heads", "num_layers"), shape):
            if value is not None and value <= 0:
                problems.append(f"student {self.name}: {key}={value} must be > 0")
        repeated = sorted({n for n in self.drop_layers if self.drop_layers.count(n) > 1})
        if repeated:
            problems.append(f"student {self.name}: drop_layers lists {repeated} more than once")
        if any(n < 1 for n in self.drop_layers):
            problems.append(f"student {self.name}: drop_layers {self.drop_layers} are 1-indexed (the first layer is 1)")
        if self.drop_layers and self.depth_method != "importance":
            problems.append(f"student {self.name}: drop_layers names the layers; leave out "
                            f"depth_method={self.depth_method!r}")
        return problems

    def target_layers(self, teacher_layers: int) -> Optional[int]:
        """The student's layer count: num_layers, or what drop_layers leaves of the teacher's."""
        return teacher_layers - len(self.drop_layers) if self.drop_layers else self.num_layers


@dataclass
class PruneConfig:
    calibration_samples: int = doc(64, "sequences in the calibration forward loop (Minitron: 1024)")
    calibration_batch_size: int = doc(4, "sequences per calibration forward pass")
    validation_samples: int = doc(16, "held-out (validation split) sequences on which students are reported")
    selection_samples: int = doc(8, "calibration (train split) sequences that score choices: lm_loss depth "
                                    "and the params search; kept apart from the validation text")
    hidden_size_divisor: int = doc(64, "search grid for hidden_size (Model Optimizer's divisor)")
    ffn_hidden_size_divisor: int = doc(64, "search grid for ffn_hidden_size")
    num_layers_divisor: int = doc(1, "search grid for num_layers")
    seed: int = doc(1234, "seed for the random baseline and sampling")
    dtype: str = doc("float32", "dtype of the model during calibration and pruning")
    top_k: int = doc(4, "params search: candidates scored by validation loss")
    repair: Literal["least_squares", "none"] = doc(
        "least_squares", "after pruning, re-fit the student's linear layers in closed form so each block matches "
                         "the teacher's on the calibration tokens (minitron/pruning/repair.py)")
    repair_samples: int = doc(64, "at most this many calibration sequences (the first of the importance pass's) for "
                                  "repair, which keeps both residual streams and the teacher's targets of all of them "
                                  "in memory")
    repair_ridge: float = doc(1e-2, "repair's ridge term, relative to the mean diagonal of each Gram matrix")
    students: list[StudentConfig] = doc([], "students to cut from the teacher")
    only: list[str] = doc([], "run only these students (by name); empty = all")
    parallel: Optional[ParallelConfig] = doc(
        None, "pruning's own layout: Model Optimizer prunes at TP=1, so only pipeline_parallel (ranks on one node, "
              "started by the stage itself); null = the recipe's `parallel`")

    def check(self) -> list[str]:
        names = [s.name for s in self.students]
        problems = [f"prune.students: duplicate name {n!r}" for n in set(names) if names.count(n) > 1]
        problems += [f"prune.only: no student named {n!r} (have {names})" for n in self.only if n not in names]
        problems += at_least_one(self, ("calibration_samples", "calibration_batch_size", "validation_samples",
                                        "selection_samples", "top_k"), "prune.")
        if not self.repair_ridge > 0:
            problems.append(f"prune.repair_ridge={self.repair_ridge} must be > 0")
        if self.repair_samples < 1:
            problems.append(f"prune.repair_samples={self.repair_samples} must be >= 1")
        if self.selection_samples > self.calibration_samples:
            problems.append("prune.selection_samples must be <= prune.calibration_samples")
        return problems

    def selected(self) -> list[StudentConfig]:
        return [s for s in self.students if not self.only or s.name in self.only]
