"""PyTorch/transformers backend: batched generation on CPU or GPU.

Requests from any number of concurrent Triton batches land in one queue; a single engine thread takes
everything waiting (up to `max_batch_size`), prefills it as one left-padded batch and decodes all rows
together with a shared KV cache, so concurrent clients share every forward pass. In-flight batching:
before each decode step, requests that arrived meanwhile are prefilled and join the running batch (the
shorter KV cache is left-padded; padding is masked, positions are per row). Rows that finish (EOS, stop
string, max_tokens, or a consumer that went away) are dropped from the batch and the cache.

Log-probabilities come from the logits of the same forward passes that generate: the sampled token's, and
the prompt's when asked (the prefill then keeps the logits of every position instead of the last only),
each an fp32 log-softmax of the raw logits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import random
import threading
import time
from pathlib import Path

import torch

from minitron.deploy.serving.backend import (Chunk, HFTokenizerMixin, SamplingParams, TextStream, TokenLogprob,
                                             context_length)
from minitron.errors import MinitronError
from minitron.runtime.precision import resolve as resolve_precision


@dataclasses.dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    emit: callable  # thread-safe: hands a Chunk or an exception to the consumer's event loop
    text: TextStream
    generator: torch.Generator | None = None
    generated: int = 0
    done: bool = False
    cancelled: bool = False
    prompt_logprobs: list | None = None  # computed at prefill, sent with the first chunk


@dataclasses.dataclass(eq=False)
class _Batch:
    """Rows decoding together: one KV cache, a mask over its slots (0 = padding), each row's last position."""

    rows: list[_Request]
    cache: object
    mask: torch.Tensor
    positions: torch.Tensor
    next_ids: torch.Tensor | None = None  # the token each row feeds next


def _joinable(cache) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """One batch from two: left-pad the shorter cache and mask (padding is masked out; positions are explicit)."""
    width = max(a.mask.shape[1], b.mask.shape[1])

    def pad(x: torch.Tensor, dim_from_end: int) -> torch.Tensor:
        missing = width - x.shape[-dim_from_end]
        return torch.nn.functional.pad(x, (0, 0) * (dim_from_end - 1) + (missing, 0)) if missing else x

    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([pad(la.keys, 2), pad(lb.keys, 2)])  # [batch, kv heads, slots, head dim]
        la.values = torch.cat([pad(la.values, 2), pad(lb.values, 2)])
    return _Batch(a.rows + b.rows, a.cache, torch.cat([pad(a.mask, 1), pad(b.mask, 1)]),
                  torch.cat([a.positions, b.positions]), torch.cat([a.next_ids, b.next_ids]))


