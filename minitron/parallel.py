"""Model-parallel layout of a Megatron stage (TP x PP x DP processes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from minitron.config import at_least_one, doc


@dataclass
class ParallelConfig:
    tensor_parallel: int = doc(1, "tensor-parallel size (Megatron TP)")
    pipeline_parallel: int = doc(1, "pipeline-parallel size (Megatron PP)")
    data_parallel: int = doc(1, "data-parallel size of training stages; they run TP*PP*DP processes "
                                "(under torchrun when more than one)")

    def check(self) -> list[str]:
        return at_least_one(self, [f.name for f in dataclasses.fields(self)], "parallel.")

    @property
    def model_parallel(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def world_size(self) -> int:
        return self.model_parallel * self.data_parallel
