"""The PyTriton model: one decoupled (streaming) text-generation model with dynamic batching.

Inputs (one prompt per request; all optional, but exactly one of `prompt` / `messages` / `prompt_ids`):
    prompt      BYTES [1]   plain text
    messages    BYTES [1]   JSON list of {"role", "content"}: the backend applies the chat template
    prompt_ids  INT64 [-1]  token ids, used as they are (no BOS added)
    max_tokens  INT32 [1]   default 16 (0 only with prompt_logprobs: score the prompt, generate nothing)
    temperature FP32  [1]   default 1.0 (0 = greedy)
    top_p       FP32  [1]   default 1.0       top_k       INT32 [1]  default 0 (off)
    seed        INT64 [1]   default random    stop        BYTES [-1] stop strings (not in the output)
    logprobs    INT32 [1]   N in [0, 20]: log-probability of each generated token and the N most likely
    prompt_logprobs INT32 [1]  the same for the prompt's tokens (sent with the first response)
    request_id  BYTES [1]   lets the companion model `<name>-cancel` stop this request early
Outputs, streamed (one response per generation step that produced something):
    text BYTES [1] (new text), token_ids INT64 [-1] (new tokens; [-1] when none), finish_reason BYTES [1] ("" until the
    last chunk, then "stop"/"length"), prompt_tokens INT64 [1], completion_tokens INT64 [1] (so far),
    error BYTES [1] ("" or why this request was refused; then finish_reason is "error"),
    logprobs BYTES [1] ("" when not asked, else JSON {"tokens": [entry per new token], and in the first response
    "prompt": [entry per prompt token], "prompt_text": the prompt ids decoded}, entry = {"id", "token" (text),
    "logprob", "top": [{"id", "token", "logprob"}, ...]}; the first prompt token's logprob and top are null;
    log-probabilities are fp32 log-softmax of the raw logits, -inf sent as -9999.0 as vLLM does).

`<name>-cancel` (request_id BYTES [1] -> cancelled BOOL [1]) ends a running request: its last response
has finish_reason "abort" and the backend drops it from its batch. The facade calls it when a client
hangs up mid-stream. (PyTriton 0.7 does not pass Triton's own request cancellation to Python models.)

Triton's dynamic batcher hands several requests to one call; a decoupled call answers all of them in
every response it yields, so a request that has finished gets empty responses until the rest of its
Triton batch is done. Readers stop at the first non-empty finish_reason (the facade does).
"""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np

from minitron.deploy.serving.backend import Backend, Chunk, SamplingParams, TokenLogprob
from minitron.errors import MinitronError

MAX_STOP_STRINGS = 4
MAX_LOGPROBS = 20  # OpenAI's cap for chat's top_logprobs (completions' logprobs: 5, checked by the facade)
LOGPROB_FLOOR = -9999.0  # JSON has no -inf
_CANCELLED = object()  # event: the request was cancelled through the cancel model
_ENDED = object()  # event: the backend stream is exhausted (after its finish chunk, normally)
DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0}


class RequestError(ValueError):
    """A refused request: the message goes back to its client only."""


def triton_inputs_outputs():
    from pytriton.model_config import Tensor

    inputs = [Tensor(name="prompt", dtype=np.bytes_, shape=(1,), optional=True),
              Tensor(name="messages", dtype=np.bytes_, shape=(1,), optional=True),
              Tensor(name="prompt_ids", dtype=np.int64, shape=(-1,), optional=True),
              Tensor(name="max_tokens", dtype=np.int32, shape=(1,), optional=True),
              Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
              Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
              Tensor(name="top_k", dtype=np.int32, shape=(1,), optional=True),
              Tensor(name="seed", dtype=np.int64, shape=(1,), optional=True),
              Tensor(name="stop", dtype=np.bytes_, shape=(-1,), optional=True),
              Tensor(name="logprobs", dtype=np.int32, shape=(1,), optional=True),
              Tensor(name="prompt_logprobs", dtype=np.int32, shape=(1,), optional=True),
              Tensor(name="request_id", dtype=np.bytes_, shape=(1,), optional=True)]
    outputs = [Tensor(name="text", dtype=np.bytes_, shape=(1,)),
               Tensor(name="token_ids", dtype=np.int64, shape=(-1,)),
               Tensor(name="finish_reason", dtype=np.bytes_, shape=(1,)),
               Tensor(name="prompt_tokens", dtype=np.int64, shape=(1,)),
               Tensor(name="completion_tokens", dtype=np.int64, shape=(1,)),
               Tensor(name="error", dtype=np.bytes_, shape=(1,)),
               Tensor(name="logprobs", dtype=np.bytes_, shape=(1,))]
    return inputs, outputs