class TorchBackend(HFTokenizerMixin):
    def __init__(self, model_dir: Path, name: str, device: str | None = None, dtype: str | None = None,
                 max_batch_size: int = 32, batch_wait_ms: float = 10.0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name
        self.model_dir = Path(model_dir)
        self.context_length = context_length(self.model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # auto: bf16 on GPUs and on CPUs that compute it natively, fp32 elsewhere (bf16 is emulated,
        # hundreds of times slower, on AVX2-only CPUs).
        torch_dtype = resolve_precision(dtype or "auto", self.device).dtype
        # No trust_remote_code, safetensors only: a served folder must not be able to run code.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=False)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=torch_dtype, use_safetensors=True, trust_remote_code=False).to(self.device).eval()
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._pending: queue.Queue[_Request] = queue.Queue()
        self._taken: list[_Request] = []  # the engine's current requests (failed together if a step fails)
        # Statistics: batches started, requests served, decode steps and the rows they carried.
        self.batches = self.batched_requests = self.steps = self.step_rows = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="torch-backend-engine", daemon=True)
        self._thread.start()

    def _eos_ids(self) -> set[int]:
        ids = set()
        for value in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
        if not ids:
            raise MinitronError(f"{self.model_dir}: neither generation_config.json nor the tokenizer names an "
                                "EOS token")
        return ids

    # ---- the Backend interface -------------------------------------------------------------------------
    async def stream(self, prompt_ids: list[int], params: SamplingParams):
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        request = _Request(list(prompt_ids), params, lambda item: loop.call_soon_threadsafe(chunks.put_nowait, item),
                           TextStream(self.tokenizer, params.stop), self._generator(params))
        self._pending.put(request)
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            request.cancelled = True  # the consumer stopped early: the engine drops the row

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=30)

    def summary(self) -> str:
        return (f"pytorch backend: {self.batched_requests} requests, {self.batches} batches started, "
                f"{self.steps} decode steps with {self.step_rows / max(self.steps, 1):.1f} rows on average")

    def _generator(self, params: SamplingParams) -> torch.Generator | None:
        if params.greedy:
            return None
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        return torch.Generator(device=self.device).manual_seed(seed)

    # ---- the engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            self.batches, self.batched_requests = self.batches + 1, self.batched_requests + len(batch)
            self._taken = list(batch)  # every request this batch holds, joined ones included
            try:
                self._generate(batch)
            except Exception as e:  # a failed batch fails its requests, never the engine
                for r in self._taken:
                    if not r.done:
                        r.done = True
                        r.emit(e)

    def _next_batch(self) -> list[_Request]:
        try:
            batch = [self._pending.get(timeout=0.1)]
        except queue.Empty:
            return []
        # Wait briefly for requests sent together to join the same batch.
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._pending.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return [r for r in batch if not r.cancelled]

    @torch.inference_mode()
    def _generate(self, requests: list[_Request]) -> None:
        batch = self._keep_running(self._prefill(requests))
        while batch is not None:
            # In-flight batching: requests that arrived meanwhile are prefilled and join the running batch.
            joining = self._waiting(self.max_batch_size - len(batch.rows)) if _joinable(batch.cache) else []
            if joining:
                self.batched_requests += len(joining)
                new = self._keep_running(self._prefill(joining))
                batch = _merge(batch, new) if new is not None else batch
            self.steps, self.step_rows = self.steps + 1, self.step_rows + len(batch.rows)
            batch = self._keep_running(self._decode_step(batch))

    def _prefill(self, requests: list[_Request]) -> _Batch:
        from transformers import DynamicCache

        input_ids, mask = self._left_pad([r.prompt_ids for r in requests])
        # Same positions as transformers' generate(): count real tokens only, so padding does not shift RoPE.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        scoring = any(r.params.prompt_logprobs is not None for r in requests)
        logits = self._forward(input_ids, mask, positions, cache, every_position=scoring)
        if scoring:
            for row, request in enumerate(requests):
                if request.params.prompt_logprobs is not None:
                    request.prompt_logprobs = _prompt_logprobs(logits[row], request.prompt_ids,
                                                               request.params.prompt_logprobs)
            logits = logits[:, -1, :]
        return self._sampled(_Batch(list(requests), cache, mask, positions[:, -1:]), logits.float())

    def _decode_step(self, batch: _Batch) -> _Batch:
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        batch.positions = batch.positions + 1
        return self._sampled(batch, self._forward(batch.next_ids[:, None], batch.mask, batch.positions, batch.cache))

    def _sampled(self, batch: _Batch, logits: torch.Tensor) -> _Batch:
        batch.next_ids = self._sample(logits, batch.rows)
        # row in the batch -> row in `logprobs`, for the requests that asked
        asked = {i: n for n, i in enumerate(i for i, r in enumerate(batch.rows) if r.params.logprobs is not None)}
        logprobs = logits[list(asked)].log_softmax(-1) if asked else None  # raw logits: before temperature, top-k/p
        for i, (request, token) in enumerate(zip(batch.rows, batch.next_ids.tolist())):
            entry = _token_logprob(logprobs[asked[i]], token, request.params.logprobs) if i in asked else None
            self._accept(request, token, entry)
        return batch

    def _keep_running(self, batch: _Batch) -> _Batch | None:
        """Drop finished and cancelled rows (from the cache too): later steps cost only what still runs."""
        keep = [i for i, r in enumerate(batch.rows) if not (r.done or r.cancelled)]
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            index = torch.tensor(keep, device=self.device)
            batch.cache.batch_select_indices(index)
            batch.rows = [batch.rows[i] for i in keep]
            batch.mask, batch.positions = batch.mask[index], batch.positions[index]
            batch.next_ids = batch.next_ids[index]
        return batch

    def _waiting(self, limit: int) -> list[_Request]:
        taken = []
        while len(taken) < limit:
            try:
                request = self._pending.get_nowait()
            except queue.Empty:
                break
            if not request.cancelled:
                taken.append(request)
        self._taken += taken
        return taken

    def _forward(self, input_ids, mask, positions, cache, every_position: bool = False) -> torch.Tensor:
        """Logits of the last position in fp32 (sampling in fp32, as generate() does), or of every position
        in the model's dtype (the caller takes what it needs in fp32)."""
        # transformers 5.24 names the KV cache argument `cache` (`past_key_values` is deprecated).
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=0 if every_position else 1)
        return out.logits if every_position else out.logits[:, -1, :].float()

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _sample(self, logits: torch.Tensor, rows: list[_Request]) -> torch.Tensor:
        next_ids = logits.argmax(-1)
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if not sampled:
            return next_ids
        index = torch.tensor(sampled, device=logits.device)
        params = [rows[i].params for i in sampled]
        temps = torch.tensor([p.temperature for p in params], device=logits.device)
        probs, order = _filtered_probs(logits[index] / temps[:, None], [p.top_k for p in params],
                                       [p.top_p for p in params])
        for j, i in enumerate(sampled):
            choice = torch.multinomial(probs[j], 1, generator=rows[i].generator)
            next_ids[i] = order[j, choice[0]]
        return next_ids

    def _accept(self, request: _Request, token: int, logprob: TokenLogprob | None) -> None:
        if request.done or request.cancelled:
            return
        prompt_logprobs, request.prompt_logprobs = request.prompt_logprobs, None  # first chunk only
        if request.params.max_tokens == 0:  # scoring the prompt only: nothing is generated
            request.done = True
            request.emit(Chunk([], "", "length", prompt_logprobs=prompt_logprobs))
            return
        request.generated += 1
        finish = ("stop" if token in self.eos_ids else
                  "length" if request.generated >= request.params.max_tokens else None)
        text, hit_stop = request.text.push(token, last=finish is not None)
        finish = "stop" if hit_stop else finish
        request.done = finish is not None
        request.emit(Chunk([token], text, finish, logprobs=[logprob] if logprob else None,
                           prompt_logprobs=prompt_logprobs))


