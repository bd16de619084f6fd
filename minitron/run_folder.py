"""The run folder ``<output_root>/<recipe name>/``: the one owner of stage names, summaries and models.

Layout (one folder per stage; a stage is complete when its ``summary.json`` exists)::

    import/                 teacher as NeMo 2 (the HF folder stays in the cache or the user's folder)
    verify/                 Megatron vs HF logits, NeMo -> HF round trip
    teacher_correction/     the teacher fine-tuned on the distillation data
    prune-<student>/        one per student of `prune.students`
    distill-<student>/      one per distilled student (from the corrected teacher when there is one)
    distill-<student>@uncorrected/  distilled from the uncorrected teacher (`distill.from_uncorrected_teacher`)
    eval/  report/          refreshed on every run
    <stage>.work/           training checkpoints and eval caches (survive a killed run)
    importance/<key>/       pruning scores shared by every student of one teacher

Models are named after what made them: ``teacher``, ``teacher-corrected``, ``<student>-pruned`` (Model
Optimizer's slice), ``<student>-repaired`` (the same after closed-form repair, where the recipe repairs),
``<student>-distilled`` and ``<student>-distilled@uncorrected``.

A run folder moves: paths inside it are stored in ``summary.json`` relative to the run folder, as
``"./<stage>/..."``, and resolved against wherever the folder is when read, so a run copied to another
machine or used from another working directory works as it did. Folders written before that (paths
relative to the directory the run was started from, or absolute) and the earlier name of the
uncorrected-teacher comparison (``distill-<student>@teacher``) are still read.

Everything else (pipeline, stages, evaluation, report, server, benchmarks) asks this module
instead of building paths or parsing stage names itself.
"""

from __future__ import annotations

import json
import os
import shutil
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
#: Suffix of a distillation from the uncorrected teacher: stage `distill-<student>@uncorrected`, model
#: `<student>-distilled@uncorrected`. Run folders written before the rename say `@teacher`.
UNCORRECTED, LEGACY_UNCORRECTED = "@uncorrected", "@teacher"
#: How a summary marks a path inside the run folder: relative to the run folder.
RUN_RELATIVE = "./"


def stage_name(kind: str, student: str | None = None, uncorrected: bool = False) -> str:
    """The folder name of a stage: ``prune`` + ``width`` -> ``prune-width``; ``import`` -> ``import``;
    ``distill`` + ``width`` from the uncorrected teacher -> ``distill-width@uncorrected``."""
    return f"{kind}-{student}{UNCORRECTED if uncorrected else ''}" if kind in PER_STUDENT else kind


def current_name(name: str) -> str:
    """A stage folder's name as this version writes it (``distill-width@teacher`` -> ``distill-width@uncorrected``)."""
    return name[: -len(LEGACY_UNCORRECTED)] + UNCORRECTED if name.endswith(LEGACY_UNCORRECTED) else name


def stage_kind(name: str) -> str:
    """``prune-width`` -> ``prune``; ``teacher_correction`` -> ``teacher_correction``."""
    kind = name.split("-", 1)[0]
    return kind if kind in PER_STUDENT else name


def student_of(name: str) -> str | None:
    """``distill-width`` and ``distill-width@uncorrected`` -> ``width``; None for stages that are not per student."""
    return current_name(name).split("-", 1)[1].removesuffix(UNCORRECTED) if stage_kind(name) in PER_STUDENT else None


def from_uncorrected(name: str) -> bool:
    """Whether a distillation stage uses the uncorrected teacher although the run corrects it."""
    return current_name(name).endswith(UNCORRECTED)


def is_training(name: str) -> bool:
    return stage_kind(name) in ("teacher_correction", "distill")


