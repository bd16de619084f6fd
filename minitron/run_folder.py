"""The run folder ``<output_root>/<recipe name>/``: the one owner of stage names, summaries and models.

Layout (one folder per stage; a stage is complete when its ``summary.json`` exists)::

    import/                 teacher as NeMo 2 (the HF folder stays in the cache or the user's folder)
    verify/                 Megatron vs HF logits, NeMo -> HF round trip
    teacher_correction/     the teacher fine-tuned on the distillation data
    prune-<student>/        one per student of `prune.students`
    distill-<student>/      one per distilled student (from the corrected teacher when there is one)
    distill-<student>@teacher/  distilled from the uncorrected teacher (`distill.from_uncorrected_teacher`)
    eval/  report/          refreshed on every run
    <stage>.work/           training checkpoints and eval caches (survive a killed run)
    importance/<key>/       pruning scores shared by every student of one teacher

Everything else (pipeline, stages, evaluation, report, server, benchmarks) asks this module
instead of building paths or parsing stage names itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from minitron.errors import MinitronError
from minitron.io import atomic_output_dir, write_json_atomic
from minitron.recipe import Recipe

#: Stages whose folder is rebuilt on every run (their inputs can grow), replacing the previous one atomically.
REFRESHED = ("eval", "report")
#: Stages that run one folder per student: `prune-<student>`, `distill-<student>`.
PER_STUDENT = ("prune", "distill")
#: Suffix of a distillation from the uncorrected teacher: `distill-<student>@teacher`, model `<student>-distilled@teacher`.
UNCORRECTED = "@teacher"


def stage_name(kind: str, student: str | None = None, uncorrected: bool = False) -> str:
    """The folder name of a stage: ``prune`` + ``width`` -> ``prune-width``; ``import`` -> ``import``;
    ``distill`` + ``width`` from the uncorrected teacher -> ``distill-width@teacher``."""
    return f"{kind}-{student}{UNCORRECTED if uncorrected else ''}" if kind in PER_STUDENT else kind


def stage_kind(name: str) -> str:
    """``prune-width`` -> ``prune``; ``teacher_correction`` -> ``teacher_correction``."""
    kind = name.split("-", 1)[0]
    return kind if kind in PER_STUDENT else name


def student_of(name: str) -> str | None:
    """``distill-width`` and ``distill-width@teacher`` -> ``width``; None for stages that are not per student."""
    return name.split("-", 1)[1].removesuffix(UNCORRECTED) if stage_kind(name) in PER_STUDENT else None


def from_uncorrected(name: str) -> bool:
    """Whether a distillation stage uses the uncorrected teacher although the run corrects it."""
    return name.endswith(UNCORRECTED)


def is_training(name: str) -> bool:
    return stage_kind(name) in ("teacher_correction", "distill")


class RunFolder:
    """One recipe's run: where each stage writes, what it wrote, and which models exist."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.root = Path(recipe.output_root) / recipe.name

    # ---- folders and summaries ----------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def work_dir(self, stage: str) -> Path:
        """Scratch of a stage that must survive a killed run (checkpoints, caches)."""
        return self.root / f"{stage}.work"

    def importance_dir(self, key: str) -> Path:
        return self.root / "importance" / key

    def done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "summary.json").is_file()

    def summary(self, stage: str) -> dict:
        path = self.stage_dir(stage) / "summary.json"
        if not path.is_file():
            raise MinitronError(f"{path}: missing; run stage {stage!r} first (add it to `stages`)")
        return json.loads(path.read_text())

    def summaries(self) -> dict[str, dict]:
        """Every finished stage's summary by folder name, each with ``_dir`` (its folder)."""
        found = {}
        for path in sorted(self.root.glob("*/summary.json")):
            if not path.parent.name.startswith("."):  # skip partial folders being written
                found[path.parent.name] = {**json.loads(path.read_text()), "_dir": str(path.parent)}
        return found

    def write_stage(self, stage: str, runner: Callable[[Path], dict]) -> dict:
        """Run `runner(tmp)` into the stage folder: written beside it and renamed when complete, so a
        folder that exists is whole. Refreshed stages replace their previous folder; paths in the summary
        are rewritten from the temporary name to the final one."""
        out = self.stage_dir(stage)
        print(f"[{stage}] running -> {out}")
        start = time.perf_counter()
        with atomic_output_dir(out, replace=stage in REFRESHED) as tmp:
            summary = _retarget(runner(tmp), str(tmp), str(out))
            summary["stage_seconds"] = round(time.perf_counter() - start, 2)
            write_json_atomic(tmp / "summary.json", summary)
        print(f"[{stage}] finished in {summary['stage_seconds']} s")
        return summary

    # ---- the plan ---------------------------------------------------------------------------------
    def distilled_students(self) -> list[str]:
        if self.recipe.distill is None:
            return []
        return self.recipe.distill.students or [s.name for s in self.recipe.prune.selected()]

    def planned(self) -> list[tuple[str, str]]:
        """(stage kind, folder name) in run order; `prune`/`distill` expand to one stage per student."""
        plan = []
        for kind in self.recipe.stages:
            if kind == "prune":
                plan += [(kind, stage_name(kind, s.name)) for s in self.recipe.prune.selected()]
            elif kind == "distill":
                plan += [(kind, stage_name(kind, s)) for s in self.distilled_students()]
                plan += [(kind, stage_name(kind, s, uncorrected=True))
                         for s in self.recipe.distill.from_uncorrected_teacher]
            else:
                plan.append((kind, kind))
        return plan

    # ---- the run's models -------------------------------------------------------------------------
    def imported_teacher(self) -> dict[str, Path]:
        """The teacher as imported: {"hf": folder, "nemo": NeMo checkpoint}."""
        s = self.summary("import")
        return {"hf": Path(s["hf"]), "nemo": Path(s["nemo"])}

    def corrects_teacher(self) -> bool:
        """The recipe lists teacher correction, or it was run into this folder (`minitron teacher-correct`)."""
        return "teacher_correction" in self.recipe.stages or self.done("teacher_correction")

    def teacher_model(self, stage: str | None = None) -> str:
        """The teacher of prune and distill (of `stage`): ``teacher-corrected`` when the run corrects it, except
        for the `distill-<student>@teacher` comparison; else ``teacher``."""
        corrected = self.corrects_teacher() and not (stage and from_uncorrected(stage))
        return "teacher-corrected" if corrected else "teacher"

    def teacher_nemo(self, stage: str | None = None) -> Path:
        """NeMo checkpoint of `teacher_model(stage)`."""
        return Path(self.summary(self.model_stages()[self.teacher_model(stage)])["nemo"])

    def model_stages(self) -> dict[str, str]:
        """Model name -> the stage that produces it (whether or not it has run)."""
        stages = {"teacher": "import", "teacher-corrected": "teacher_correction"}
        stages.update({f"{s.name}-pruned": stage_name("prune", s.name) for s in self.recipe.prune.students})
        stages.update({f"{s}-distilled": stage_name("distill", s) for s in self.distilled_students()})
        if self.recipe.distill is not None:
            stages.update({f"{s}-distilled{UNCORRECTED}": stage_name("distill", s, uncorrected=True)
                           for s in self.recipe.distill.from_uncorrected_teacher})
        return stages

    def models(self) -> dict[str, Path]:
        """Model name -> HF checkpoint folder, for every model the run has produced so far."""
        return {name: Path(self.summary(stage)["hf"]) for name, stage in self.model_stages().items()
                if self.done(stage)}

    def newest_distilled(self) -> Path | None:
        """HF folder of the most recently written distilled student, if any."""
        students = [p.parent for p in self.root.glob(f"{stage_name('distill', '*')}/hf/config.json")
                    if not from_uncorrected(p.parent.parent.name)]  # the comparison students are not the product
        return max(students, key=lambda p: p.stat().st_mtime) if students else None


def _retarget(obj, old: str, new: str):
    """Rewrite paths in a summary from the temporary stage folder to its final name."""
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, dict):
        return {k: _retarget(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_retarget(v, old, new) for v in obj]
    return obj
