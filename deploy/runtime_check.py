"""Does an exported model compute what the transformers checkpoint computes? Run it in its runtime and compare.

llama.cpp (a GGUF file) runs in-process through `xllamacpp`, a binary wheel of llama.cpp's server. On the same
token ids as transformers (fp32, eager attention):

* greedy continuation: llama.cpp generates `new_tokens` at temperature 0 from the prompt; it must equal
  transformers' greedy continuation token for token;
* log-probabilities: at every generated position and at sampled prompt positions, llama.cpp's top-k
  log-probabilities (raw softmax, before sampling) against transformers' log-softmax at the same ids.
  llama.cpp's server has no prompt log-probabilities, so each position is a one-token request on the
  prefix (its KV cache re-used); a logit bias picks a plain ASCII token as that request's output so the
  entry is never withheld as an incomplete UTF-8 sequence (the reported probabilities are the model's
  own, before the bias).

llama.cpp runs with an fp32 KV cache and without flash attention so that an F32 file is compared at fp32
rounding; F16/BF16/Q8_0 files then differ by their own weight rounding only.

ONNX Runtime (an onnxruntime-genai model folder) runs through `onnxruntime_genai`'s Generator, KV cache
included: greedy continuation from the prompt, then the same ids fed back (prompt in one step, then one
token per step) with the logits of every position read after each step: the same two comparisons, at every
prompt position.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from minitron.errors import MinitronError


def hf_reference(hf_dir: str | Path, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """transformers' greedy continuation (prompt + new ids) and the log-softmax after each position, fp32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager",
                                                 use_safetensors=True, trust_remote_code=False).eval()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        logits = model(torch.tensor([ids])).logits[0].float()
    return ids, torch.log_softmax(logits, -1).numpy()


class LlamaCpp:
    """One llama.cpp server in this process on a GGUF file (fp32 KV cache, no flash attention)."""

    def __init__(self, gguf_path: str | Path, context: int, threads: int = 1):
        try:
            import xllamacpp
        except ImportError:
            raise MinitronError("llama.cpp check needs xllamacpp (pip install xllamacpp; make setup installs it)") \
                from None
        import gguf

        tokens = gguf.GGUFReader(str(gguf_path)).fields["tokenizer.ggml.tokens"].contents()
        self.plain_token = next(i for i, t in enumerate(tokens) if t.isascii() and t.isalpha())
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf_path)
        params.n_ctx = params.n_batch = params.n_ubatch = max(64, context)
        params.n_parallel = 1
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
        params.warmup = False
        params.verbosity = 0  # errors only: llama.cpp's info lines would land in the caller's output
        params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        start = time.perf_counter()
        self.server = xllamacpp.Server(params)
        self.load_seconds = time.perf_counter() - start

    def _complete(self, body: dict) -> dict:
        reply = self.server.handle_completions(body)
        if "error" in reply:
            raise MinitronError(f"llama.cpp: {reply['error']}")
        return reply["choices"][0]

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        choice = self._complete({"prompt": prompt, "n_predict": new_tokens, "temperature": 0.0, "n_probs": 1,
                                 "cache_prompt": False, "post_sampling_probs": False})
        return [entry["id"] for entry in choice["logprobs"]["content"]]

    def top_logprobs(self, prefix: list[int], top_k: int) -> dict[int, float]:
        """The model's top-k log-probabilities for the token after `prefix`."""
        choice = self._complete({"prompt": prefix, "n_predict": 1, "temperature": 0.0, "n_probs": top_k,
                                 "cache_prompt": True, "post_sampling_probs": False,
                                 "logit_bias": [[self.plain_token, 1000.0]]})
        entry = choice["logprobs"]["content"][0]
        return {t["id"]: t["logprob"] for t in entry["top_logprobs"]}


