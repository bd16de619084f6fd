"""The KD step with the logit KL chunked over tokens vs unchunked: tokens/s, share of the matmul peak, peak memory.

Run: make bench-kd-step   (or: .venv/bin/python benchmarks/bench_kd_step.py [--shape smollm2-135m|llama3.1-8b]
     [--layers N] [--seq-length N] [--global-batch-size N] [--steps N] [--precision auto|bf16|fp32] [--chunks auto,none])
On a GPU (the GPU check): python3 benchmarks/bench_kd_step.py --shape llama3.1-8b --layers 4 --seq-length 4096

Teacher and student are random-weight Llama models of a real shape: the student is a width student of
that teacher (SmolLM2-135M: hidden 576 -> 384, FFN 1536 -> 1024, heads 9 -> 6; Llama 3.1 8B ->
Llama-3.1-Minitron-4B-Width: hidden 4096 -> 3072, FFN 14336 -> 9216), `--layers` keeps the first N layers of
both. They are written as HF folders and imported with minitron's converter, so the bench needs no model
hub, no embedded model and no dataset: the text is this Python's own standard library source, read with a
byte-level tokenizer. Speed and memory do not depend on the weights or the text; the full vocabulary
(49,152 or 128,256) is what the chunking is about.

Each value of `kd.chunk_tokens` in `--chunks` trains in its own process with the project's loop
(`minitron.training.loop.train`: Megatron-Core, Model Optimizer distillation), on the GPU when there is
one, so that its peak memory is its own: `torch.cuda.max_memory_allocated` on a GPU, the process's peak
resident set on CPU. Printed per value: tokens/s (steps after the first), the fraction of the measured
matmul peak (model FLOPs: 6 x student + 2 x teacher matmul parameters per token plus attention, as
`bench_kd_loop.py` counts them; MFU on a GPU), peak memory, and the step-1 KD loss, which every value
must give alike (the same objective; the loop's tests hold the chunked loss to fp32 rounding).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

from bench_kd_loop import flops_per_token, matmul_peak, read_metrics

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# name: (teacher HF config, what the width-pruned student changes)
SHAPES = {
    "smollm2-135m": (dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                          tie_word_embeddings=True, max_position_embeddings=8192),
                     dict(hidden_size=384, intermediate_size=1024, num_attention_heads=6)),
    "llama3.1-8b": (dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                         rope_scaling=LLAMA31_ROPE, tie_word_embeddings=False, max_position_embeddings=131072),
                    dict(hidden_size=3072, intermediate_size=9216)),
}


def llama_config(shape: str, student: bool, layers: int | None):
    from transformers import LlamaConfig

    teacher, pruned = SHAPES[shape]
    kw = {**teacher, **(pruned if student else {}), "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}
    if layers:
        kw["num_hidden_layers"] = layers
    config = LlamaConfig(**kw)
    config.architectures = ["LlamaForCausalLM"]
    return config


def write_random_llama(path: Path, config, seed: int) -> Path:
    """A random-weight HF checkpoint (bf16) with a byte-level tokenizer; reused when already written."""
    import torch
    from transformers import LlamaForCausalLM

    from minitron.data.tokenizer import byte_level_tokenizer

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(seed)
    with torch.device("meta"):  # allocate once, fill in place: transformers' own init is slow for 1B+ params
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.tie_weights()
    partial = path.with_name(path.name + ".partial")
    model.save_pretrained(partial)
    byte_level_tokenizer().save_pretrained(partial)
    partial.rename(path)
    return path


def write_corpus(path: Path, min_bytes: int) -> Path:
    """This Python's standard library source as one text file (blank-line paragraphs become documents)."""
    if path.is_file() and path.stat().st_size >= min_bytes:
        return path
    parts, size = [], 0
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = source.read_text(encoding="utf-8", errors="ignore")
        parts.append(text)
        size += len(text.encode())
        if size >= min_bytes:
            break
    if size < min_bytes:
        raise SystemExit(f"bench_kd_step: this Python's standard library has {size:,} bytes of source, the run needs "
                         f"{min_bytes:,}; lower --steps, --global-batch-size or --seq-length")
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n\n".join(parts))
    partial.rename(path)
    return path