class _Item:
    """One request of a Triton batch: what it has produced since the last response."""

    def __init__(self, prompt_ids: list[int] = (), error: str = "", backend: Backend | None = None):
        self.prompt_ids = list(prompt_ids)
        self.prompt_tokens = len(self.prompt_ids)
        self.error = error
        self.backend = backend  # token texts for logprobs
        self.completion_tokens = 0
        self.new_ids: list[int] = []
        self.new_text = ""
        self.new_logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self.finish = "error" if error else ""
        self.reported = False  # finish_reason already sent

    @property
    def finished(self) -> bool:
        return bool(self.finish)

    def add(self, chunk: Chunk) -> None:
        self.new_ids += chunk.token_ids
        self.new_text += chunk.text
        self.new_logprobs += chunk.logprobs or []
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        self.completion_tokens += len(chunk.token_ids)
        self.finish = chunk.finish_reason or ""

    def fail(self, message: str) -> None:
        self.error, self.finish = message, "error"

    def response(self) -> dict:
        finish = "" if self.reported else self.finish
        self.reported = self.reported or bool(self.finish)
        out = {"text": np.array([[self.new_text.encode()]], dtype=np.object_),
               # PyTriton cannot ship zero-sized arrays: a chunk without new tokens carries [-1].
               "token_ids": np.array([self.new_ids or [-1]], dtype=np.int64),
               "finish_reason": np.array([[finish.encode()]], dtype=np.object_),
               "prompt_tokens": np.array([[self.prompt_tokens]], dtype=np.int64),
               "completion_tokens": np.array([[self.completion_tokens]], dtype=np.int64),
               "error": np.array([[self.error.encode() if finish else b""]], dtype=np.object_),
               "logprobs": np.array([[self._logprobs_json().encode()]], dtype=np.object_)}
        self.new_ids, self.new_text, self.new_logprobs, self.prompt_logprobs = [], "", [], None
        return out

    def _logprobs_json(self) -> str:
        if not self.new_logprobs and self.prompt_logprobs is None:
            return ""
        out = {"tokens": self._entries(self.new_logprobs)}
        if self.prompt_logprobs is not None:
            first = self.prompt_ids[0]
            out["prompt"] = [{"id": first, "token": self.backend.token_texts([first])[0], "logprob": None,
                              "top": None}, *self._entries(self.prompt_logprobs[1:])]
            out["prompt_text"] = self.backend.decode(self.prompt_ids)
        return json.dumps(out)

    def _entries(self, logprobs: list[TokenLogprob]) -> list[dict]:
        ids = [i for e in logprobs for i in (e.token_id, *(t for t, _ in e.top))]
        texts = dict(zip(ids, self.backend.token_texts(ids)))

        def entry(token: int, logprob: float) -> dict:
            return {"id": token, "token": texts[token], "logprob": max(logprob, LOGPROB_FLOOR)}

        return [{**entry(e.token_id, e.logprob), "top": [entry(t, lp) for t, lp in e.top]} for e in logprobs]


