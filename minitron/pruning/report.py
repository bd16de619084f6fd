"""Pruning report: parameter counts per part, layer importance, what was removed (JSON + PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from minitron.runtime.llama import LlamaArch


def parameter_breakdown(arch: LlamaArch) -> dict[str, int]:
    h, d = arch.hidden_size, arch.head_dim
    attn = h * d * (2 * arch.num_attention_heads + 2 * arch.num_query_groups)
    return {
        "embedding": arch.vocab_size * h,
        "attention": arch.num_layers * attn,
        "mlp": arch.num_layers * 3 * h * arch.ffn_hidden_size,
        "norms": (2 * arch.num_layers + 1) * h,
        "output_layer": 0 if arch.tie_word_embeddings else arch.vocab_size * h,
    }


def build(result: dict) -> dict:
    teacher = LlamaArch(**result["teacher_arch"])
    student = LlamaArch(**result["arch"])
    before, after = parameter_breakdown(teacher), parameter_breakdown(student)
    non_emb = lambda p: p["attention"] + p["mlp"] + p["norms"]  # noqa: E731
    removed = {k: f"{getattr(teacher, k)} -> {getattr(student, k)}"
               for k in ("hidden_size", "ffn_hidden_size", "num_attention_heads", "num_layers")
               if getattr(teacher, k) != getattr(student, k)}
    return {
        "student": result["student"],
        "parameters": {"teacher": before, "student": after,
                       "teacher_total": sum(before.values()), "student_total": sum(after.values()),
                       "non_embedding_fraction_kept": non_emb(after) / non_emb(before)},
        "removed": removed, "layers_dropped": result["layers_dropped"],
        "validation_loss": {"teacher": result["teacher_validation_loss"], "student": result["validation_loss"],
                            "unrepaired": result.get("unrepaired_validation_loss", result["validation_loss"]),
                            "tokens": result["validation_tokens"]},
        "repair": result.get("repair"),
        "method": {"importance": result["importance"], "depth_method": result["depth_method"]},
        "layer_scores": result["layer_scores"],
        **({"loss_without_layer": result["loss_without_layer"]} if "loss_without_layer" in result else {}),
    }


def write(report: dict, folder: Path) -> list[str]:
    """report.json and report.png (parameters per part; layer scores with dropped layers marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    parts = list(report["parameters"]["teacher"])
    x = range(len(parts))
    t = [report["parameters"]["teacher"][p] / 1e6 for p in parts]
    s = [report["parameters"]["student"][p] / 1e6 for p in parts]
    ax1.bar([i - 0.2 for i in x], t, width=0.4, label="teacher")
    ax1.bar([i + 0.2 for i in x], s, width=0.4, label=f"student {report['student']}")
    ax1.set_xticks(list(x), parts, rotation=20)
    ax1.set_ylabel("parameters (M)")
    ax1.set_title("Parameters per part")
    ax1.legend()
    scores = {int(k): v for k, v in report["layer_scores"].items()}
    layers = sorted(scores)
    dropped = set(report["layers_dropped"])
    ax2.bar(layers, [scores[n] for n in layers],
            color=["tab:red" if n in dropped else "tab:blue" for n in layers])
    ax2.set_xlabel("layer (1-indexed); red = dropped")
    ax2.set_ylabel("importance (1 - cos(in, out), summed)")
    loss = report["validation_loss"]
    repaired = f" (repaired; pruned {loss['unrepaired']:.3f})" if report.get("repair") else ""
    ax2.set_title(f"Layer importance  |  val loss {loss['teacher']:.3f} -> {loss['student']:.3f}{repaired}", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "report.png", dpi=110)
    plt.close(fig)
    return ["report.json", "report.png"]
