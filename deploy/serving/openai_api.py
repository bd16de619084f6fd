"""OpenAI-compatible HTTP facade in front of the Triton model (aiohttp).

Every generation goes through Triton: the facade validates the JSON, turns it into the Triton model's
inputs and streams the decoupled responses back over gRPC with PyTriton's AsyncioDecoupledModelClient.
So the Triton endpoint and this facade serve the same model, the same batches and the same numbers.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream=true gives
server-sent events ending with `data: [DONE]`). Bad requests get 4xx with an OpenAI-style JSON error.

Scoring text, as OpenAI and vLLM shape it: completions take `prompt` as text, token ids, or a list of either
(one choice per prompt), `logprobs: N` (N <= 5) and `echo: true` (the prompt and its log-probabilities come
first; `max_tokens: 0` scores the prompt only): what lm-evaluation-harness's `local-completions` sends for
loglikelihood tasks. Chat takes `logprobs: true` with `top_logprobs: N` (N <= 20). Log-probabilities are
computed by the model in the forward passes that generate (fp32 log-softmax of the raw logits).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import numpy as np
from aiohttp import web

ROLES = {"system", "user", "assistant"}
DEFAULT_MAX_TOKENS = {"completions": 16, "chat": 256}  # OpenAI's completions default; a chat-sized reply
MAX_LOGPROBS = {"completions": 5, "chat": 20}  # OpenAI's caps on `logprobs` and `top_logprobs`
MAX_PROMPTS = 64  # prompts in one completions request (one Triton request each, generated together)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def response(self) -> web.Response:
        return web.json_response({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                            "code": None}}, status=self.status)


class OpenAIFacade:
    def __init__(self, model_name: str, triton_grpc_url: str, context_length: int):
        self.model_name = model_name
        self.url = triton_grpc_url
        self.context_length = context_length
        self.created = int(time.time())
        self.client = None
        self._background: set[asyncio.Task] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors], client_max_size=4 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app) -> None:
        import warnings

        from pytriton.client import AsyncioDecoupledModelClient, AsyncioModelClient
        from pytriton.client.warnings import NotSupportedTimeoutWarning

        # The gRPC client ignores non-inference timeouts and says so on every request; the limit that
        # matters here (time to the next streamed response) is inference_timeout_s.
        warnings.filterwarnings("ignore", category=NotSupportedTimeoutWarning)

        # One gRPC channel for all requests: every call opens its own stream on it. Long timeout: under load
        # a request may wait in the batch queue for a while before its first token.
        self.client = AsyncioDecoupledModelClient(self.url, self.model_name, inference_timeout_s=600,
                                                  init_timeout_s=120)
        self.cancel_client = AsyncioModelClient(self.url, f"{self.model_name}-cancel", inference_timeout_s=60,
                                                init_timeout_s=120)

    async def _stop(self, _app) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=30)
        await self.client.close()
        await self.cancel_client.close()

    # ---- routes ----------------------------------------------------------------------------------------
    async def health(self, _request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.model_name})

    async def models(self, _request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "minitron",
             "max_model_len": self.context_length}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        prompts = _prompts(body.get("prompt"))
        echo = body.get("echo", False)
        if not isinstance(echo, bool):
            raise ApiError(400, "`echo` must be true or false", "echo")
        if body.get("stream") and echo:
            raise ApiError(400, "`echo` is not supported with `stream`; send stream: false", "echo")
        if body.get("stream") and len(prompts) > 1:
            raise ApiError(400, "`stream` takes one prompt; send several prompts with stream: false", "prompt")
        sampling = self._sampling(body, "completions", min_tokens=0 if echo else 1)
        logprobs = _optional_int(body, "logprobs", MAX_LOGPROBS["completions"])
        if logprobs is not None:
            sampling["logprobs"] = np.array([logprobs], dtype=np.int32)
        if echo:  # the prompt's log-probabilities, and for token ids their text, come with the first output
            sampling["prompt_logprobs"] = np.array([logprobs or 0], dtype=np.int32)
        replies = [_Reply(self.model_name, chat=False, echo=prompt if echo else None, logprobs=logprobs is not None)
                   for prompt in prompts]
        inputs = [{**({"prompt": _bytes(p)} if isinstance(p, str) else {"prompt_ids": np.array(p, dtype=np.int64)}),
                   **sampling} for p in prompts]
        return await self._generate(request, body, inputs, replies)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        inputs = {"messages": _bytes(json.dumps(_messages(body.get("messages")))), **self._sampling(body, "chat")}
        if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
            raise ApiError(400, "`logprobs` must be true or false", "logprobs")
        top = _optional_int(body, "top_logprobs", MAX_LOGPROBS["chat"])
        if top is not None and not body.get("logprobs"):
            raise ApiError(400, "`top_logprobs` needs `logprobs: true`", "top_logprobs")
        if body.get("logprobs"):
            inputs["logprobs"] = np.array([top or 0], dtype=np.int32)
        reply = _Reply(self.model_name, chat=True, logprobs=bool(body.get("logprobs")))
        return await self._generate(request, body, [inputs], [reply])

    # ---- validation ------------------------------------------------------------------------------------
    def _sampling(self, body: dict, kind: str, min_tokens: int = 1) -> dict[str, np.ndarray]:
        model = body.get("model", self.model_name)
        if model != self.model_name:
            raise ApiError(404, f"The model {model!r} does not exist; this server serves {self.model_name!r}",
                           "model", "model_not_found")
        if body.get("n", 1) != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        if not isinstance(body.get("stream", False), bool):
            raise ApiError(400, "`stream` must be true or false", "stream")
        max_tokens = next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None),
                          DEFAULT_MAX_TOKENS[kind])  # absent or null: the default
        _check_int(max_tokens, "max_tokens", min_tokens, self.context_length)
        inputs = {"max_tokens": np.array([max_tokens], dtype=np.int32)}
        for name, low, high, dtype in (("temperature", 0.0, 2.0, np.float32), ("top_p", 1e-9, 1.0, np.float32)):
            if body.get(name) is not None:
                _check_number(body[name], name, low, high)
                inputs[name] = np.array([body[name]], dtype=dtype)
        if body.get("top_k") is not None:  # not OpenAI's, but vLLM and TensorRT-LLM accept it too
            _check_int(body["top_k"], "top_k", 0, 1 << 30)
            inputs["top_k"] = np.array([body["top_k"]], dtype=np.int32)
        if body.get("seed") is not None:
            _check_int(body["seed"], "seed", -(1 << 63), (1 << 63) - 1)
            inputs["seed"] = np.array([body["seed"]], dtype=np.int64)
        stop = _stop_strings(body.get("stop"))
        if stop:
            inputs["stop"] = np.array([s.encode() for s in stop], dtype=np.object_)
        return inputs

    # ---- generation through Triton ---------------------------------------------------------------------
    async def _generate(self, request: web.Request, body: dict, inputs: list[dict], replies: list["_Reply"]
                        ) -> web.StreamResponse:
        """One Triton request per prompt, all sent at once (the backend batches them); one reply each."""
        starts = await asyncio.gather(*(self._start_stream(i, r) for i, r in zip(inputs, replies)),
                                      return_exceptions=True)
        refused = next((s for s in starts if isinstance(s, BaseException)), None)
        if refused is not None:
            for s in starts:
                if not isinstance(s, BaseException):
                    self._drain(s[0])
            raise refused
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            (stream, first), = starts
            return await self._stream_sse(request, stream, first, replies[0], include_usage)
        await asyncio.gather(*(self._read_to_end(stream, first, reply)
                               for (stream, first), reply in zip(starts, replies)))
        return web.json_response(_Reply.combined(replies))

    async def _start_stream(self, inputs: dict, reply: "_Reply"):
        stream = self.client.infer_sample(**inputs, request_id=_bytes(reply.id))
        first = await _next_output(stream)  # refusals (e.g. prompt too long) come first: still a 4xx
        if first is None:
            raise ApiError(502, "the Triton model closed the stream without an answer", kind="server_error")
        if first["error"]:
            self._drain(stream)
            raise ApiError(400, first["error"])
        return stream, first

    async def _read_to_end(self, stream, output: dict, reply: "_Reply") -> None:
        while True:
            reply.add(output)
            if output["finish_reason"]:
                break
            output = await _next_output(stream)
            if output is None:
                raise ApiError(502, "the Triton stream ended before the last token", kind="server_error")
        self._drain(stream)

    async def _stream_sse(self, request, stream, output, reply, include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            if reply.chat:
                await _send(response, reply.chunk(role=True))
            while output is not None:
                text, logprobs = reply.add(output)
                if text or logprobs or output["finish_reason"]:
                    await _send(response, reply.chunk(text, output["finish_reason"] or None, logprobs=logprobs))
                if output["finish_reason"]:
                    break
                output = await _next_output(stream)
            if include_usage:
                await _send(response, reply.usage_chunk())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            # The client went away mid-stream: stop its generation through the cancel model (the backend
            # drops the row from its batch); the Triton stream is still drained to its end below.
            await self._cancel(reply.id)
        except Exception as e:  # noqa: BLE001 - headers are out: report in-band, then end the stream
            with contextlib.suppress(ConnectionResetError):
                await _send(response, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error"}})
                await response.write(b"data: [DONE]\n\n")
        finally:
            self._drain(stream)
        return response

    async def _cancel(self, request_id: str) -> None:
        try:
            await self.cancel_client.infer_sample(request_id=_bytes(request_id))
        except Exception:  # noqa: BLE001 - best effort: the request then simply runs to max_tokens
            pass

    def _drain(self, stream) -> None:
        """Read the Triton stream to its end in the background (it ends when its whole batch has)."""
        async def drain():
            try:
                async for _ in stream:
                    pass
            except Exception:  # noqa: BLE001 - nothing left to tell a client that already has its answer
                pass

        task = asyncio.get_running_loop().create_task(drain())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Reply:
    """Accumulates one prompt's Triton outputs into an OpenAI completion / chat completion choice."""

    def __init__(self, model: str, chat: bool, echo: str | list[int] | None = None, logprobs: bool = False):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.text, self.finish = "", None
        self.prompt_tokens = self.completion_tokens = 0
        self.echo = echo  # completions' echo: the prompt as sent (text, or token ids shown as their text)
        self.logprobs = logprobs
        self.prompt_entries: list[dict | None] = []  # the prompt's logprobs entries, when echoed with logprobs
        self.entries: list[dict] = []  # one per generated token, when logprobs were asked
        self.offset = 0  # text_offset of the next generated token in this choice's text

    def add(self, output: dict) -> tuple[str, list[dict]]:
        """Take one Triton output; return its new text and new logprobs entries."""
        self.text += output["text"]
        self.finish = output["finish_reason"] or self.finish
        self.prompt_tokens = output["prompt_tokens"]
        self.completion_tokens = max(self.completion_tokens, output["completion_tokens"])
        logprobs = output["logprobs"] or {}
        if "prompt" in logprobs:
            self.prompt_entries = logprobs["prompt"] if self.logprobs else []
            if isinstance(self.echo, list):  # token ids: echo their text
                self.echo = logprobs["prompt_text"]
        new = logprobs.get("tokens", []) if self.logprobs else []
        self.entries += new
        return output["text"], new

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def _envelope(self, kind: str, choices: list) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def choice(self, index: int = 0) -> dict:
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish, "logprobs": self._chat_logprobs(self.entries)}
        echo = self.echo if isinstance(self.echo, str) else ""
        logprobs = self._completion_logprobs(self.prompt_entries + self.entries, 0) if self.logprobs else None
        return {"index": index, "text": echo + self.text, "finish_reason": self.finish, "logprobs": logprobs}

    @staticmethod
    def combined(replies: list["_Reply"]) -> dict:
        """One response for several prompts: a choice per prompt, usage summed (as OpenAI answers)."""
        first = replies[0]
        usage = {k: sum(r.usage()[k] for r in replies) for k in first.usage()}
        kind = "chat.completion" if first.chat else "text_completion"
        return {**first._envelope(kind, [r.choice(i) for i, r in enumerate(replies)]), "usage": usage}

    def chunk(self, text: str = "", finish: str | None = None, role: bool = False,
              logprobs: list[dict] | None = None) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            return self._envelope("chat.completion.chunk", [{
                "index": 0, "delta": delta, "finish_reason": finish,
                "logprobs": self._chat_logprobs(logprobs) if logprobs else None}])
        entries = self._completion_logprobs(logprobs, self.offset) if logprobs else None
        if entries:
            self.offset = entries["text_offset"][-1] + len(entries["tokens"][-1])
        return self._envelope("text_completion", [{"index": 0, "text": text, "finish_reason": finish,
                                                   "logprobs": entries}])

    def usage_chunk(self) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._envelope(kind, []), "usage": self.usage()}

    def _chat_logprobs(self, entries: list[dict]) -> dict | None:
        if not self.logprobs:
            return None

        def token(e: dict) -> dict:
            return {"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode())}

        return {"content": [{**token(e), "top_logprobs": [token(t) for t in e["top"]]} for e in entries],
                "refusal": None}

    @staticmethod
    def _completion_logprobs(entries: list[dict], offset: int) -> dict:
        """The completions shape: parallel lists; text_offset indexes this choice's `text`; top_logprobs
        maps the top-N tokens' text to log-probabilities, the chosen token included (as vLLM does); the
        echoed prompt's first token has null logprob and top_logprobs (nothing predicts it)."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            out["tokens"].append(e["token"])
            out["token_logprobs"].append(e["logprob"])
            out["top_logprobs"].append(None if e["top"] is None else _top_dict(e))
            out["text_offset"].append(offset)
            offset += len(e["token"])
        return out


async def _next_output(stream) -> dict | None:
    """The next non-empty Triton response of this request as Python values (None at the end)."""
    async for raw in stream:
        out = {name: _value(raw[name]) for name in ("text", "finish_reason", "error", "logprobs")}
        out["token_ids"] = [t for t in raw["token_ids"].tolist() if t >= 0]  # [-1]: no new tokens
        out["prompt_tokens"] = int(raw["prompt_tokens"][0])
        out["completion_tokens"] = int(raw["completion_tokens"][0])
        out["logprobs"] = json.loads(out["logprobs"]) if out["logprobs"] else None
        if out["text"] or out["token_ids"] or out["finish_reason"] or out["error"] or out["logprobs"]:
            return out
    return None


def _value(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


async def _send(response: web.StreamResponse, payload: dict) -> None:
    await response.write(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode())


def _bytes(text: str) -> np.ndarray:
    return np.array([text.encode("utf-8")], dtype=np.object_)


async def _json_body(request: web.Request) -> dict:
    try:
        body = json.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:  # e.g. "[" x 100,000: nesting deeper than the parser's stack is a bad request
        raise ApiError(400, "the request body is nested too deeply to be a chat or completion request") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` is required and must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(parts) if len(parts) == len(content) and all(isinstance(p, str) for p in parts) \
                else None
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(content, str):
            raise ApiError(400, f"messages[{i}] must be {{\"role\": one of {sorted(ROLES)}, \"content\": text}}",
                           "messages")
        out.append({"role": m["role"], "content": content})
    return out


def _top_dict(entry: dict) -> dict[str, float]:
    """Token text -> log-probability. Different tokens can share a text (e.g. incomplete UTF-8 shows as U+FFFD):
    the more likely one keeps the key, so the dict's maximum stays the position's best log-probability."""
    top: dict[str, float] = {}
    for t in (*entry["top"], entry):
        top.setdefault(t["token"], t["logprob"])
    return top


def _prompts(prompt) -> list[str | list[int]]:
    """`prompt` as OpenAI takes it: text, token ids, or a non-empty list of either."""
    def is_ids(x) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(prompt, str) or is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and 0 < len(prompt) <= MAX_PROMPTS and all(
            isinstance(p, str) or is_ids(p) for p in prompt):
        return prompt
    raise ApiError(400, "`prompt` is required: a string, a list of token ids, or a list of up to "
                        f"{MAX_PROMPTS} of either", "prompt")


def _optional_int(body: dict, name: str, high: int) -> int | None:
    if body.get(name) is None:
        return None
    _check_int(body[name], name, 0, high)
    return body[name]


def _stop_strings(stop) -> list[str]:
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise ApiError(400, "`stop` must be a non-empty string or a list of up to 4 of them", "stop")
    return stop


def _check_int(value, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"`{name}` must be an integer in [{low}, {high}], got {value!r}", name)


def _check_number(value, name: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"`{name}` must be a number in [{low:g}, {high:g}], got {value!r}", name)


@web.middleware
async def _json_errors(request, handler):
    """Every error leaves as OpenAI-style JSON, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return ApiError(e.status, e.reason or "error").response()
    except Exception as e:  # noqa: BLE001 - a bug or a Triton failure: say so, keep serving
        from pytriton.client.exceptions import PyTritonClientError

        kind = "server_error"
        message = e.message if isinstance(e, PyTritonClientError) else f"{type(e).__name__}: {e}"
        return ApiError(500, message, kind=kind).response()
