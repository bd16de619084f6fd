"""`minitron plan`: memory per GPU, throughput and wall time of a recipe's stages on a given cluster, before
anything is submitted; layouts that cannot fit or do not divide the GPUs are refused.

The model is the usual first-order one (Megatron-LM's own accounting, Korthikanti et al. 2022 for activations):

* weights in the training precision (bf16: 2 B/param); fp32 gradients (Megatron's DDP reduces in fp32: 4 B);
  Adam in fp32 (master weights + two moments: 12 B), divided over data-parallel ranks by the distributed
  optimizer (on GPUs, as `minitron/training/loop.py` sets it); the frozen teacher: weights only;
* the most loaded pipeline stage: its share of the layers plus the embedding or output layer (the larger);
* activations of the first pipeline stage, which holds PP micro-batches in flight under 1F1B: per layer and
  micro-batch ``34·s·b·h`` bytes (bf16, flash attention, sequence parallel over TP), or ``2·s·b·h`` with full
  recomputation; plus the logits of student and teacher (fp32, vocab-parallel) on the last stage;
* a fixed reserve for the CUDA context, NCCL buffers and fragmentation.

Throughput is model FLOPs at a stated MFU: ``6·N + 12·L·h·s`` per trained token (student), ``2·N + 4·L·h·s``
per teacher-forward token. These are estimates to choose a layout with, not measurements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from minitron.errors import MinitronError
from minitron.pruning.config import StudentConfig
from minitron.recipe import Recipe, load_recipe
from minitron.run_folder import stage_kind
from minitron.runtime.llama import LlamaArch, read_json

GIB = 2 ** 30


@dataclass(frozen=True)
class GPU:
    memory_gib: float
    bf16_tflops: float  # dense peak


GPUS = {"h100-80gb": GPU(80, 989), "h200-141gb": GPU(141, 989), "a100-80gb": GPU(80, 312), "b200-180gb": GPU(180, 2250)}
#: Teachers sized without their checkpoint at hand (`--teacher NAME`).
KNOWN_TEACHERS = {"llama3.1-8b": dict(vocab_size=128256, hidden_size=4096, ffn_hidden_size=14336, num_layers=32,
                                      num_attention_heads=32, num_query_groups=8, head_dim=128, norm_eps=1e-5,
                                      rope_theta=500000.0, rope_scaling_factor=8.0, tie_word_embeddings=False,
                                      max_position_embeddings=131072)}
RESERVE_GIB = 4.0  # CUDA context, NCCL buffers, allocator fragmentation


@dataclass
class Layout:
    tp: int
    pp: int
    dp: int
    micro_batch: int
    seq: int
    recompute: bool


def params_per_gpu(arch: LlamaArch, lay: Layout) -> float:
    """Parameters held by the most loaded GPU: its layers plus the embedding or the output layer (both when one
    stage is first and last, an untied model at PP=1), split over TP."""
    edges = 2 if lay.pp == 1 and not arch.tie_word_embeddings else 1
    return (-(-arch.num_layers // lay.pp) * arch.layer_parameters + edges * arch.vocab_size * arch.hidden_size) / lay.tp


def activation_bytes(arch: LlamaArch, lay: Layout, in_flight: int) -> float:
    per_layer = (2 if lay.recompute else 34) * lay.seq * lay.micro_batch * arch.hidden_size / lay.tp
    return per_layer * -(-arch.num_layers // lay.pp) * in_flight


def logits_bytes(arch: LlamaArch, lay: Layout, models: int) -> float:
    """fp32 logits (+ their gradient for the student) on the last stage, vocab-parallel over TP."""
    return (models + 1) * 4 * lay.seq * lay.micro_batch * arch.vocab_size / lay.tp


def train_memory(model: LlamaArch, teacher: LlamaArch | None, lay: Layout, precision_bytes: int) -> dict[str, float]:
    """GiB per GPU of one training stage (student `model`, optional frozen `teacher` in the same layout)."""
    n = params_per_gpu(model, lay)
    optimizer = (12 if precision_bytes == 2 else 8) * n / lay.dp  # fp32 master (bf16 only) + Adam moments
    memory = {"weights": precision_bytes * n, "gradients": 4 * n, "optimizer": optimizer,
              "teacher_weights": precision_bytes * params_per_gpu(teacher, lay) if teacher else 0.0,
              "activations": activation_bytes(model, lay, in_flight=lay.pp),
              "logits": logits_bytes(model, lay, 2 if teacher else 1), "reserve": RESERVE_GIB * GIB}
    return {k: v / GIB for k, v in memory.items()}


def _side_by_side(name: str, model: LlamaArch, jobs: list, lay: Layout, cfg, precision_bytes: int) -> dict[str, float]:
    """distill.share_teacher: the other students' weights, gradients and optimizer stay resident, and one step's
    teacher logits are kept for them (micro-batches x micro x seq x vocab / TP)."""
    others = [m for n, m, _, _ in jobs if n.startswith("distill-") and n != name]
    resident = sum(sum(v for k, v in train_memory(m, None, lay, precision_bytes).items()
                       if k in ("weights", "gradients", "optimizer")) for m in others)
    micro_batches = cfg.global_batch_size // (lay.dp * lay.micro_batch)
    kept = micro_batches * precision_bytes * lay.seq * lay.micro_batch * model.vocab_size / lay.tp / GIB
    return {"other_students": resident, "kept_teacher_logits": kept if others else 0.0}


def repair_tokens(recipe: Recipe) -> int:
    """Calibration tokens repair fits on: at most prune.repair_samples sequences of the calibration set."""
    return min(recipe.prune.repair_samples, recipe.prune.calibration_samples) * recipe.data.seq_length


def repair_memory(teacher: LlamaArch, student: LlamaArch, recipe: Recipe) -> dict[str, float]:
    """GiB on the most loaded GPU of prune's closed-form repair (`minitron/pruning/repair.py`, TP=1): both models
    in prune.dtype on its pipeline stage; for every repair token, both residual streams, the teacher's per-layer
    targets (kept q/k/v rows, gate/up rows, two residuals on the kept channels, the full next residual), the
    student's residual after attention and MLP input, and its next residual; the unfused attention of one
    calibration micro-batch (Megatron's local spec: scores in prune.dtype plus three fp32 copies for the
    softmax); the largest Gram and cross matrices in fp32. Checked against the peak measured by
    `benchmarks/bench_repair.py` on an H200 (README, Measured)."""
    cfg, pp = recipe.prune, recipe.layout("prune").pipeline_parallel
    size = 4 if cfg.dtype in ("float32", "fp32") else 2
    lay = Layout(1, pp, 1, 1, recipe.data.seq_length, False)
    tokens = repair_tokens(recipe)
    qkv = (student.num_attention_heads + 2 * student.num_query_groups) * student.head_dim
    per_token = student.hidden_size + teacher.hidden_size  # the two residual streams
    per_token += qkv + 2 * student.ffn_hidden_size + 2 * student.hidden_size + teacher.hidden_size  # targets
    per_token += 3 * student.hidden_size  # mid residual and MLP input of every batch, then the next residual
    heads = max(teacher.num_attention_heads, student.num_attention_heads)
    attention = cfg.calibration_batch_size * heads * recipe.data.seq_length ** 2 * (size + 12)
    widest = max(student.hidden_size, student.ffn_hidden_size, student.num_attention_heads * student.head_dim)
    fits = 4 * (widest ** 2 + student.hidden_size * max(qkv, 2 * student.ffn_hidden_size))
    memory = {"weights": size * params_per_gpu(student, lay), "gradients": 0.0, "optimizer": 0.0,
              "teacher_weights": size * params_per_gpu(teacher, lay),
              "activations": size * tokens * per_token + fits + attention, "logits": 0.0, "reserve": RESERVE_GIB * GIB}
    return {k: v / GIB for k, v in memory.items()}


def flops_per_token(arch: LlamaArch, seq: int, training: bool) -> float:
    n = arch.num_parameters()
    attention = arch.num_layers * arch.hidden_size * seq
    return 6 * n + 12 * attention if training else 2 * n + 4 * attention


def student_arch(teacher: LlamaArch, student: StudentConfig) -> LlamaArch:
    shape = {k: getattr(student, k) for k in ("hidden_size", "ffn_hidden_size", "num_attention_heads")
             if getattr(student, k) is not None}
    layers = student.target_layers(teacher.num_layers)
    if layers is not None:
        shape["num_layers"] = layers
    return dataclasses.replace(teacher, **shape)


def teacher_arch(recipe: Recipe, teacher: str | None) -> LlamaArch:
    """From --teacher (a known name or an HF folder), else the recipe's model.source when it is readable."""
    source = teacher or recipe.model.source
    if source in KNOWN_TEACHERS:
        return LlamaArch(**KNOWN_TEACHERS[source])
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        raise MinitronError(f"plan: no config.json at {source}; pass --teacher {' | '.join(KNOWN_TEACHERS)} or an HF "
                            "checkpoint folder to size the run without the model at hand")
    return LlamaArch.from_hf_config(read_json(config), str(config))