def _token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`logprobs`: one position's fp32 log-softmax over the vocabulary."""
    best = logprobs.topk(top) if top else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist())) if top else []
    return TokenLogprob(token, float(logprobs[token]), pairs)


def _prompt_logprobs(row_logits: torch.Tensor, prompt_ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Log-probabilities of prompt tokens 2..n from one left-padded row of every-position logits."""
    # The row's last len(prompt) positions are the prompt; position j predicts token j + 1.
    logprobs = row_logits[-len(prompt_ids):-1].float().log_softmax(-1)
    targets = torch.tensor(prompt_ids[1:], device=logprobs.device)
    chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
    best = logprobs.topk(top) if top else None
    tops = ([list(zip(i, v)) for i, v in zip(best.indices.tolist(), best.values.tolist())] if top
            else [[] for _ in chosen])
    return [None] + [TokenLogprob(t, lp, pairs) for t, lp, pairs in zip(prompt_ids[1:], chosen, tops)]


def _filtered_probs(logits: torch.Tensor, top_k: list[int], top_p: list[float]):
    """Per-row top-k then top-p (nucleus) filtering; returns probabilities over the sorted vocabulary."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    k = torch.tensor([k if k > 0 else logits.shape[-1] for k in top_k], device=logits.device)
    sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = sorted_logits.softmax(-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always survives).
    before = probs.cumsum(-1) - probs
    p = torch.tensor(top_p, device=logits.device, dtype=probs.dtype)
    sorted_logits = sorted_logits.masked_fill(before >= p[:, None], float("-inf"))
    return sorted_logits.softmax(-1), order