class GenerateModel:
    """The inference callable bound to Triton: an async generator, so many batches stream at once."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._running: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Task]] = {}
        self._lock = threading.Lock()  # the cancel model runs on another PyTriton thread and event loop

    async def __call__(self, requests):
        items, streams, ids = [], {}, {}
        for i, request in enumerate(requests):
            try:
                prompt_ids, params = self.parse(request)
                ids[i] = _text(request, "request_id")
            except RequestError as e:
                items.append(_Item(error=str(e)))
                continue
            items.append(_Item(prompt_ids, backend=self.backend))
            streams[i] = self.backend.stream(prompt_ids, params)
        events: asyncio.Queue = asyncio.Queue()
        pumps = {i: asyncio.create_task(_pump(i, s, events)) for i, s in streams.items()}
        self._register(ids, pumps)
        try:
            if any(item.error for item in items):  # refusals go out at once, not after generation
                yield [item.response() for item in items]
            while not all(item.finished and item.reported for item in items):
                await _collect(events, items)
                yield [item.response() for item in items]
        finally:
            self._unregister(ids)
            for task in pumps.values():
                task.cancel()

    def cancel(self, request_id: str) -> bool:
        """Thread-safe: stop a running request (its pump closes the backend stream)."""
        with self._lock:
            running = self._running.get(request_id)
        if running is None:
            return False
        loop, task = running
        loop.call_soon_threadsafe(task.cancel)
        return True

    def _register(self, ids: dict, pumps: dict) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._running.update({rid: (loop, pumps[i]) for i, rid in ids.items() if rid})

    def _unregister(self, ids: dict) -> None:
        with self._lock:
            for rid in ids.values():
                self._running.pop(rid, None)

    # ---- request parsing: every problem becomes a RequestError for this request only -----------------
    def parse(self, request) -> tuple[list[int], SamplingParams]:
        if any(np.asarray(v).shape[0] != 1 for v in request.values()):
            raise RequestError("send one prompt per request (batch size 1)")
        prompt, messages = _text(request, "prompt"), _text(request, "messages")
        if (prompt is not None) + (messages is not None) + ("prompt_ids" in request) != 1:
            raise RequestError("give exactly one of `prompt`, `messages` and `prompt_ids`")
        params = self._params(request)
        if "prompt_ids" in request:
            ids = np.asarray(request["prompt_ids"]).reshape(-1).tolist()
            vocab = self.backend.vocab_size
            if any(not 0 <= i < vocab for i in ids):
                raise RequestError(f"prompt token ids must be in [0, {vocab - 1}] (the model's vocabulary)")
        else:
            try:
                ids = self.backend.encode(prompt=prompt,
                                          messages=_messages(messages) if messages is not None else None)
            except MinitronError as e:
                raise RequestError(str(e)) from None
        if not ids:
            raise RequestError("the prompt is empty")
        limit = self.backend.context_length
        if len(ids) + params.max_tokens > limit:
            raise RequestError(f"the prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}: together "
                               f"more than the model's context of {limit} tokens")
        return ids, params

    def _params(self, request) -> SamplingParams:
        get = {name: _scalar(request, name, default) for name, default in DEFAULTS.items()}
        seed = _scalar(request, "seed", None)
        stop = tuple(s.decode("utf-8", "replace") for s in np.asarray(request["stop"]).reshape(-1)) \
            if "stop" in request else ()
        logprobs, prompt_logprobs = (_scalar(request, name, None) for name in ("logprobs", "prompt_logprobs"))
        params = SamplingParams(max_tokens=int(get["max_tokens"]), temperature=float(get["temperature"]),
                                top_p=float(get["top_p"]), top_k=int(get["top_k"]),
                                seed=None if seed is None else int(seed), stop=stop,
                                logprobs=None if logprobs is None else int(logprobs),
                                prompt_logprobs=None if prompt_logprobs is None else int(prompt_logprobs))
        least = 0 if params.prompt_logprobs is not None else 1
        problems = [msg for bad, msg in (
            (params.max_tokens < least, f"max_tokens must be at least {least}, got {params.max_tokens}"
                                        + ("" if least == 0 else " (0 only with prompt_logprobs)")),
            (not 0.0 <= params.temperature <= 2.0 or np.isnan(params.temperature),
             f"temperature must be in [0, 2], got {params.temperature}"),
            (not 0.0 < params.top_p <= 1.0, f"top_p must be in (0, 1], got {params.top_p}"),
            (params.top_k < 0, f"top_k must be 0 (off) or positive, got {params.top_k}"),
            (len(stop) > MAX_STOP_STRINGS, f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}"),
            *((n is not None and not 0 <= n <= MAX_LOGPROBS, f"{name} must be in [0, {MAX_LOGPROBS}], got {n}")
              for name, n in (("logprobs", params.logprobs), ("prompt_logprobs", params.prompt_logprobs))),
        ) if bad]
        if problems:
            raise RequestError("; ".join(problems))
        return params


async def _pump(index: int, stream, events: asyncio.Queue) -> None:
    try:
        async for chunk in stream:
            events.put_nowait((index, chunk))
        events.put_nowait((index, _ENDED))
    except asyncio.CancelledError:
        events.put_nowait((index, _CANCELLED))
        await stream.aclose()  # tell the backend to drop the request
        raise
    except Exception as e:  # a backend failure fails this request only
        events.put_nowait((index, e))


async def _collect(events: asyncio.Queue, items: list[_Item]) -> None:
    """Wait for at least one event, then take everything already there (one response carries them all)."""
    pending = [await events.get()]
    while not events.empty():
        pending.append(events.get_nowait())
    for index, event in pending:
        if event is _CANCELLED:
            items[index].finish = items[index].finish or "abort"
        elif event is _ENDED:
            if not items[index].finished:  # a backend bug: never leave the request hanging
                items[index].fail("the backend ended the stream without a finish reason")
        elif isinstance(event, Exception):
            items[index].fail(f"generation failed: {type(event).__name__}: {event}")
        else:
            items[index].add(event)


def _text(request, name: str) -> str | None:
    if name not in request:
        return None
    value = np.asarray(request[name]).reshape(-1)[0]
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise RequestError(f"`{name}` is not valid UTF-8") from None


def _scalar(request, name: str, default):
    return np.asarray(request[name]).reshape(-1)[0].item() if name in request else default


def _messages(raw: str) -> list[dict]:
    try:
        messages = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RequestError(f"`messages` is not JSON: {e}") from None
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise RequestError("`messages` must be a non-empty list of {\"role\": str, \"content\": str}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class CancelModel:
    """`<name>-cancel`: stop running requests of the generate model by request_id."""

    def __init__(self, generate: GenerateModel):
        self.generate = generate

    def __call__(self, requests):
        return [{"cancelled": np.array([[self.generate.cancel(_text(r, "request_id") or "")]], dtype=np.bool_)}
                for r in requests]


def cancel_inputs_outputs():
    from pytriton.model_config import Tensor

    return ([Tensor(name="request_id", dtype=np.bytes_, shape=(1,))],
            [Tensor(name="cancelled", dtype=np.bool_, shape=(1,))])
