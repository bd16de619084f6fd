"""Why a hand-written KD loop can end ahead of ours at equal tokens: one setting changed at a time.

Run: make bench-kd-settings   (or: .venv/bin/python benchmarks/bench_kd_settings.py [--steps 12] [--lr 3e-4])

A user's plain transformers + PyTorch KD loop (AdamW with its defaults, forward KL, random 256-token windows of
the corpus, a constant learning rate) was seen to end ahead of the project's loop after 12 steps x 8 x 256
tokens. `make bench-kd-loop` shows the two loops agree when every setting is the same; this bench takes the
plain loop of bench_kd_loop.py on the demo's width student (its own run folder under --output: the uncorrected
teacher, the student repaired on 64 calibration sequences as when this was seen) at that batch (8 x 256) and
changes one setting at a time from the project's to the user's:

  minitron            the project's loop (Megatron-Core + Model Optimizer), the project's settings
  plain               the plain loop, the same settings: warmup 1 step then cosine to min_lr, weight decay of
                      the recipe, gradient clipping, the recipe's packed and shuffled train rows
  constant LR         no warmup, no decay
  weight decay 0.01   torch.optim.AdamW's default instead of the recipe's
  no clipping         no gradient-norm clipping
  random windows      random 257-token windows of the train split's token stream instead of packed rows
  fp32                fp32 instead of bf16 autocast (where bf16 is what `auto` chose)
  as a user writes it constant LR, weight decay 0.01, no clipping, random windows

Printed per row: held-out LM loss (the validation rows) and out-of-domain LM loss (Debian's GPL-3 and
Apache-2.0 texts, which the project never trains on), HF model in fp32, and the difference to `plain`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path

from bench_kd_loop import heldout_loss, minitron_loop, plain_loop, prepare_run, train_rows
from bench_quality import OOD_TEXTS

STUDENT = "width"


def random_windows(tokens, count: int, length: int, seed: int):
    """`count` windows of `length` tokens at uniformly random offsets of `tokens` (a 1-D stream)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - length, (count,), generator=g)
    return [tokens[s:s + length] for s in starts.tolist()]


def variants(cfg, rows, windows, bf16: bool) -> dict[str, tuple]:
    """Name -> (train config, token rows, bf16) of each plain-loop row."""
    user = dataclasses.replace(cfg, warmup_steps=0, min_lr=cfg.lr, weight_decay=0.01, clip_grad=0.0)
    table = {"plain": (cfg, rows, bf16),
             "constant LR": (dataclasses.replace(cfg, warmup_steps=0, min_lr=cfg.lr), rows, bf16),
             "weight decay 0.01": (dataclasses.replace(cfg, weight_decay=0.01), rows, bf16),
             "no clipping": (dataclasses.replace(cfg, clip_grad=0.0), rows, bf16),
             "random windows": (cfg, windows, bf16)}
    if bf16:
        table["fp32"] = (cfg, rows, False)
    table["as a user writes it"] = (user, windows, bf16)
    return table


def main() -> None:
    from minitron.evaluation.perplexity import file_tokens, split_tokens
    from minitron.runtime import cpu_runtime
    from minitron.runtime.precision import hardware, resolve

    cpu_runtime.use_tuned_runtime()
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12, help="optimizer steps of every row")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of every row (min_lr: a tenth)")
    p.add_argument("--global-batch-size", type=int, default=8, help="sequences per step of every row")
    p.add_argument("--precision", default="auto", help="auto|bf16|fp32")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    out = args.output or Path(tempfile.mkdtemp(prefix="bench_kd_settings-"))
    start = time.perf_counter()
    # The loops are compared, not the students: the 64 calibration sequences prune it in a quarter of the time.
    recipe, folder = prepare_run(out, (STUDENT,), ("prune.calibration_samples=64", "prune.repair_samples=64"))
    precision = resolve(args.precision)
    cfg = dataclasses.replace(recipe.distill.train_config(), steps=args.steps, lr=args.lr, min_lr=args.lr / 10,
                              global_batch_size=args.global_batch_size, micro_batch_size=None,
                              precision=args.precision, warmup_steps=1, eval_interval=10 ** 6, save_interval=10 ** 6)
    teacher_hf = folder.imported_teacher()["hf"]
    student_hf = folder.summary(f"prune-{STUDENT}")["hf"]
    rows, val = train_rows(recipe, teacher_hf, cfg)
    seq = recipe.data.seq_length + 1
    windows = random_windows(split_tokens(recipe.data, teacher_hf, "train"), len(rows), seq, recipe.data.seed)
    ood_file = out / "ood.txt"
    ood_file.write_text("\n\n".join(t.read_text() for t in OOD_TEXTS if t.is_file()))
    ood = file_tokens(ood_file, teacher_hf, len(val) * seq)
    ood = ood[:ood.numel() // seq * seq].view(-1, seq)
    print(f"machine: {hardware()}; precision {precision.name}; {args.steps} steps x {cfg.global_batch_size} x "
          f"{recipe.data.seq_length} tokens, peak LR {args.lr:g}", flush=True)

    work = out / "loops"
    trained = {"minitron": minitron_loop(recipe, folder, cfg, work, (STUDENT,))["hf"][STUDENT]}
    for name, (c, r, bf16) in variants(cfg, rows, windows, precision.name == "bf16").items():
        print(f"{name}:", flush=True)
        trained[name] = plain_loop(teacher_hf, student_hf, r, c, bf16, work / name.replace(" ", "_"))["hf"]
    losses = {name: {"held-out": heldout_loss(str(hf), val), "out-of-domain": heldout_loss(str(hf), ood)}
              for name, hf in trained.items()}
    base = losses["plain"]
    print(f"\nwidth student, {args.steps} steps x {cfg.global_batch_size} x {recipe.data.seq_length} tokens, "
          f"peak LR {args.lr:g}, {precision.name}, CPU {hardware()['cpu_capability']}; LM loss in nats (fp32)")
    print(f"{'loop':<22}{'held-out':>10}{'Δ plain':>9}{'out-of-domain':>15}{'Δ plain':>9}")
    for name, row in losses.items():
        print(f"{name:<22}{row['held-out']:>10.4f}{row['held-out'] - base['held-out']:>+9.4f}"
              f"{row['out-of-domain']:>15.4f}{row['out-of-domain'] - base['out-of-domain']:>+9.4f}")
    (out / "bench_kd_settings.json").write_text(json.dumps(
        {"steps": args.steps, "lr": args.lr, "precision": precision.name, "hardware": hardware(),
         "tokens_per_step": cfg.global_batch_size * recipe.data.seq_length, "losses": losses,
         "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    print(f"results: {out / 'bench_kd_settings.json'} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
