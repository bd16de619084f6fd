"""One interface for every generation backend the server can run.

A backend turns a tokenized prompt and `SamplingParams` into an async stream of `Chunk`s (new token ids,
the new text, and on the last chunk the finish reason). The PyTriton model (`triton_model.py`) only talks
to this interface, so the PyTorch and the TensorRT-LLM backends serve the same Triton model and the same
OpenAI facade.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import AsyncIterator, Protocol

from minitron.errors import MinitronError

@dataclasses.dataclass
class SamplingParams:
    """Per-request sampling. temperature 0 means greedy (top_p/top_k/seed are then ignored)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; N >= 0: each generated token's log-probability and the N most likely
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (max_tokens may be 0)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclasses.dataclass
class TokenLogprob:
    """A token's log-probability under the model (fp32 log-softmax of the raw logits, before temperature or
    top-k/top-p) and the `top` most likely tokens at that position as (token id, log-probability), best first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclasses.dataclass
class Chunk:
    """What a backend produced since the previous chunk of the same request."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length" (max_tokens) or "abort" (cut short)
    logprobs: list[TokenLogprob] | None = None  # one per token id, when the request asked for them
    # first chunk only, when asked: one per prompt token; the first is None (nothing predicts it)
    prompt_logprobs: list[TokenLogprob | None] | None = None


class Backend(Protocol):
    name: str
    context_length: int

    def encode(self, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
        """Token ids of a plain prompt, or of chat messages with the model's chat template applied."""

    def count_tokens(self, text: str) -> int: ...

    def token_texts(self, ids: list[int]) -> list[str]: ...

    @property
    def vocab_size(self) -> int: ...

    def decode(self, ids: list[int]) -> str: ...

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Chunk]:
        """Generate for one request; chunks arrive on the caller's running event loop."""

    def close(self) -> None: ...


class HFTokenizerMixin:
    """`encode` / `count_tokens` of the Backend interface for backends holding an HF tokenizer."""

    name: str
    tokenizer: object

    def encode(self, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise MinitronError(f"model {self.name!r} has no chat template; use /v1/completions")
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            # The template already holds the special tokens; do not let the tokenizer add a second BOS.
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token decoded on its own, as OpenAI and vLLM name tokens in logprobs (special tokens too)."""
        return [self.tokenizer.decode([i]) for i in ids]

    def decode(self, ids: list[int]) -> str:
        """Text of token ids as given (special tokens kept): what `echo` shows for a prompt of ids."""
        return self.tokenizer.decode(ids)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


class TextStream:
    """Incremental detokenization with stop strings, shared by backends that sample token by token.

    Text is decoded from all generated ids each time (a byte-level BPE token can be half a UTF-8
    character, so decoding token by token would emit garbage). Text that could still turn into a stop
    string, or that ends in an incomplete character, is held back until it is safe to send.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.sent = 0  # characters of text already emitted

    def push(self, token_id: int, last: bool) -> tuple[str, bool]:
        """Add a token; return (new text safe to send, hit a stop string)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._stop_at(text)
        if cut is not None:
            return self._emit(text[:cut]), True
        if last:
            return self._emit(text), False
        safe = len(text) - self._held_back(text)
        return self._emit(text[:safe]), False

    def _emit(self, text: str) -> str:
        new = text[self.sent:]
        self.sent = max(self.sent, len(text))
        return new

    def _stop_at(self, text: str) -> int | None:
        # Only the unsent tail (plus room for a stop string straddling it) can hold a new match.
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self, text: str) -> int:
        # An incomplete UTF-8 character decodes to U+FFFD until its other bytes arrive.
        longest = len(text) - len(text.rstrip("\ufffd"))
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    longest = max(longest, n)
                    break
        return longest


def context_length(model_dir: Path) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)