def plan(recipe: Recipe, teacher: LlamaArch, nodes: int, gpus_per_node: int, gpu: GPU, mfu: float,
         recompute: bool) -> dict:
    """Per training stage: layout, memory per GPU, tokens/s, wall time; `problems` lists what cannot run."""
    problems, stages = [], {}
    if nodes < 1 or gpus_per_node < 1:
        raise MinitronError(f"plan: nodes={nodes} and gpus_per_node={gpus_per_node} must both be >= 1")
    world = nodes * gpus_per_node
    if "prune" in recipe.stages and recipe.layout("prune").pipeline_parallel > gpus_per_node:
        problems.append(f"prune: pipeline_parallel={recipe.layout('prune').pipeline_parallel} is more than the "
                        f"{gpus_per_node} GPUs of one node (pruning runs on one node)")
    if "prune" in recipe.stages and recipe.prune.repair != "none":
        for s in recipe.prune.selected():
            memory = repair_memory(teacher, student_arch(teacher, s), recipe)
            total = sum(memory.values())
            if total > gpu.memory_gib:
                problems.append(f"prune-{s.name} repair: needs {total:.1f} GiB per GPU, more than the "
                                f"{gpu.memory_gib:g} GiB there (lower prune.repair_samples: every pipeline "
                                "stage keeps the activations of all repair tokens)")
            stages[f"prune-{s.name} repair"] = {
                "layout": {"tp": 1, "pp": recipe.layout("prune").pipeline_parallel, "dp": 1},
                "memory_gib": {k: round(v, 2) for k, v in memory.items()},
                "total_gib": round(total, 1), "tokens": repair_tokens(recipe), "tokens_per_s": 0, "wall_hours": 0, "gpu_hours": 0}
    jobs = []
    if recipe.teacher_correction and "teacher_correction" in recipe.stages:
        jobs.append(("teacher_correction", teacher, None, recipe.teacher_correction.train_config()))
    if recipe.distill and "distill" in recipe.stages:
        cfg = recipe.distill.train_config()
        names = recipe.distill.students or [s.name for s in recipe.prune.selected()]
        for s in recipe.prune.students:
            if s.name in names:
                jobs.append((f"distill-{s.name}", student_arch(teacher, s), teacher, cfg))
    for name, model, frozen, cfg in jobs:
        tp, pp = _check_divides(recipe, name, nodes, gpus_per_node, problems)
        dp = world // (tp * pp)
        lay = Layout(tp, pp, dp, cfg.micro_batch(dp), recipe.data.seq_length, recompute)
        precision_bytes = 4 if cfg.precision == "fp32" else 2
        memory = train_memory(model, frozen, lay, precision_bytes)
        if name.startswith("distill-") and recipe.distill.share_teacher:
            memory.update(_side_by_side(name, model, jobs, lay, cfg, precision_bytes))
        total = sum(memory.values())
        if cfg.global_batch_size % (lay.micro_batch * lay.dp):
            problems.append(f"{name}: global_batch_size={cfg.global_batch_size} is not divisible by micro_batch_size "
                            f"{lay.micro_batch} x data_parallel {lay.dp}")
        if total > gpu.memory_gib:
            problems.append(f"{name}: needs {total:.1f} GiB per GPU, more than the {gpu.memory_gib:g} GiB there "
                            f"(raise tensor/pipeline parallelism{'' if recompute else ' or add --recompute'})")
        per_token = flops_per_token(model, lay.seq, True) + (flops_per_token(frozen, lay.seq, False) if frozen else 0)
        tokens_per_s = world * gpu.bf16_tflops * 1e12 * mfu / per_token
        tokens = cfg.steps * cfg.global_batch_size * lay.seq
        hours = tokens / tokens_per_s / 3600
        stages[name] = {"layout": dataclasses.asdict(lay), "memory_gib": {k: round(v, 2) for k, v in memory.items()},
                        "total_gib": round(total, 1), "params_per_gpu": round(params_per_gpu(model, lay)),
                        "tokens": tokens, "flops_per_token": per_token, "tokens_per_s": round(tokens_per_s),
                        "wall_hours": round(hours, 1), "gpu_hours": round(hours * world)}
    return {"gpus": world, "gpu": dataclasses.asdict(gpu), "mfu": mfu, "stages": stages, "problems": problems}


