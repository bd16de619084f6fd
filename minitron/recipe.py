"""The recipe: one YAML file that describes a whole compression run.

Each section configures one stage (import, pruning, distillation, evaluation) or command
(`deploy`: export and build-engine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from minitron import config, cpu_budget
from minitron.cluster.config import LaunchConfig
from minitron.config import doc
from minitron.conversion.sample_text import SAMPLE_TEXT
from minitron.cpu_budget import CpuBudgetConfig
from minitron.deploy.config import DeployConfig
from minitron.data.config import DataConfig
from minitron.errors import MinitronError
from minitron.evaluation.config import EvalConfig
from minitron.parallel import ParallelConfig
from minitron.pruning.config import PruneConfig
from minitron.training.config import TrainConfig

#: `prune` and `distill` run one stage per student: `prune-<student>`, `distill-<student>`.
#: `eval` measures every model of the run; `report` is rewritten on every run (it is cheap).
STAGES = ("import", "verify", "teacher_correction", "prune", "distill", "eval", "report")
#: What `minitron run` and every recipe command run without --config (and `make demo` runs): the CPU demo.
DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m_minitron_cpu.yaml"


@dataclass
class ModelConfig:
    source: str = doc("embedded:smollm2-135m-instruct",
                      "teacher model: an HF checkpoint folder, a NeMo 2 checkpoint (context/ + weights/, e.g. from "
                      "NeMo's llm.import_ckpt), a .gguf file, or embedded:<name>")


@dataclass
class VerifyConfig:
    text: str = doc(SAMPLE_TEXT, "text whose logits are compared between Megatron and HF")
    logits_atol: float = doc(1e-4, "largest allowed |logit difference| between Megatron and HF (fp32)")
    layouts: list[list[int]] = doc([[1, 1]], "[TP, PP] layouts to load the NeMo checkpoint at and compare; "
                                   "layouts with TP*PP > 1 run under torchrun")

    def check(self) -> list[str]:
        bad = [lay for lay in self.layouts if len(lay) != 2 or min(lay) < 1]
        return [f"verify.layouts entries must be [TP, PP] with both >= 1, got {bad}"] if bad else []


@dataclass
class TrainingStageConfig:
    config: str = doc("", "training YAML (see nemo_configs/): optimizer, schedule, batch, KD loss")
    overrides: list[str] = doc([], "key=value overrides of that YAML, e.g. [steps=20, precision=fp32]")
    students: list[str] = doc([], "distill only: which pruned students (empty = every student of prune)")
    from_uncorrected_teacher: list[str] = doc(
        [], "distill only: students also distilled from the uncorrected teacher (stage "
            "distill-<student>@uncorrected), to compare as the Minitron paper does")
    intermediate_students: list[str] = doc(
        [], "distill only: students that also match the teacher's hidden state after each block of layers they "
            "dropped (Model Optimizer's hidden-state loss beside the logit KL; docs/training.md)")
    intermediate_loss: Literal["cosine", "mse"] = doc("cosine", "distill only: the hidden-state loss of "
                                                                "intermediate_students")
    share_teacher: bool = doc(
        False, "distill only: train the students of one teacher side by side, one teacher forward per micro-batch "
               "serving them all (pipeline_parallel 1; keeps one step's teacher logits in memory)")
    parallel: Optional[ParallelConfig] = doc(
        None, "this stage's own layout (e.g. TP=8 within a node x DP across nodes); null = the recipe's `parallel`")

    def check(self) -> list[str]:
        return [] if self.config else ["training stage needs `config: nemo_configs/<file>.yaml`"]

    def train_config(self) -> TrainConfig:
        """The training YAML with this stage's overrides (`load_recipe` made its path absolute)."""
        return config.load(TrainConfig, self.config, self.overrides)