def prepare(args) -> dict:
    """Teacher and student NeMo checkpoints and the corpus, under --output (kept for the next run)."""
    from minitron.conversion.convert import hf_to_nemo

    out = args.output / f"{args.shape}_L{args.layers or 'all'}"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, seed in (("teacher", 1), ("student", 2)):
        hf = write_random_llama(out / f"{role}_hf", llama_config(args.shape, role == "student", args.layers), seed)
        nemo = out / f"{role}_nemo"
        if not nemo.is_dir():
            hf_to_nemo(hf, nemo)
        paths |= {role: str(nemo), f"{role}_hf": str(hf)}
    # Bytes are tokens; the train split is ~90% of the text, plus validation rows and margin; at least
    # 4 MB, so that the 5% validation split holds a sequence.
    needed = max(2 * (args.steps + 2) * args.global_batch_size * (args.seq_length + 1), 4 * 2 ** 20)
    corpus = write_corpus(out / "stdlib.txt", needed)
    return paths | {"corpus": str(corpus), "data": str(out / "data"), "runs": str(out / "runs")}


def chunk_value(text: str):
    """--chunks item -> kd.chunk_tokens: 'auto', 'none' (null: Model Optimizer's unchunked loss) or a count."""
    return None if text == "none" else text if text == "auto" else int(text)


