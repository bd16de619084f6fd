"""Importance scores for Minitron pruning: collected, stored, re-used, and the baselines.

Model Optimizer's ``mcore_minitron`` searcher ranks channels from *activation* statistics
gathered by forward hooks (hidden channels after each norm, attention heads at the output
projection, MLP neurons at fc2's input) and layers by ``1 - cos(input, output)``. We run that
collection once (`calibrate`) and store it in a safe format (safetensors + JSON), so pruning
the same teacher to another shape re-uses it without a forward pass.

Baselines fill the *same* structure from other sources, so every method goes through the same
Model Optimizer code path: ``magnitude`` (weight norms) and ``random`` (seeded) for width;
``tail``, ``contiguous`` and ``lm_loss`` layer rankings for depth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minitron.errors import MinitronError

FORMAT = "minitron/importance/v1"


@dataclass
class ImportanceScores:
    """What Model Optimizer's searcher keeps between a calibration and a prune."""

    #: per pipeline rank: module name -> accumulated squared activations (or {hook: tensor})
    activations_per_rank: list[dict]
    #: 1-indexed layer number -> score (higher = more important)
    layer_scores: dict[int, float]
    #: how they were made (method, samples, tokens, ...)
    info: dict

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        flat = {}
        for rank, acts in enumerate(self.activations_per_rank):
            for name, value in acts.items():
                if isinstance(value, dict):
                    for i, (_, t) in enumerate(sorted(value.items())):
                        flat[f"{rank}|{name}|{i}"] = t.detach().float().cpu().contiguous()
                else:
                    flat[f"{rank}|{name}|"] = value.detach().float().cpu().contiguous()
        save_file(flat, str(folder / "activations.safetensors"))
        doc = {"format": FORMAT, "layer_scores": {str(k): float(v) for k, v in self.layer_scores.items()},
               "info": self.info}
        (folder / "scores.json").write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "ImportanceScores":
        try:
            doc = json.loads((folder / "scores.json").read_text())
            flat = load_file(str(folder / "activations.safetensors"))
        except (OSError, json.JSONDecodeError) as e:
            raise MinitronError(f"{folder}: cannot read importance scores ({e})") from None
        if doc.get("format") != FORMAT:
            raise MinitronError(f"{folder}/scores.json: unknown format {doc.get('format')!r}")
        ranks: dict[int, dict] = {}
        for key, t in sorted(flat.items()):
            rank, name, sub = key.split("|")
            acts = ranks.setdefault(int(rank), {})
            if sub:
                acts.setdefault(name, {})[int(sub)] = t
            else:
                acts[name] = t
        return cls([ranks[r] for r in sorted(ranks)],
                   {int(k): v for k, v in doc["layer_scores"].items()}, doc["info"])

    def modelopt_state(self) -> dict:
        """The searcher state dict Model Optimizer restores from its ``scores_path``."""
        return {"activations_per_rank": self.activations_per_rank, "layer_scores": dict(self.layer_scores),
                "sorted_layers": None, "top_k_candidates_per_constraint": {}}


def calibrate(model, forward_loop, minitron_config) -> ImportanceScores:
    """Collect activation importance with Model Optimizer's own hooks (forward passes only).

    `model` is converted in place to a dynamic search space; throw it away afterwards.
    """
    import modelopt.torch.nas as mtn
    from modelopt.torch.prune.plugins.mcore_minitron import ImportanceEstimatorRegistry

    model = mtn.convert(model, mode=[("mcore_minitron", minitron_config)])
    registry = ImportanceEstimatorRegistry(model)
    model.eval()
    with torch.no_grad():
        forward_loop(model)
    activations, layer_scores = registry.get_activations_and_layer_scores()
    registry.cleanup()
    return ImportanceScores(activations, {int(k): float(v) for k, v in layer_scores.items()}, {"method": "activation"})


# ---- width baselines ----------------------------------------------------------------------------
def width_baseline(model, method: str, seed: int, layer_scores: dict[int, float]) -> ImportanceScores:
    """`magnitude`: rank channels/neurons/heads by weight norms; `random`: by a seeded draw.

    Shapes follow Model Optimizer's hooks: hidden [h], attention [heads*head_dim] (head score =
    L2 over its dims), MLP [ffn]. Values are *squared* (the searcher takes a square root).
    Run on a pipeline rank's local model; ranks' dicts are gathered by the caller.
    """
    from megatron.core import parallel_state

    gen = torch.Generator().manual_seed(seed + parallel_state.get_pipeline_model_parallel_rank())

    def score(weights: torch.Tensor) -> torch.Tensor:
        return torch.rand(weights.shape, generator=gen) + 1e-3 if method == "random" else weights.pow(2)

    acts: dict = {}
    # Model Optimizer sums hidden-channel importance over pipeline stages: the first stage (which
    # holds the embedding) contributes the ranking, the others zeros.
    if parallel_state.is_pipeline_first_stage():
        acts[""] = {0: score(model.embedding.word_embeddings.weight.float().norm(dim=0))}
    else:
        acts[""] = {0: torch.zeros(model.config.hidden_size)}
    for i, layer in enumerate(model.decoder.layers):
        attn, mlp = layer.self_attention, layer.mlp
        proj_cols = attn.linear_proj.weight.float().norm(dim=0)  # [heads * head_dim]
        acts[f"decoder.layers.{i}.self_attention"] = score(proj_cols)
        fc1 = mlp.linear_fc1.weight.float()
        gate, up = fc1.chunk(2, dim=0)
        neuron = torch.sqrt(gate.pow(2).sum(1) + up.pow(2).sum(1) + mlp.linear_fc2.weight.float().pow(2).sum(0))
        acts[f"decoder.layers.{i}.mlp"] = score(neuron)
    return ImportanceScores(_gather_pp(acts), dict(layer_scores), {"method": method, "seed": seed})


def _gather_pp(local: dict) -> list[dict]:
    from megatron.core import parallel_state

    group = parallel_state.get_pipeline_model_parallel_group()
    out = [None] * parallel_state.get_pipeline_model_parallel_world_size()
    torch.distributed.all_gather_object(out, local, group=group)
    return out


# ---- depth rankings ---------------------------------------------------------------------------------
def scores_dropping(layers_to_drop: list[int], num_layers: int) -> dict[int, float]:
    """Layer scores under which Model Optimizer drops exactly `layers_to_drop` (1-indexed)."""
    drop = set(layers_to_drop)
    return {n: (0.0 if n in drop else 1.0) + 1e-6 * (num_layers - n) for n in range(1, num_layers + 1)}


def tail_layers(num_layers: int, keep: int) -> list[int]:
    return list(range(keep + 1, num_layers + 1))


def contiguous_block(layer_scores: dict[int, float], keep: int) -> list[int]:
    """The contiguous block of layers with the lowest total importance, keeping the first and last.

    Minitron (Llama-3.1 8B -> 4B-Depth) found dropping one contiguous block beats dropping the
    lowest-scoring scattered layers on downstream accuracy; first and last layers matter most.
    """
    n = len(layer_scores)
    drop = n - keep
    if drop <= 0:
        return []
    candidates = range(2, n - drop + 1) if n - drop >= 2 else range(1, n - drop + 2)
    best = min(candidates, key=lambda s: sum(layer_scores[i] for i in range(s, s + drop)))
    return list(range(best, best + drop))


def lowest(scores: dict[int, float], keep: int) -> list[int]:
    order = sorted(scores, key=lambda k: scores[k])
    return sorted(order[: len(scores) - keep])