def _check_divides(recipe: Recipe, stage: str, nodes: int, gpus_per_node: int, problems: list[str]) -> tuple[int, int]:
    """The stage's TP and PP; raises when the GPUs are not a multiple of TP x PP (nothing else can be sized)."""
    layout = recipe.layout(stage_kind(stage))
    tp, pp, world = layout.tensor_parallel, layout.pipeline_parallel, nodes * gpus_per_node
    if world % (tp * pp):
        raise MinitronError(f"plan: {world} GPUs ({nodes} x {gpus_per_node}) are not a multiple of {stage}'s "
                            f"tensor_parallel x pipeline_parallel = {tp} x {pp}")
    if tp > gpus_per_node:
        problems.append(f"{stage}: tensor_parallel={tp} spans nodes ({gpus_per_node} GPUs each): keep TP within a node")
    return tp, pp


def plan_command(args) -> dict:
    """`minitron plan --config R --nodes N --gpus-per-node G [--gpu NAME] [--mfu F] [--recompute]`."""
    if args.gpu not in GPUS:
        raise MinitronError(f"plan: unknown --gpu {args.gpu!r}; known: {', '.join(GPUS)}")
    recipe = load_recipe(args.config, args.overrides)
    result = plan(recipe, teacher_arch(recipe, args.teacher), args.nodes, args.gpus_per_node, GPUS[args.gpu],
                  args.mfu, args.recompute)
    print(render(result))
    if result["problems"]:
        raise MinitronError("plan: " + "; ".join(result["problems"]))
    return result


def render(result: dict) -> str:
    parts = ("weights", "gradients", "optimizer", "teacher_weights", "activations", "logits", "reserve")
    header = ["stage", "TP/PP/DP", *parts, "total GiB", "tokens/s", "wall h", "GPU h"]
    rows = [[name, f"{s['layout']['tp']}/{s['layout']['pp']}/{s['layout']['dp']}",
             *[f"{s['memory_gib'][p]:.1f}" for p in parts], f"{s['total_gib']:.1f}", f"{s['tokens_per_s']:,}",
             f"{s['wall_hours']:,}", f"{s['gpu_hours']:,}"] for name, s in result["stages"].items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + f"\n({result['gpus']} GPUs, {result['gpu']['memory_gib']:g} GiB, " \
                              f"{result['gpu']['bf16_tflops']:g} TFLOP/s bf16 peak, MFU {result['mfu']:.0%})"
