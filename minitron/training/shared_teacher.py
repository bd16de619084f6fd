"""One teacher forward for several students (`train_together`).

Model Optimizer's distillation model runs its teacher inside every forward and captures, with hooks, the
teacher's output-layer output (the logit loss) and the outputs of the teacher modules named in
intermediate pairs (hidden-state losses). Students distilled from the same teacher on the same batches need
those outputs only once: the first student's distillation model holds the real teacher, and hooks here
record each micro-batch's outputs of the output layer and of the modules the other students' pairs name, in
order; the other students get a stand-in teacher whose modules of the same names return the recorded outputs
in the same order, so Model Optimizer's own hooks and losses see exactly what the real teacher produced.
Memory: one step's teacher logits (micro-batches x micro x seq x vocab / TP, in the training precision), plus
one hidden state per named module and micro-batch.
"""

from __future__ import annotations

import torch

from minitron.errors import MinitronError

OUTPUT = "output_layer"


class TeacherLogits:
    """Records the real teacher's output-layer outputs (and those of `modules`, by name) of one pass,
    replays them to stand-ins."""

    def __init__(self, teacher: torch.nn.Module, modules: list[str] = ()):
        self.names = [n for n in dict.fromkeys(modules) if n != OUTPUT] + [OUTPUT]  # the output layer runs last
        self._outputs: dict[str, list] = {n: [] for n in self.names}
        self._cursor = dict.fromkeys(self.names, 0)
        self._recording = False
        self._config = teacher.config
        for name in self.names:
            try:
                module = teacher.get_submodule(name)
            except AttributeError:
                raise MinitronError(f"shared teacher: the teacher has no module {name!r} (kd.intermediate_pairs "
                                    "name teacher modules as decoder.layers.<i>)") from None
            module.register_forward_hook(lambda _m, _i, out, name=name: self._record(name, out))

    def _record(self, name: str, output) -> None:
        if self._recording:
            self._outputs[name].append(output)

    def record(self) -> None:
        """The next pass (the first student's) runs the teacher: keep its outputs."""
        self._outputs, self._recording = {n: [] for n in self.names}, True

    def replay(self) -> None:
        """The next pass (another student's, over the same micro-batches) reads the kept outputs."""
        self._recording, self._cursor = False, dict.fromkeys(self.names, 0)

    def clear(self) -> None:
        self._outputs, self._recording = {n: [] for n in self.names}, False

    def next_output(self, name: str = OUTPUT):
        kept, at = self._outputs[name], self._cursor[name]
        if at >= len(kept):
            raise MinitronError(f"shared teacher: micro-batch {at + 1} of {name} replayed but only {len(kept)} "
                                "recorded (students must see the same micro-batches)")
        self._cursor[name] = at + 1
        return kept[at]

    def stand_in(self) -> torch.nn.Module:
        return _StandInTeacher(self)


class _Replay(torch.nn.Module):
    def __init__(self, logits: TeacherLogits, name: str):
        super().__init__()
        self._logits, self._name = logits, name

    def forward(self, *_args, **_kwargs):
        return self._logits.next_output(self._name)


class _NoInput(torch.nn.Module):
    """A container of replayed modules; as `decoder`, the pipeline-input setter of a model that takes no
    pipeline input (PP = 1)."""

    def set_input_tensor(self, _tensor) -> None:
        return None


class _StandInTeacher(_NoInput):
    """Takes the real teacher's place in a distillation model: its forward replays the next recorded output
    of each named module through a module of the same name, where Model Optimizer's hooks pick them up."""

    def __init__(self, logits: TeacherLogits):
        super().__init__()
        self.config = logits._config
        self.decoder = _NoInput()
        for name in logits.names:
            *path, leaf = name.split(".")
            parent = self
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, _NoInput())
                parent = getattr(parent, part)
            parent.add_module(leaf, _Replay(logits, name))
        self._names = logits.names

    def forward(self, *_args, **_kwargs):
        for name in self._names[:-1]:
            self.get_submodule(name)()
        return self.get_submodule(self._names[-1])()