@dataclass
class Recipe:
    name: str = dataclasses.field(metadata={"help": "run name; outputs go to <output_root>/<name>/<stage>/"})
    stages: list[str] = doc(["import", "verify"], f"stages to run, in order; any of {list(STAGES)}")
    output_root: str = doc("runs", "folder that holds every run")
    model: ModelConfig = doc(ModelConfig, "the model to compress")
    parallel: ParallelConfig = doc(ParallelConfig, "model parallelism of Megatron stages without a layout of their "
                                                   "own (prune.parallel, distill.parallel, teacher_correction.parallel)")
    verify: VerifyConfig = doc(VerifyConfig, "conversion checks")
    data: DataConfig = doc(DataConfig, "text for calibration, distillation and evaluation")
    prune: PruneConfig = doc(PruneConfig, "Minitron pruning: calibration and students")
    teacher_correction: Optional[TrainingStageConfig] = doc(
        None, "fine-tune the teacher on the distillation data first; when the stage is listed, its output is "
              "the teacher of prune and distill")
    distill: Optional[TrainingStageConfig] = doc(None, "knowledge distillation of the pruned students")
    eval: EvalConfig = doc(EvalConfig, "evaluation of every model of the run: perplexity, lm-eval tasks, speed")
    deploy: DeployConfig = doc(DeployConfig, "export and TensorRT engine settings of `minitron export` / "
                                             "`minitron build-engine --config` (flags override them)")
    launch: LaunchConfig = doc(LaunchConfig, "how `minitron launch` submits this recipe's jobs (NeMo-Run executors; "
                                             "a --site file and flags override it)")
    cpu_budget: Optional[CpuBudgetConfig] = doc(
        None, "a smaller budget where the run computes in fp32 on a CPU, so a CPU recipe fits its time everywhere")
    applied_budget: dict = dataclasses.field(default_factory=dict, init=False, metadata={
        "help": "what `cpu_budget` changed on this machine, by section (set when the recipe is loaded)"})

    def check(self) -> list[str]:
        unknown = [s for s in self.stages if s not in STAGES]
        problems = [f"stages: unknown stage(s) {unknown}; known: {list(STAGES)}"] if unknown else []
        if "prune" in self.stages and not self.prune.selected():
            problems.append("stages has prune but prune.students selects none")
        for stage in ("teacher_correction", "distill"):
            if stage in self.stages and getattr(self, stage) is None:
                problems.append(f"stages has {stage} but the recipe has no `{stage}:` section")
        if "teacher_correction" in self.stages and "prune" in self.stages \
                and self.stages.index("teacher_correction") > self.stages.index("prune"):
            problems.append("stages: teacher_correction must come before prune (the corrected teacher is the one "
                            "pruned and distilled from)")
        if self.distill is not None:
            names = [s.name for s in self.prune.students]
            problems += [f"distill.students: no pruned student {n!r}" for n in self.distill.students if n not in names]
            distilled = self.distill.students or [s.name for s in self.prune.selected()]
            problems += [f"distill.from_uncorrected_teacher: {n!r} is not a distilled student ({distilled})"
                         for n in self.distill.from_uncorrected_teacher if n not in distilled]
            problems += [f"distill.intermediate_students: {n!r} is not a distilled student ({distilled})"
                         for n in self.distill.intermediate_students if n not in distilled]
            if self.distill.intermediate_students and self.layout("distill").pipeline_parallel > 1:
                problems.append("distill.intermediate_students needs pipeline_parallel 1 for distillation (Model "
                                "Optimizer reads hidden states on the last pipeline stage only); set "
                                "distill.intermediate_students=[]")
            if self.distill.from_uncorrected_teacher and "distill" in self.stages \
                    and "teacher_correction" not in self.stages:
                problems.append("distill.from_uncorrected_teacher needs teacher_correction in stages (without it "
                                "every student is distilled from the uncorrected teacher already)")
        if self.cpu_budget and self.cpu_budget.from_uncorrected_teacher is not None:
            allowed = self.distill.from_uncorrected_teacher if self.distill else []
            problems += [f"cpu_budget.from_uncorrected_teacher: {n!r} is not in distill.from_uncorrected_teacher "
                         f"({allowed}); the budget can only leave comparisons out"
                         for n in self.cpu_budget.from_uncorrected_teacher if n not in allowed]
        if self.distill and self.distill.share_teacher and self.layout("distill").pipeline_parallel > 1:
            problems.append("distill.share_teacher needs pipeline_parallel 1 for distillation (the students replay "
                            "the teacher's last-stage logits); set distill.share_teacher=false")
        if self.layout("prune").tensor_parallel != 1:
            problems.append("prune layout: Model Optimizer's Minitron pruning runs at tensor_parallel=1; give the "
                            "prune stage pipeline stages instead (prune.parallel: {pipeline_parallel: 8})")
        return problems

    def layout(self, stage: str) -> ParallelConfig:
        """The parallel layout of a stage kind (prune, distill, teacher_correction): its own or the recipe's."""
        section = {"prune": self.prune, "distill": self.distill,
                   "teacher_correction": self.teacher_correction}.get(stage)
        return getattr(section, "parallel", None) or self.parallel

    def training_layouts(self) -> list[ParallelConfig]:
        """The distinct layouts of the training stages (distill, teacher_correction), for ``nproc=N``."""
        layouts = [self.layout(s) for s in ("teacher_correction", "distill")]
        return [lay for i, lay in enumerate(layouts) if all(lay is not other for other in layouts[:i])]


def load_recipe(path: str | Path | None, overrides: list[str] = (), output: str | None = None) -> Recipe:
    """The recipe at `path` (None: `DEFAULT_RECIPE`) with ``key=value`` overrides; `output` replaces output_root;
    then its `cpu_budget` applied where it computes in fp32 on a CPU (`recipe.applied_budget` says what changed).

    ``nproc=N`` (an override of no field) sets the data_parallel of the training stages' layouts so that
    TP * PP * DP = N.
    A relative training `config:` is looked up from the working directory, then from the folder above
    the recipe's (recipes/ and nemo_configs/ are siblings), so recipes run from any directory.
    """
    path = DEFAULT_RECIPE if path is None else path
    overrides = list(overrides)
    nproc = [o for o in overrides if o.startswith("nproc=")]
    recipe = config.load(Recipe, path, [o for o in overrides if not o.startswith("nproc=")])
    for o in nproc:
        try:
            n = int(o.split("=", 1)[1])
        except ValueError:
            raise MinitronError(f"{o}: give a whole number of processes, e.g. nproc=2") from None
        for layout in recipe.training_layouts():
            mp = layout.model_parallel
            if n < 1 or n % mp:
                raise MinitronError(f"nproc={n} is not a multiple of tensor_parallel x pipeline_parallel = {mp}")
            layout.data_parallel = n // mp
    if output:
        recipe.output_root = str(Path(output))
    for stage in (recipe.teacher_correction, recipe.distill):
        if stage is not None and not Path(stage.config).is_absolute() and not Path(stage.config).exists():
            beside = Path(path).resolve().parent.parent / stage.config
            if beside.exists():
                stage.config = str(beside)
    recipe.applied_budget = cpu_budget.apply(recipe)
    return recipe


def show_config(args) -> dict:
    """`minitron config`: the resolved recipe (and with --explain every key's documentation)."""
    recipe = load_recipe(args.config, args.overrides)
    if args.explain:
        print("\n".join(config.describe(Recipe)))
    return config.to_dict(recipe)