class RunFolder:
    """One recipe's run: where each stage writes, what it wrote, and which models exist."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.root = Path(recipe.output_root) / recipe.name

    # ---- folders and summaries ----------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self._existing_or_legacy(stage, "")

    def work_dir(self, stage: str) -> Path:
        """Scratch of a stage that must survive a killed run (checkpoints, caches)."""
        return self._existing_or_legacy(stage, ".work")

    def _existing_or_legacy(self, stage: str, suffix: str) -> Path:
        path = self.root / f"{stage}{suffix}"
        if stage.endswith(UNCORRECTED) and not path.exists():
            legacy = self.root / f"{stage[: -len(UNCORRECTED)]}{LEGACY_UNCORRECTED}{suffix}"
            if legacy.exists():
                return legacy
        return path

    def importance_dir(self, key: str) -> Path:
        return self.root / "importance" / key

    def done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "summary.json").is_file()

    def summary(self, stage: str) -> dict:
        """A finished stage's summary, its paths resolved against where the run folder is now."""
        path = self.stage_dir(stage) / "summary.json"
        if not path.is_file():
            raise MinitronError(f"{path}: missing; run stage {stage!r} first (add it to `stages`)")
        return self.resolve(json.loads(path.read_text()))

    def summaries(self) -> dict[str, dict]:
        """Every finished stage's summary by stage name, each with ``_dir`` (its folder)."""
        found = {}
        for path in sorted(self.root.glob("*/summary.json")):
            if not path.parent.name.startswith("."):  # skip partial folders being written
                found[current_name(path.parent.name)] = {**self.resolve(json.loads(path.read_text())),
                                                         "_dir": str(path.parent)}
        return found

    def write_stage(self, stage: str, runner: Callable[[Path], dict]) -> dict:
        """Run `runner(tmp)` into the stage folder: written beside it and renamed when complete, so a
        folder that exists is whole. Refreshed stages replace their previous folder. The summary is stored
        with run-relative paths; the one returned has them resolved."""
        out = self.stage_dir(stage)
        self._remove_leftovers(out.name)
        print(f"[{stage}] running -> {out}")
        start = time.perf_counter()
        with atomic_output_dir(out, replace=stage in REFRESHED) as tmp:
            summary = self.portable(_retarget(runner(tmp), str(tmp), str(out)))
            summary["stage_seconds"] = round(time.perf_counter() - start, 2)
            summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_json_atomic(tmp / "summary.json", summary)
        print(f"[{stage}] finished in {summary['stage_seconds']} s")
        return self.resolve(summary)

    def _remove_leftovers(self, name: str) -> None:
        """Temporary folders of an earlier attempt at this stage that was killed before it could clean up."""
        for pattern in (f".{name}.partial-*", f".{name}.previous-*"):
            for path in self.root.glob(pattern):
                shutil.rmtree(path, ignore_errors=True)

    # ---- paths in summaries -----------------------------------------------------------------------
    def portable(self, obj):
        """`obj` with every path inside the run folder written relative to it (``./<stage>/...``)."""
        root = os.path.abspath(self.root)

        def convert(value: str) -> str:
            if "/" not in value or value.startswith(RUN_RELATIVE):
                return value
            absolute = os.path.abspath(value)
            if absolute == root or absolute.startswith(root + os.sep):
                return RUN_RELATIVE + os.path.relpath(absolute, root)
            return value

        return _map_strings(obj, convert)

    def resolve(self, obj):
        """The inverse of `portable`, against where the run folder is now; paths that older run folders stored
        relative to their working directory are found in this folder by the run's name."""
        def convert(value: str) -> str:
            if value.startswith(RUN_RELATIVE):
                return str(self.root / value[len(RUN_RELATIVE):])
            parts = Path(value).parts
            if "/" in value and self.root.name in parts and not Path(value).exists():
                rest = parts[len(parts) - 1 - parts[::-1].index(self.root.name) + 1:]
                moved = self.root.joinpath(*rest) if rest else self.root
                return str(moved) if moved.exists() else value
            return value

        return _map_strings(obj, convert)

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
        """The teacher as imported: {"hf": folder, "nemo": NeMo checkpoint}. An HF teacher that lives outside
        the run (the cache, the user's folder) and is not where the run was made is found again from
        `model.source` (a run folder copied to another machine)."""
        from minitron.models import resolve_hf_source  # converts GGUF sources: heavy, only when needed

        s = self.summary("import")
        hf = Path(s["hf"])
        if not (hf / "config.json").is_file() and s.get("source_format") == "hf":
            hf = resolve_hf_source(self.recipe.model.source)
        return {"hf": hf, "nemo": Path(s["nemo"])}

    def corrects_teacher(self) -> bool:
        """The recipe lists teacher correction, or it was run into this folder (`minitron teacher-correction`)."""
        return "teacher_correction" in self.recipe.stages or self.done("teacher_correction")

    def teacher_model(self, stage: str | None = None) -> str:
        """The teacher of prune and distill (of `stage`): ``teacher-corrected`` when the run corrects it, except
        for the `distill-<student>@uncorrected` comparison; else ``teacher``."""
        corrected = self.corrects_teacher() and not (stage and from_uncorrected(stage))
        return "teacher-corrected" if corrected else "teacher"

    def teacher_nemo(self, stage: str | None = None) -> Path:
        """NeMo checkpoint of `teacher_model(stage)`."""
        return self.model_checkpoint(self.teacher_model(stage), "nemo")

    def model_stages(self) -> dict[str, str]:
        """Model name -> the stage that produces it (whether or not it has run)."""
        stages = {"teacher": "import", "teacher-corrected": "teacher_correction"}
        for s in self.recipe.prune.students:
            stages[f"{s.name}-pruned"] = stage_name("prune", s.name)
            if self.recipe.prune.repair != "none":
                stages[f"{s.name}-repaired"] = stage_name("prune", s.name)
        stages.update({f"{s}-distilled": stage_name("distill", s) for s in self.distilled_students()})
        if self.recipe.distill is not None:
            stages.update({f"{s}-distilled{UNCORRECTED}": stage_name("distill", s, uncorrected=True)
                           for s in self.recipe.distill.from_uncorrected_teacher})
        return stages

    def model_checkpoint(self, model: str, kind: str = "hf") -> Path:
        """A model's checkpoint folder: ``hf`` (transformers) or ``nemo`` (NeMo 2). A repaired student's stage
        also holds its unrepaired slice (HF only), which is the ``-pruned`` model."""
        if model == "teacher":
            return self.imported_teacher()[kind]
        summary = self.summary(self.model_stages()[model])
        if model.endswith("-pruned") and "hf_unrepaired" in summary:
            if kind != "hf":
                raise MinitronError(f"{model}: only its HF folder is kept (the student is {model[:-7]}-repaired)")
            return Path(summary["hf_unrepaired"])
        return Path(summary[kind])

    def models(self) -> dict[str, Path]:
        """Model name -> HF checkpoint folder, for every model the run has produced so far."""
        return {name: self.model_checkpoint(name) for name, stage in self.model_stages().items()
                if self.done(stage) and (not name.endswith("-repaired") or "hf_unrepaired" in self.summary(stage))}

    def newest_distilled(self) -> Path | None:
        """HF folder of the product of the newest distillation: students trained together (one teacher forward,
        `distill.share_teacher`) finished together, and of those the first the recipe lists is the product. The
        comparison students distilled from the uncorrected teacher never are."""
        order = self.distilled_students()
        finished = {}
        for stage, s in (self.summaries() if self.root.is_dir() else {}).items():
            if stage_kind(stage) == "distill" and not from_uncorrected(stage):
                finished[stage] = (s.get("finished") or _mtime(Path(s["_dir"])), s)
        if not finished:
            return None

        def rank(stage: str):
            leader = current_name(finished[stage][1].get("trained_with", stage))
            when = finished.get(leader, finished[stage])[0]
            student = student_of(stage)
            return when, -(order.index(student) if student in order else len(order))

        return Path(finished[max(finished, key=rank)][1]["hf"])

    def newest_or_default(self) -> Path:
        """`newest_distilled`, else the embedded default model (what export and serving take by default)."""
        from minitron.models import EMBEDDED_DEFAULT, resolve_hf_source

        return self.newest_distilled() or resolve_hf_source(EMBEDDED_DEFAULT)


def _mtime(path: Path) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))


def _map_strings(obj, convert: Callable[[str], str]):
    if isinstance(obj, str):
        return convert(obj)
    if isinstance(obj, dict):
        return {k: _map_strings(v, convert) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_strings(v, convert) for v in obj]
    return obj


def _retarget(obj, old: str, new: str):
    """Rewrite paths in a summary from the temporary stage folder to its final name."""
    return _map_strings(obj, lambda value: value.replace(old, new))
