"""Does a student compute in vLLM / TensorRT-LLM what it computes in transformers? Run this where they are installed.

    python deploy/check_runtime.py --runtime vllm --model runs/.../distill-width/hf [--dtype float32]
    python deploy/check_runtime.py --runtime tensorrt_llm --model runs/.../distill-width/hf --dtype bfloat16

Standalone on purpose: it imports neither this repository nor its pinned stack, only torch, transformers and the
runtime (vLLM and TensorRT-LLM pin their own torch/transformers; install them in their own environment or
container). On the same token ids it compares the runtime at --dtype with transformers at float32:

* greedy continuation of `--new-tokens` (temperature 0, EOS ignored): identical token for token, or not;
* log-probabilities: the runtime's top-k at every prompt position (`prompt_logprobs`) and at every generated
  one up to the first that differs from transformers' (later ones condition on other text) against
  transformers' fp32 log-softmax of the same ids: the max |Δ|.

Prints one JSON object; exit status 1 when a Δ exceeds --tolerance, or greedy differs at float32 (at 16-bit a
near-tie may flip). Default tolerance by dtype: float32 1e-3 (kernel order only); float16 0.1 and bfloat16 1.0
(weights and activations rounded to 11 / 8 significant bits: on the demo's SmolLM2 students vLLM's bfloat16
differs by up to 0.33, llama.cpp's BF16 GGUF by 0.13). The prompt defaults to a fixed English paragraph.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

PROMPT = ("The Python standard library is very extensive, offering a wide range of facilities. It contains "
          "built-in modules, written in C, that provide access to system functionality such as file I/O that "
          "would otherwise be inaccessible to Python programmers, as well as modules written in Python that "
          "provide standardized solutions for many problems that occur in everyday programming.")
DEFAULT_TOLERANCE = {"float32": 1e-3, "float16": 0.1, "bfloat16": 1.0}


def reference(model_dir: str, prompt: list[int], new_tokens: int):
    """transformers' fp32 greedy continuation and log-softmax after every position."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True,
                                                 trust_remote_code=False).to(device).eval()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(torch.tensor([ids], device=device)).logits[0, -1].argmax()))
        logprobs = model(torch.tensor([ids], device=device)).logits[0].float().log_softmax(-1).cpu()
    return ids, logprobs


def _as_dict(position) -> dict[int, float] | None:
    """One position of vLLM's / TensorRT-LLM's logprobs ({id: Logprob}) as {id: log-probability}."""
    return None if position is None else {t: lp.logprob for t, lp in position.items()}


def run_vllm(model_dir: str, prompt: list[int], new_tokens: int, top_k: int, dtype: str):
    """(generated ids, per prompt position {id: logprob} (position 0: None), per generated position {id: logprob})."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, on CPU builds
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    length = len(prompt) + new_tokens + 8
    llm = LLM(model=model_dir, dtype=dtype, enforce_eager=True, max_model_len=length, max_num_seqs=1,
              max_num_batched_tokens=max(length, 256), seed=0, trust_remote_code=False)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, logprobs=top_k, prompt_logprobs=top_k,
                            ignore_eos=True)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params)[0]
    return (list(out.outputs[0].token_ids), [_as_dict(p) for p in out.prompt_logprobs],
            [_as_dict(p) for p in out.outputs[0].logprobs])


def run_tensorrt_llm(model_dir: str, prompt: list[int], new_tokens: int, top_k: int, dtype: str):
    """Same as run_vllm with TensorRT-LLM's LLM API (its PyTorch backend on an HF folder)."""
    from tensorrt_llm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype=dtype, trust_remote_code=False)
    params = SamplingParams(max_tokens=new_tokens, top_k=1, logprobs=top_k, prompt_logprobs=top_k, ignore_eos=True)
    out = llm.generate([prompt], params)[0]
    completion = out.outputs[0]
    prompt_logprobs = [_as_dict(p) for p in (getattr(completion, "prompt_logprobs", None) or [])]
    if len(prompt_logprobs) == len(prompt) - 1:  # no entry for the first token
        prompt_logprobs = [None, *prompt_logprobs]
    llm.shutdown()
    return list(completion.token_ids), prompt_logprobs, [_as_dict(p) for p in completion.logprobs]


RUNTIMES = {"vllm": run_vllm, "tensorrt_llm": run_tensorrt_llm}


def compare(ids: list[int], logprobs, prompt_len: int, generated: list[int], prompt_positions, gen_positions) -> dict:
    def delta(position: dict | None, row: int) -> float:
        return max((abs(lp - float(logprobs[row, t])) for t, lp in position.items()), default=0.0) if position \
            else 0.0

    prompt_deltas = [delta(p, j - 1) for j, p in enumerate(prompt_positions) if j > 0]
    same = next((i for i, (a, b) in enumerate(zip(generated, ids[prompt_len:])) if a != b), len(generated))
    gen_deltas = [delta(p, prompt_len - 1 + i) for i, p in enumerate(gen_positions[:same + 1])]
    return {"greedy_match": generated == ids[prompt_len:], "generated": generated, "reference": ids[prompt_len:],
            "prompt_positions_compared": len(prompt_deltas), "generated_positions_compared": len(gen_deltas),
            "max_abs_dlogprob_prompt": max(prompt_deltas, default=None),
            "max_abs_dlogprob_generated": max(gen_deltas, default=None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runtime", choices=list(RUNTIMES), required=True)
    p.add_argument("--model", required=True, help="HF checkpoint folder (a student's hf/)")
    p.add_argument("--dtype", choices=list(DEFAULT_TOLERANCE), default="float32")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--tolerance", type=float, default=None, help="max |Δ logprob| allowed (default: by --dtype)")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        print(f"error: --model {args.model}: no config.json; give an HF checkpoint folder", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(args.model)(args.prompt, add_special_tokens=False)["input_ids"]
    ids, logprobs = reference(args.model, prompt, args.new_tokens)
    start = time.perf_counter()
    try:
        generated, prompt_positions, gen_positions = RUNTIMES[args.runtime](args.model, prompt, args.new_tokens,
                                                                            args.top_k, args.dtype)
    except ImportError as e:
        print(f"error: --runtime {args.runtime} is not installed here ({e}); run this script in its environment",
              file=sys.stderr)
        return 2
    result = {"runtime": args.runtime, "model": args.model, "dtype": args.dtype, "top_k": args.top_k,
              "prompt_tokens": len(prompt), "seconds": round(time.perf_counter() - start, 1),
              **compare(ids, logprobs, len(prompt), generated, prompt_positions, gen_positions)}
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[args.dtype]
    deltas = [d for d in (result["max_abs_dlogprob_prompt"], result["max_abs_dlogprob_generated"]) if d is not None]
    result["tolerance"] = tolerance
    result["ok"] = (result["greedy_match"] or args.dtype != "float32") and all(d <= tolerance for d in deltas)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
