"""TensorRT-LLM backend (GPU only), written against the TensorRT-LLM 1.2 LLM API.

* A built engine folder (``rank0.engine`` + ``config.json`` with ``build_config``) runs on the TensorRT
  runtime: ``tensorrt_llm._tensorrt_engine.LLM``. Engine folders carry no tokenizer, so ``tokenizer_dir``
  (default: the served model's HF folder given with ``--tokenizer``) must name one.
* An HF checkpoint folder runs on TensorRT-LLM's default (PyTorch) backend: ``tensorrt_llm.LLM``.

TensorRT-LLM schedules requests itself (in-flight batching, paged KV cache), so every request is simply
handed to ``LLM.generate_async(..., streaming=True)``; stop strings and detokenization are its own.
Unlike the PyTorch backend, which matches stop strings in the decoded text, TensorRT-LLM turns them
into token-id sequences, so a stop string that tokenizes differently in context can be missed.

Log-probabilities: TensorRT-LLM's `SamplingParams(logprobs=N, prompt_logprobs=N)` fill `logprobs` (per
generated token: {token id: Logprob(logprob, rank)}, the sampled token included) and `prompt_logprobs`
(PyTorch backend). Both map to the same `TokenLogprob`s the PyTorch backend produces. Not verified on a GPU
from this repository yet (no TensorRT-LLM on CPU); `max_tokens: 0` (score the prompt only) is refused here,
as TensorRT-LLM generates at least one token.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from minitron.deploy.serving.backend import Chunk, HFTokenizerMixin, SamplingParams, TokenLogprob
from minitron.errors import MinitronError


#: TensorRT-LLM's finish reasons -> ours (EOS and stop words are both "stop"; cut short is "abort").
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort", "timeout": "abort"}


def is_engine_dir(path: Path) -> bool:
    config = Path(path) / "config.json"
    return any(Path(path).glob("rank*.engine")) or (
        config.is_file() and "build_config" in json.loads(config.read_text()))


def _context_length(path: Path) -> int:
    config = json.loads((Path(path) / "config.json").read_text())
    build = config.get("build_config") or {}
    pretrained = config.get("pretrained_config") or config
    return int(build.get("max_seq_len") or pretrained.get("max_position_embeddings") or 2048)


def _require_runtime():
    import torch

    if not torch.cuda.is_available():
        raise MinitronError("--backend tensorrt_llm needs an NVIDIA GPU and none is visible; "
                            "use --backend pytorch on this machine")
    try:
        import tensorrt_llm  # noqa: F401  (imported lazily: it is a large, GPU-only install)
    except ImportError as e:
        raise MinitronError("--backend tensorrt_llm needs the tensorrt_llm package (1.2): "
                            f"pip install tensorrt_llm==1.2.* on the GPU machine ({e})") from None


class TensorRTLLMBackend(HFTokenizerMixin):
    def __init__(self, model_dir: Path, name: str, tokenizer_dir: Path | None = None, max_batch_size: int = 64,
                 **_ignored):
        _require_runtime()
        from transformers import AutoTokenizer

        self.name = name
        model_dir = Path(model_dir)
        engine = is_engine_dir(model_dir)
        tokenizer_dir = Path(tokenizer_dir or model_dir)
        if engine and not (tokenizer_dir / "tokenizer_config.json").is_file():
            raise MinitronError(f"{model_dir} is a TensorRT-LLM engine without a tokenizer; pass --tokenizer "
                                "<HF checkpoint folder the engine was built from>")
        if engine:
            from tensorrt_llm._tensorrt_engine import LLM
        else:
            from tensorrt_llm import LLM
        self.context_length = _context_length(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
        kwargs = {} if engine else {"max_batch_size": max_batch_size}  # an engine's batch size is baked in
        self.llm = LLM(model=str(model_dir), tokenizer=str(tokenizer_dir), trust_remote_code=False, **kwargs)

    def _sampling_params(self, params: SamplingParams):
        from tensorrt_llm import SamplingParams as TllmSamplingParams

        if params.greedy:  # TensorRT-LLM decodes greedily with top_k=1 and no top_p
            sampling = dict(top_k=1, top_p=None, temperature=None)
        else:
            sampling = dict(top_k=params.top_k or None, top_p=params.top_p, temperature=params.temperature)
        # TensorRT-LLM's seed None means its runtime default 0 for every request: identical prompts
        # would sample identically. Unseeded requests get a fresh seed, as on the PyTorch backend.
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        if params.max_tokens < 1:
            raise MinitronError("max_tokens 0 (score the prompt only) is not supported by the tensorrt_llm backend; "
                                "ask for max_tokens 1 and ignore the generated token")
        return TllmSamplingParams(max_tokens=params.max_tokens, seed=seed, stop=list(params.stop) or None,
                                  logprobs=params.logprobs, prompt_logprobs=params.prompt_logprobs, **sampling)

    async def stream(self, prompt_ids: list[int], params: SamplingParams):
        result = self.llm.generate_async(list(prompt_ids), sampling_params=self._sampling_params(params),
                                         streaming=True)
        first = True
        try:
            async for output in result:
                completion = output.outputs[0]
                finish = FINISH_REASONS.get(completion.finish_reason, "stop") if output.finished else None
                ids = list(completion.token_ids_diff)
                logprobs = (_token_logprobs(ids, completion.logprobs_diff, params.logprobs)
                            if params.logprobs is not None else None)
                prompt = (_prompt_logprobs(prompt_ids, output.prompt_logprobs, params.prompt_logprobs)
                          if first and params.prompt_logprobs is not None else None)
                first = False
                yield Chunk(ids, completion.text_diff, finish, logprobs=logprobs, prompt_logprobs=prompt)
        finally:
            if not result.finished:
                result.abort()  # the consumer went away: free the sequence's KV cache blocks

    def close(self) -> None:
        self.llm.shutdown()


def _entry(token: int, position: dict, top: int) -> TokenLogprob:
    """One position of TensorRT-LLM's logprobs ({token id: Logprob(logprob, rank)}) as a TokenLogprob."""
    best = sorted(position.items(), key=lambda kv: -kv[1].logprob)[:top]
    chosen = position.get(token)
    return TokenLogprob(token, chosen.logprob if chosen is not None else float("-inf"),
                        [(t, lp.logprob) for t, lp in best])


def _token_logprobs(ids: list[int], positions: list, top: int) -> list[TokenLogprob]:
    return [_entry(t, p, top) for t, p in zip(ids, positions)]


def _prompt_logprobs(prompt_ids: list[int], positions: list | None, top: int) -> list[TokenLogprob | None]:
    positions = list(positions or [])
    if len(positions) == len(prompt_ids):  # a first entry for the first token, which nothing predicts
        positions = positions[1:]
    return [None] + [_entry(t, p, top) for t, p in zip(prompt_ids[1:], positions)]
