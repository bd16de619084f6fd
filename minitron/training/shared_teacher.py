"""One teacher forward for several students (`train_together`).

Model Optimizer's distillation model runs its teacher inside every forward and captures the teacher's
output-layer output with a hook, which the logit loss then reads. Students distilled from the same
teacher on the same batches need those logits only once: the first student's distillation model holds
the real teacher, and a hook here records each micro-batch's output-layer output in order; the other
students get a stand-in teacher whose ``output_layer`` returns the recorded outputs in the same order,
so Model Optimizer's own hook and loss see exactly what the real teacher produced. Memory: one step's
teacher logits (micro-batches x micro x seq x vocab / TP, in the training precision).
"""

from __future__ import annotations

import torch

from minitron.errors import MinitronError


class TeacherLogits:
    """Records the real teacher's output-layer outputs of one pass, replays them to stand-ins."""

    def __init__(self, teacher: torch.nn.Module):
        self._outputs: list = []
        self._cursor = 0
        self._recording = False
        self._config = teacher.config
        teacher.output_layer.register_forward_hook(self._record_hook)

    def _record_hook(self, _module, _inputs, output) -> None:
        if self._recording:
            self._outputs.append(output)

    def record(self) -> None:
        """The next pass (the first student's) runs the teacher: keep its outputs."""
        self._outputs, self._recording = [], True

    def replay(self) -> None:
        """The next pass (another student's, over the same micro-batches) reads the kept outputs."""
        self._recording, self._cursor = False, 0

    def clear(self) -> None:
        self._outputs, self._recording = [], False

    def next_output(self):
        if self._cursor >= len(self._outputs):
            raise MinitronError(f"shared teacher: micro-batch {self._cursor + 1} replayed but only "
                                f"{len(self._outputs)} recorded (students must see the same micro-batches)")
        output = self._outputs[self._cursor]
        self._cursor += 1
        return output

    def stand_in(self) -> torch.nn.Module:
        return _StandInTeacher(self)


class _Replay(torch.nn.Module):
    def __init__(self, logits: TeacherLogits):
        super().__init__()
        self._logits = logits

    def forward(self):
        return self._logits.next_output()


class _NoInput:
    """Pipeline-input setter of a model that takes no pipeline input (PP = 1)."""

    def set_input_tensor(self, _tensor) -> None:
        return None


class _StandInTeacher(torch.nn.Module):
    """Takes the real teacher's place in a distillation model: its forward replays the next recorded
    output-layer output through ``output_layer``, where Model Optimizer's hook picks it up."""

    def __init__(self, logits: TeacherLogits):
        super().__init__()
        self.config = logits._config
        self.output_layer = _Replay(logits)
        self.decoder = _NoInput()

    def forward(self, *_args, **_kwargs):
        return self.output_layer()
