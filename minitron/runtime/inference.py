"""Forward passes through Megatron's own schedules, at any TP/PP."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region


def position_ids(tokens: torch.Tensor) -> torch.Tensor:
    b, s = tokens.shape
    return torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)


@torch.no_grad()
def forward_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """Full-vocabulary logits ``[batch, seq, vocab]`` on the last pipeline stage, else None.

    Runs Megatron's forward-only pipeline schedule (tensor shards of the vocab-parallel output
    are gathered), so it exercises exactly the code path training uses.
    """
    batch, seq = tokens.shape
    tokens = tokens.to(next(model.parameters()).device)

    def step(data_iterator, stage_model):
        tok = next(data_iterator)
        output = stage_model(tok, position_ids(tok), None)

        def collect(output_tensor, non_loss_data=False):
            return gather_from_tensor_model_parallel_region(output_tensor)

        return output, collect

    outputs = get_forward_backward_func()(
        forward_step_func=step, data_iterator=iter([tokens]), model=[model], num_microbatches=1,
        seq_length=seq, micro_batch_size=batch, forward_only=True, collect_non_loss_data=True,
    )
    if parallel_state.is_pipeline_last_stage():
        return outputs[0]
    return None


def _broadcast_from_last_stage(value: torch.Tensor) -> torch.Tensor:
    """Give every pipeline rank the value computed on the last stage."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return value
    src = parallel_state.get_pipeline_model_parallel_last_rank()
    torch.distributed.broadcast(value, src, group=parallel_state.get_pipeline_model_parallel_group())
    return value


@torch.no_grad()
def forward_only(model: torch.nn.Module, batches, collect=None) -> list:
    """Run Megatron's forward-only schedule over `batches` of ``[b, s+1]`` token rows.

    `collect(per_token_loss)` maps each micro-batch's ``[b, s]`` losses (last stage only) to
    what is returned; the default discards them (calibration loops only need the forward).
    """
    results = []
    func = get_forward_backward_func()
    for batch in batches:
        batch = batch.to(next(model.parameters()).device)
        tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

        def step(data_iterator, stage_model, tokens=tokens, labels=labels):
            next(data_iterator)
            output = stage_model(tokens, position_ids(tokens), None, labels=labels)

            def loss_func(per_token_loss, non_loss_data=False):
                return collect(per_token_loss) if collect else None

            return output, loss_func

        out = func(forward_step_func=step, data_iterator=iter([None]), model=[model], num_microbatches=1,
                   seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True,
                   collect_non_loss_data=True)
        if parallel_state.is_pipeline_last_stage() and out:
            results.extend(out)
    return results


@torch.no_grad()
def lm_loss(model: torch.nn.Module, batches) -> float:
    """Mean next-token cross-entropy (nats/token) over `batches`, identical on every rank."""
    def sums_of(loss):  # on the loss's device: a CPU count beside CUDA sums would not stack
        return torch.stack([loss.float().sum(), torch.tensor(float(loss.numel()), device=loss.device)])

    sums = forward_only(model, batches, collect=sums_of)
    total = torch.stack(sums).sum(0) if sums else torch.zeros(2)
    total = _broadcast_from_last_stage(total.to(next(model.parameters()).device).float())
    return (total[0] / total[1]).item()