def compare_gguf(gguf_path: str | Path, hf_dir: str | Path, prompt: list[int], new_tokens: int = 16,
                 top_k: int = 10, prompt_positions: int = 8) -> dict:
    """llama.cpp on `gguf_path` vs transformers on `hf_dir`: greedy match and max |Δ logprob| (see module doc)."""
    ids, reference = hf_reference(hf_dir, prompt, new_tokens)
    llama = LlamaCpp(gguf_path, context=len(ids) + 8)
    greedy = llama.greedy(prompt, new_tokens)
    generated = range(len(prompt), len(ids))
    sampled = sorted(set(np.linspace(1, len(prompt) - 1, min(prompt_positions, len(prompt) - 1)).astype(int)))
    deltas, argmax_agree = {}, 0
    for j in [*sampled, *generated]:
        top = llama.top_logprobs(ids[:j], top_k)
        deltas[j] = max(abs(v - float(reference[j - 1, i])) for i, v in top.items())
        if j >= len(prompt):
            argmax_agree += max(top, key=top.get) == ids[j]
    return {"runtime": "llama.cpp", "gguf": str(gguf_path), "greedy_match": greedy == ids[len(prompt):],
            "greedy": greedy, "reference": ids[len(prompt):], "argmax_agree": argmax_agree,
            "positions": len(generated), "top_k": top_k,
            "max_abs_dlogprob_generated": max(deltas[j] for j in generated),
            "max_abs_dlogprob_prompt": max((deltas[j] for j in sampled), default=0.0),
            "load_seconds": round(llama.load_seconds, 3)}


def _top_k_delta(logprobs: np.ndarray, reference: np.ndarray, top_k: int) -> float:
    """Max |Δ log-prob| over the runtime's top-k tokens of one position."""
    top = np.argpartition(-logprobs, top_k - 1)[:top_k]
    return float(np.abs(logprobs[top] - reference[top]).max())


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def compare_onnx(onnx_dir: str | Path, hf_dir: str | Path, prompt: list[int], new_tokens: int = 16,
                 top_k: int = 10) -> dict:
    """onnxruntime-genai on `onnx_dir` vs transformers on `hf_dir`: greedy match and max |Δ logprob| (module doc)."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise MinitronError("ONNX Runtime check needs onnxruntime-genai (pip install onnxruntime-genai; make setup "
                            "installs it)") from None
    ids, reference = hf_reference(hf_dir, prompt, new_tokens)
    start = time.perf_counter()
    model = og.Model(str(onnx_dir))
    load_seconds = time.perf_counter() - start

    def generator():
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 1, batch_size=1)
        return og.Generator(model, params)

    gen = generator()
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    greedy = []
    while len(greedy) < new_tokens and not gen.is_done():
        gen.generate_next_token()
        greedy.append(int(gen.get_next_tokens()[0]))
    # Teacher-forced on the reference ids: the prompt's logits come back for every position at once.
    gen = generator()
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    rows = [*np.asarray(gen.get_output("logits")).reshape(len(prompt), -1)]
    for token in ids[len(prompt):-1]:
        gen.append_tokens(np.array([[token]], dtype=np.int32))
        rows.append(np.asarray(gen.get_output("logits")).reshape(-1, reference.shape[-1])[-1])
    logprobs = _log_softmax(np.stack(rows))
    deltas = [_top_k_delta(lp, ref, top_k) for lp, ref in zip(logprobs, reference)]
    generated = range(len(prompt) - 1, len(ids) - 1)  # row j predicts token j + 1
    return {"runtime": "onnxruntime-genai", "onnx": str(onnx_dir),
            "greedy_match": greedy == ids[len(prompt):len(prompt) + len(greedy)] and (
                len(greedy) == new_tokens or _stopped_at_eos(onnx_dir, greedy)),
            "greedy": greedy, "reference": ids[len(prompt):],
            "argmax_agree": int(sum(int(logprobs[j].argmax()) == ids[j + 1] for j in generated)),
            "positions": len(generated), "top_k": top_k,
            "max_abs_dlogprob_generated": max(deltas[j] for j in generated),
            "max_abs_dlogprob_prompt": max(deltas[:len(prompt) - 1], default=0.0),
            "load_seconds": round(load_seconds, 3)}


def _stopped_at_eos(onnx_dir: str | Path, greedy: list[int]) -> bool:
    """A greedy run shorter than asked is complete only if it ended on an end-of-sequence token."""
    import json

    eos = json.loads((Path(onnx_dir) / "genai_config.json").read_text())["model"].get("eos_token_id")
    return bool(greedy) and greedy[-1] in (eos if isinstance(eos, list) else [eos])
