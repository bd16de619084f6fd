"""Closed-form repair of a pruned student: re-fit the weights that read or replace what pruning removed.

Model Optimizer's Minitron pruning keeps the most important hidden channels, attention heads, MLP neurons
and layers and slices the weights to them; what the removed ones contributed is simply gone. Repair
re-solves the student's linear layers, layer by layer, by ridge least squares on the calibration tokens,
so that each block reproduces the teacher's:

* ``linear_qkv`` and ``linear_fc1`` read the narrower normed hidden state: they are fitted to the teacher's
  projections for the kept heads and neurons;
* ``linear_proj`` and ``linear_fc2`` write into the residual stream: they are fitted to the teacher's
  residual stream on the kept channels *minus the student's current one*, so each layer also corrects the
  error carried in from the layers before it. Where the teacher has layers the student dropped, the target
  of ``linear_fc2`` is the teacher's residual after them, so the last kept layer before a cut takes over
  what the cut block added, as far as a linear map of its MLP activations can (ReplaceMe, with the MLP's
  activations as the basis instead of its output);
* the final norm's per-channel scale.

Inputs come from the student as repaired so far (sequential, as SparseGPT does), on the calibration batches
the importance pass used: one more forward pass per fitted layer, no backward. Gram matrices are
accumulated in fp32 and solved in fp64 with a ridge term relative to their mean diagonal; a solution that
does not lower its layer's calibration error is not taken, so repair never increases it. The student's
shape does not change. Which channels, heads, neurons and layers survived is read off the weights
themselves (sliced weights are exact copies), so a student whose teacher is not the one it was pruned from
is refused. Tensor parallelism 1 (as pruning); under pipeline parallelism each stage repairs its own layers
and passes the two residual streams on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state

from minitron.errors import MinitronError
from minitron.runtime.inference import position_ids


@dataclass
class LayerMap:
    """How one student layer sits in its teacher layer (this pipeline stage's local indices)."""
    teacher_layer: int
    qkv_rows: torch.Tensor      # teacher linear_qkv rows the student's rows are, in the student's order
    heads_cols: torch.Tensor    # teacher linear_proj input columns (head dims) the student kept
    fc1_rows: torch.Tensor      # teacher linear_fc1 rows ([gate; up]) the student kept
    neurons: torch.Tensor       # teacher MLP neurons the student kept (linear_fc2 input columns)


@dataclass
class Fit:
    """One least-squares problem W x ~ y over the calibration tokens, accumulated batch by batch."""
    gram: torch.Tensor = None   # sum x x^T  [in, in]
    cross: torch.Tensor = None  # sum x y^T  [in, out]
    energy: float = 0.0         # sum |y|^2
    tokens: int = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.reshape(-1, x.shape[-1]).float(), y.reshape(-1, y.shape[-1]).float()
        gram, cross = x.T @ x, x.T @ y
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.energy += float(y.pow(2).sum())
        self.tokens += x.shape[0]

    def error(self, weight: torch.Tensor) -> float:
        """sum |W x - y|^2 for weight W [out, in]."""
        w = weight.double()
        return self.energy - 2 * float((w * self.cross.double().T).sum()) + float((w @ self.gram.double() * w).sum())

    def solve(self, ridge: float) -> torch.Tensor:
        gram = self.gram.double()
        damp = ridge * float(gram.diagonal().mean()) + 1e-12
        return torch.linalg.solve(gram + damp * torch.eye(len(gram), dtype=gram.dtype, device=gram.device),
                                self.cross.double()).T


@dataclass
class RepairReport:
    layers: list[dict] = field(default_factory=list)   # per fitted linear layer: relative error before/after
    seconds: float = 0.0

    def summary(self) -> dict:
        before = sum(r["error_before"] for r in self.layers)
        after = sum(r["error_after"] for r in self.layers)
        return {"method": "least_squares", "fits": len(self.layers), "fits_taken": sum(r["taken"] for r in self.layers),
                "calibration_error_before": before, "calibration_error_after": after,
                "seconds": round(self.seconds, 2), "layers": self.layers}


class _Stop(Exception):
    """Raised by a tap to end a forward pass once it has what it needs."""


def repair(student, teacher, batches: list[torch.Tensor], ridge: float) -> RepairReport:
    """Re-fit `student` (pruned from `teacher`, both Megatron GPTModels of this pipeline stage, TP=1) in place
    on the calibration `batches` of ``[b, s+1]`` token rows; collective over the pipeline group."""
    if ridge <= 0:
        raise MinitronError(f"prune.repair_ridge={ridge} must be > 0")
    start = time.perf_counter()
    report = RepairReport()
    with torch.no_grad():
        perm = _hidden_channels(student, teacher)
        maps = _layer_maps(student, teacher, perm)
        _check_rank(student, batches)
        kwargs_s, kwargs_t = _layer_kwargs(student, batches[0]), _layer_kwargs(teacher, batches[0])
        x_s, x_t = _stage_inputs(student, teacher, batches)
        s_layers, t_layers = student.decoder.layers, teacher.decoder.layers
        position = 0
        for j, layer_map in enumerate(maps):
            k = layer_map.teacher_layer
            x_t = [_run_layers(t_layers[position:k], x, kwargs_t) for x in x_t]  # layers the student dropped
            upto = maps[j + 1].teacher_layer if j + 1 < len(maps) else len(t_layers)
            reports, x_s, x_t = _repair_layer(s_layers[j], t_layers[k:upto], layer_map, perm, x_s, x_t,
                                              kwargs_s, kwargs_t, ridge, name=f"layer {s_layers[j].layer_number}")
            report.layers += reports
            position = upto
        if not maps:
            x_t = [_run_layers(t_layers[position:], x, kwargs_t) for x in x_t]
        if parallel_state.is_pipeline_last_stage():
            report.layers.append(_repair_final_norm(student, teacher, perm, x_s, x_t))
        else:
            _pass_on(x_s + x_t)
    report.seconds = time.perf_counter() - start
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:  # every stage's layers, in order
        stages = [None] * parallel_state.get_pipeline_model_parallel_world_size()
        torch.distributed.all_gather_object(stages, report.layers, group=parallel_state.get_pipeline_model_parallel_group())
        report.layers = [r for stage in stages for r in stage]
    return report


# ---- what survived -----------------------------------------------------------------------------------
def _refuse(what: str) -> MinitronError:
    return MinitronError(f"repair: the student's {what} is not a slice of the teacher's; repair needs the "
                         "teacher the student was pruned from (set prune.repair=none to skip it)")


def _rows_index(teacher_rows: torch.Tensor, student_rows: torch.Tensor, what: str) -> torch.Tensor:
    """For each student row, a teacher row it is an exact copy of (exact duplicates are taken in order)."""
    where: dict[bytes, list[int]] = {}
    for i, row in enumerate(teacher_rows.detach().float().cpu()):
        where.setdefault(row.numpy().tobytes(), []).append(i)
    found = []
    for row in student_rows.detach().float().cpu():
        candidates = where.get(row.numpy().tobytes())
        if not candidates:
            raise _refuse(what)
        found.append(candidates.pop(0))
    return torch.tensor(found, dtype=torch.long)


def _hidden_channels(student, teacher) -> torch.Tensor:
    """Teacher hidden channel of each student channel, from the word embeddings (first stage; shared)."""
    if parallel_state.is_pipeline_first_stage():
        s_emb, t_emb = student.embedding.word_embeddings.weight, teacher.embedding.word_embeddings.weight
        sample = slice(0, min(256, t_emb.shape[0]))  # enough vocabulary rows to tell channels apart
        perm = _rows_index(t_emb[sample].T, s_emb[sample].T, "hidden channels")
    else:
        perm = torch.empty(student.config.hidden_size, dtype=torch.long)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:  # NCCL sends only from the GPU
        perm = perm.to(next(student.parameters()).device)
        torch.distributed.broadcast(perm, parallel_state.get_pipeline_model_parallel_first_rank(),
                                    group=parallel_state.get_pipeline_model_parallel_group())
    return perm.cpu()


def _layer_maps(student, teacher, perm: torch.Tensor) -> list[LayerMap]:
    """Each local student layer's teacher layer (in order) and its kept rows and columns."""
    maps, start = [], 0
    for layer in student.decoder.layers:
        for k in range(start, len(teacher.decoder.layers)):
            try:
                maps.append(_layer_map(layer, teacher.decoder.layers[k], k, perm))
            except MinitronError:
                continue
            start = k + 1
            break
        else:
            raise _refuse(f"layer {layer.layer_number}")
    return maps


def _layer_map(s_layer, t_layer, k: int, perm: torch.Tensor) -> LayerMap:
    """Match heads and neurons by everything that belongs to them (reader rows and writer columns), so an
    exact duplicate in the teacher (a head or neuron that copies another's inputs) is still told apart."""
    s_attn, t_attn, s_mlp, t_mlp = s_layer.self_attention, t_layer.self_attention, s_layer.mlp, t_layer.mlp
    t_qkv, s_qkv = t_attn.linear_qkv.weight[:, perm], s_attn.linear_qkv.weight
    t_proj, s_proj = t_attn.linear_proj.weight[perm], s_attn.linear_proj.weight
    d = t_attn.config.kv_channels
    t_groups, s_groups = t_attn.config.num_query_groups, s_attn.config.num_query_groups
    t_q, s_q = t_qkv.shape[0] // (t_groups * d) - 2, s_qkv.shape[0] // (s_groups * d) - 2  # q heads per group

    def heads(qkv, proj, groups, q):  # per q head: its q rows and its linear_proj columns, flattened
        rows = qkv.reshape(groups, q + 2, d, -1)[:, :q].reshape(groups * q, -1)
        cols = proj.reshape(proj.shape[0], groups * q, d).transpose(0, 1).reshape(groups * q, -1)
        return torch.cat([rows, cols], 1)

    def kv(qkv, groups, q):  # per query group: its k and v rows
        return qkv.reshape(groups, q + 2, d, -1)[:, q:].reshape(groups, -1)

    if s_proj.shape[0] != t_proj.shape[0] or s_qkv.shape[1] != t_qkv.shape[1]:
        raise _refuse(f"layer {s_layer.layer_number}")
    q_heads = _rows_index(heads(t_qkv, t_proj, t_groups, t_q), heads(s_qkv, s_proj, s_groups, s_q), "attention heads")
    groups = _rows_index(kv(t_qkv, t_groups, t_q), kv(s_qkv, s_groups, s_q), "query groups")
    if not torch.equal(q_heads.reshape(s_groups, s_q) // t_q, groups[:, None].expand(s_groups, s_q)):
        raise _refuse("attention heads")  # a kept head must still share keys and values with its group
    qkv_rows = []
    for g in range(s_groups):
        slots = [int(h) % t_q for h in q_heads[g * s_q:(g + 1) * s_q]] + [t_q, t_q + 1]
        qkv_rows += [(int(groups[g]) * (t_q + 2) + slot) * d + i for slot in slots for i in range(d)]
    qkv_rows = torch.tensor(qkv_rows, dtype=torch.long)
    heads_cols = (q_heads[:, None] * d + torch.arange(d)).reshape(-1)
    ffn = t_mlp.linear_fc1.weight.shape[0] // 2

    def neurons_of(fc1, fc2, n):  # per neuron: its gate and up rows and its linear_fc2 column
        return torch.cat([fc1[:n], fc1[n:], fc2.T], 1)

    neurons = _rows_index(neurons_of(t_mlp.linear_fc1.weight[:, perm], t_mlp.linear_fc2.weight[perm], ffn),
                          neurons_of(s_mlp.linear_fc1.weight, s_mlp.linear_fc2.weight, s_mlp.linear_fc2.weight.shape[1]),
                          "MLP neurons")
    fc1_rows = torch.cat([neurons, neurons + ffn])
    if not torch.equal(s_qkv, t_qkv[qkv_rows]) or not torch.equal(s_proj, t_proj[:, heads_cols]):
        raise _refuse(f"layer {s_layer.layer_number}")
    return LayerMap(k, qkv_rows, heads_cols, fc1_rows, neurons)


def _check_rank(student, batches: list[torch.Tensor]) -> None:
    """Every fit needs at least as many calibration tokens as its layer has inputs."""
    tokens = sum(b[:, :-1].numel() for b in batches)
    widest = max([student.config.hidden_size, student.config.ffn_hidden_size,
                  student.config.num_attention_heads * student.config.kv_channels])
    if tokens < widest:
        seq = batches[0].shape[1] - 1
        raise MinitronError(f"prune.repair: {tokens} calibration tokens are fewer than the {widest} inputs of the "
                            f"widest re-fitted layer; give prune.repair_samples >= {math.ceil(widest / seq)} "
                            "(and calibration_samples at least as many)")


# ---- running layers ------------------------------------------------------------------------------------
def _layer_kwargs(model, batch: torch.Tensor) -> dict:
    """What the model's decoder passes its layers besides the hidden states (rotary embeddings, masks)."""
    tokens = batch[:, :-1].to(next(model.parameters()).device)
    seen = {}

    def grab(module, args, kwargs):
        seen.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Stop

    if not parallel_state.is_pipeline_first_stage():
        b, s = tokens.shape
        model.set_input_tensor(torch.zeros(s, b, model.config.hidden_size, dtype=model.config.params_dtype,
                                           device=tokens.device))
    handle = model.decoder.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(tokens, position_ids(tokens), None)
    except _Stop:
        pass
    finally:
        handle.remove()
        if not parallel_state.is_pipeline_first_stage():
            model.set_input_tensor(None)
    return {**seen, "context": None}


def _stage_inputs(student, teacher, batches) -> tuple[list, list]:
    """The residual streams entering this stage's first layer, per batch: embeddings, or the previous stage's."""
    if parallel_state.is_pipeline_first_stage():
        def embed(model, batch):
            tokens = batch[:, :-1].to(next(model.parameters()).device)
            return model.embedding(input_ids=tokens, position_ids=position_ids(tokens))

        return [embed(student, b) for b in batches], [embed(teacher, b) for b in batches]
    shapes = [(b.shape[1] - 1, b.shape[0]) for b in batches]
    received = _receive([(s, b, student.config.hidden_size) for s, b in shapes]
                        + [(s, b, teacher.config.hidden_size) for s, b in shapes], student)
    return received[: len(batches)], received[len(batches):]


def _run_layers(layers, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    for layer in layers:
        x, _ = layer(hidden_states=x, **kwargs)
    return x


def _tap(layer, x: torch.Tensor, kwargs: dict, module, where: str, positional: bool = False) -> torch.Tensor:
    """The input (`where="in"`) or output (`"out"`) of `module` inside `layer` run on `x`; stops there."""
    got = []

    def pre(mod, args):
        got.append(args[0])
        raise _Stop

    def post(mod, args, output):
        got.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = module.register_forward_pre_hook(pre) if where == "in" else module.register_forward_hook(post)
    try:
        layer(x, **kwargs) if positional else layer(hidden_states=x, **kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def _normed(linear, x: torch.Tensor) -> torch.Tensor:
    """What a linear layer multiplies: its input, normalised first where the norm is fused into it (TE)."""
    weight = getattr(linear, "layer_norm_weight", None)
    if weight is None:
        return x
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + linear.eps) * weight.float()).to(weight.dtype)


# ---- fitting --------------------------------------------------------------------------------------------
def _refit(linear, fit: Fit, ridge: float, name: str) -> dict:
    """Take the least-squares weight if it lowers the calibration error; report both errors."""
    before = fit.error(linear.weight)
    solved = fit.solve(ridge)
    after = fit.error(solved)
    taken = after < before - 1e-9 * fit.energy  # lower by more than rounding: an exact layer stays as it is
    if taken:
        linear.weight.copy_(solved.to(linear.weight.dtype))
    scale = max(fit.energy, 1e-30)
    return {"layer": name, "error_before": before / scale, "error_after": min(after, before) / scale,
            "taken": bool(taken)}


def _teacher_targets(t_layers, m: LayerMap, perm, x: torch.Tensor, kwargs: dict) -> dict:
    """One pass through the teacher's layer (and the layers the student dropped after it): what the student's
    fits aim at, on the student's rows and channels."""
    t_layer, got = t_layers[0], {}
    taps = [(t_layer.self_attention.linear_qkv, "qkv"), (t_layer.mlp.linear_fc1, "fc1")]
    handles = [mod.register_forward_hook(lambda _m, _a, out, key=key: got.__setitem__(key, out[0]))
               for mod, key in taps]
    handles.append(t_layer.pre_mlp_layernorm.register_forward_pre_hook(
        lambda _m, args: got.__setitem__("mid", args[0])))
    try:
        out = _run_layers(t_layers, x, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {"qkv": got["qkv"][..., m.qkv_rows], "fc1": got["fc1"][..., m.fc1_rows], "mid": got["mid"][..., perm],
            "out": out[..., perm], "next": out}


def _repair_layer(s_layer, t_layers, m: LayerMap, perm, x_s, x_t, kwargs_s, kwargs_t, ridge,
                  name) -> tuple[list[dict], list, list]:
    """Fit one student layer against teacher layers `t_layers` (its own, then the ones dropped after it);
    (reports, the student's and the teacher's residual streams after them)."""
    s_attn, s_mlp = s_layer.self_attention, s_layer.mlp
    targets = [_teacher_targets(t_layers, m, perm, x, kwargs_t) for x in x_t]
    reports = []

    fit = Fit()  # query/key/value of the kept heads, from the student's normed input
    for xs, t in zip(x_s, targets):
        fit.add(_normed(s_attn.linear_qkv, _tap(s_layer, xs, kwargs_s, s_attn.linear_qkv, "in")), t["qkv"])
    reports.append(_refit(s_attn.linear_qkv, fit, ridge, f"{name} linear_qkv"))

    fit = Fit()  # attention output: the teacher's residual after attention on the kept channels, minus ours
    for xs, t in zip(x_s, targets):
        fit.add(_tap(s_layer, xs, kwargs_s, s_attn.linear_proj, "in"), t["mid"] - xs)
    reports.append(_refit(s_attn.linear_proj, fit, ridge, f"{name} linear_proj"))

    fit, mids, normed = Fit(), [], []  # gate and up projections of the kept neurons
    for xs, t in zip(x_s, targets):
        mid, m_in = _taps_before_mlp(s_layer, xs, kwargs_s)
        mids.append(mid)
        normed.append(m_in)
        fit.add(_normed(s_mlp.linear_fc1, m_in), t["fc1"])
    reports.append(_refit(s_mlp.linear_fc1, fit, ridge, f"{name} linear_fc1"))

    fit = Fit()  # MLP output: the teacher's residual after this layer and the dropped ones after it, minus ours
    for mid, m_in, t in zip(mids, normed, targets):
        fit.add(_tap(s_mlp, m_in, {}, s_mlp.linear_fc2, "in", positional=True), t["out"] - mid)
    reports.append(_refit(s_mlp.linear_fc2, fit, ridge, f"{name} linear_fc2"))
    # The MLP sees the same input whatever its weights: the next residual is mid + MLP(normed mid).
    x_s = [mid + s_mlp(m_in)[0] for mid, m_in in zip(mids, normed)]
    return reports, x_s, [t["next"] for t in targets]


def _taps_before_mlp(layer, x: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual after attention and the MLP's input (normalised unless the norm is fused), in one pass."""
    got = {}

    def mid(mod, args):
        got["mid"] = args[0]

    def stop(mod, args):
        got["in"] = args[0]
        raise _Stop

    handles = [layer.pre_mlp_layernorm.register_forward_pre_hook(mid), layer.mlp.register_forward_pre_hook(stop)]
    try:
        layer(hidden_states=x, **kwargs)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return got["mid"], got["in"]


def _repair_final_norm(student, teacher, perm, x_s, x_t) -> dict:
    """Per-channel scale of the final norm: the student's normalised stream to the teacher's norm output."""
    s_norm, t_norm = student.decoder.final_layernorm, teacher.decoder.final_layernorm
    eps = student.config.layernorm_epsilon
    num = torch.zeros(len(perm), dtype=torch.float64)
    den = torch.zeros(len(perm), dtype=torch.float64)
    energy, before = 0.0, 0.0
    weight = s_norm.weight.detach().double().cpu()
    for xs, xt in zip(x_s, x_t):
        xs = xs.float().reshape(-1, xs.shape[-1])
        unit = (xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps)).double().cpu()
        target = t_norm(xt).float().reshape(-1, xt.shape[-1])[:, perm].double().cpu()
        num += (unit * target).sum(0)
        den += unit.pow(2).sum(0)
        energy += float(target.pow(2).sum())
        before += float((unit * weight - target).pow(2).sum())
    solved = num / den.clamp_min(1e-30)
    after = energy - float((num * num / den.clamp_min(1e-30)).sum())
    taken = after < before - 1e-9 * energy
    if taken:
        s_norm.weight.copy_(solved.to(s_norm.weight.dtype))
    scale = max(energy, 1e-30)
    return {"layer": "final_layernorm", "error_before": before / scale, "error_after": min(after, before) / scale,
            "taken": bool(taken)}


# ---- pipeline stages --------------------------------------------------------------------------------------
def _pass_on(tensors: list[torch.Tensor]) -> None:
    nxt = parallel_state.get_pipeline_model_parallel_next_rank()
    for t in tensors:
        torch.distributed.send(t.contiguous(), nxt)


def _receive(shapes, model) -> list[torch.Tensor]:
    prev = parallel_state.get_pipeline_model_parallel_prev_rank()
    dtype, device = model.config.params_dtype, next(model.parameters()).device
    out = []
    for shape in shapes:
        t = torch.empty(shape, dtype=dtype, device=device)
        torch.distributed.recv(t, prev)
        out.append(t)
    return out
