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