def one_variant(args, paths: dict, chunk: str) -> dict:
    """Train `args.steps` KD steps with kd.chunk_tokens=`chunk` in this process; its speed and peak memory."""
    import shutil

    import torch

    from minitron.data import DataConfig
    from minitron.training.config import KDConfig, TrainConfig
    from minitron.training.loop import TrainJob, train

    output = Path(paths["runs"]) / f"chunk_{chunk}"
    shutil.rmtree(output, ignore_errors=True)
    # One step more than is run: the loop never reaches its last step, so nothing is evaluated, saved or exported.
    cfg = TrainConfig(steps=args.steps + 1, micro_batch_size=args.micro_batch_size,
                      global_batch_size=args.global_batch_size, lr=3e-4, min_lr=3e-5, warmup_steps=1,
                      precision=args.precision, eval_interval=10 ** 6, save_interval=10 ** 6,
                      eval_samples=1, kd=KDConfig(chunk_tokens=chunk_value(chunk)))
    data = DataConfig(source=paths["corpus"], seq_length=args.seq_length, cache_dir=paths["data"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train(TrainJob(student=paths["student"], teacher=paths["teacher"], output=str(output), data=data, train=cfg,
                   max_steps_this_run=args.steps))
    first, timed = read_metrics(output / "metrics.jsonl")
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"chunk_tokens": chunk, "tokens_per_second": len(timed) * cfg.global_batch_size * args.seq_length
            / sum(m["seconds"] for m in timed), "first_step_seconds": first["seconds"], "step1_kd_loss": first["kd_loss"],
            "peak_memory_bytes": peak, "device": torch.cuda.get_device_name() if cuda else "cpu"}


def run_in_own_process(args, chunk: str) -> dict:
    result = args.output / f"variant_{chunk}.json"
    # This run's own arguments; --output again, as it may be the temporary folder chosen here.
    command = [sys.executable, __file__, *sys.argv[1:], "--output", str(args.output), "--variant", chunk,
               "--result", str(result)]
    result.unlink(missing_ok=True)
    code = subprocess.run(command).returncode
    # A variant that fails (the unchunked loss running out of memory, say) is a result, not the end of the bench.
    return json.loads(result.read_text()) if code == 0 else {"chunk_tokens": chunk, "failed": f"exit code {code}"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m", help="teacher shape (student: its width prune)")
    p.add_argument("--layers", type=int, default=None, help="keep the first N layers of both (default: all)")
    p.add_argument("--seq-length", type=int, default=256, help="tokens per sequence")
    p.add_argument("--global-batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--micro-batch-size", type=int, default=None, help="sequences per forward (default: the whole batch)")
    p.add_argument("--steps", type=int, default=4, help="steps per variant (the first is not timed)")
    p.add_argument("--precision", default="auto", help="auto|bf16|fp32")
    p.add_argument("--chunks", default="auto,none", help="kd.chunk_tokens values to compare: auto, none (unchunked), N")
    p.add_argument("--output", type=Path, default=None, help="models, corpus and runs (default: a new temp folder)")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one value, in a process of its own
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    problems = [f"--{name.replace('_', '-')}={getattr(args, name)} must be >= {low}"
                for name, low in (("seq_length", 1), ("global_batch_size", 1), ("steps", 2)) if getattr(args, name) < low]
    if args.layers is not None and args.layers < 1:
        problems.append(f"--layers={args.layers} must be >= 1")
    for item in args.chunks.split(","):
        try:
            value = chunk_value(item)
            if isinstance(value, int) and value < 1:
                raise ValueError
        except ValueError:
            problems.append(f"--chunks item {item!r}: use auto, none or a token count >= 1")
    if problems:
        p.error("; ".join(problems))
    args.output = args.output or Path(tempfile.mkdtemp(prefix="bench_kd_step-"))
    return args


def main() -> None:
    from minitron.runtime import cpu_runtime

    cpu_runtime.use_tuned_runtime()  # as `minitron` runs: Intel OpenMP / tcmalloc where installed
    warnings.filterwarnings("ignore")
    args = parse_args()
    if args.variant:  # the models and corpus are there already: prepare only finds them
        args.result.write_text(json.dumps(one_variant(args, prepare(args), args.variant)))
        return
    import torch

    from minitron.runtime.llama import LlamaArch
    from minitron.runtime.precision import hardware, resolve

    paths = prepare(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve(args.precision, torch.device(device))
    results = [run_in_own_process(args, chunk) for chunk in args.chunks.split(",")]
    peak = matmul_peak(precision.dtype, n=8192 if device == "cuda" else 2048, device=device)
    step_flops = (3 * flops_per_token(LlamaArch.from_hf_dir(paths["student_hf"]), args.seq_length)
                  + flops_per_token(LlamaArch.from_hf_dir(paths["teacher_hf"]), args.seq_length))
    hw = hardware()
    print(f"\nKD step, {args.shape} shape{f', {args.layers} layers' if args.layers else ''}, random weights: "
          f"{args.global_batch_size} x {args.seq_length} tokens a step, {args.steps} steps (first untimed); "
          f"{next((r['device'] for r in results if 'device' in r), device)}, precision {precision.name} ({precision.reason}); CPU {hw['cpu_capability']}, "
          f"OpenMP {hw['openmp']}, {hw['allocator']}; matmul peak {peak:,.0f} GFLOP/s")
    print(f"{'kd.chunk_tokens':<16} {'tokens/s':>10} {'of peak':>8} {'peak memory':>12} {'step-1 KD loss':>15} "
          f"{'first step':>11}")
    for r in results:
        if "failed" in r:
            print(f"{r['chunk_tokens']:<16} failed ({r['failed']}; its output is above)")
            continue
        r["fraction_of_peak"] = r["tokens_per_second"] * step_flops / (peak * 1e9)
        print(f"{r['chunk_tokens']:<16} {r['tokens_per_second']:>10.1f} {100 * r['fraction_of_peak']:>7.1f}% "
              f"{r['peak_memory_bytes'] / 2 ** 30:>9.2f} GiB {r['step1_kd_loss']:>15.4f} {r['first_step_seconds']:>10.1f}s")
    print(f"peak memory: {'GPU allocated' if device == 'cuda' else 'process peak RSS'}")
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "precision": precision.to_dict(), "hardware": hw,
               "matmul_peak_gflops": peak, "flops_per_token": step_flops, "variants": results}
    (args.output / "bench_kd_step.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {args.output / 'bench_kd_step.json'}")


if __name__ == "__main__":
    main()
