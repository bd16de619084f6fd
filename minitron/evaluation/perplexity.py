"""Held-out perplexity with a fixed, documented method.

Method (the strided sliding window of the transformers perplexity guide):

* The text is one token stream: documents tokenized with the model's tokenizer, no BOS, EOS
  after every document (exactly how the data pipeline tokenizes training text).
* Tokens 1..N-1 are scored exactly once each, in chunks of ``stride`` consecutive tokens; the
  model predicts a chunk from an input of up to ``window`` tokens that ends right before the
  chunk's last token, so every scored token sees at least ``window - stride + 1`` tokens of
  context (fewer only at the start of the stream). Token 0 has no context and is not scored.
* perplexity = exp(sum of token NLLs / number of scored tokens), NLL in fp32.

``stride == window`` is fastest (no token is fed twice); the default ``stride = window // 2``
doubles the work for more context per token. This is the strided sliding window of the
transformers perplexity guide, except that chunk boundaries lose no token. Every model of a
run is scored on the same token stream, so their perplexities compare directly.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minitron.data import DataConfig, prepare
from minitron.data.sources import iter_documents
from minitron.data.tokenizer import load_tokenizer
from minitron.errors import MinitronError
from minitron.runtime.precision import resolve as resolve_precision


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float          # nats per scored token
    scored_tokens: int
    windows: int
    window: int
    stride: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    begin: int   # slice tokens[begin:end]: inputs are slice[:-1], next-token targets slice[1:]
    end: int
    scored: int  # the last `scored` targets are scored here


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """The windows that score tokens 1..n_tokens-1 exactly once each."""
    if window < 1 or not 1 <= stride <= window:
        raise MinitronError(f"perplexity: need window >= 1 and 1 <= stride <= window, got window={window}, "
                            f"stride={stride}")
    if n_tokens < 2:
        raise MinitronError(f"perplexity: the text has {n_tokens} token(s); at least 2 are needed")
    windows = []
    for first in range(1, n_tokens, stride):  # the chunk of targets [first, last)
        last = min(first + stride, n_tokens)
        windows.append(Window(max(0, last - 1 - window), last, last - first))
    return windows


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, window: int, stride: int | None = None, batch_size: int = 4,
               progress: bool = True) -> PerplexityResult:
    """Perplexity of a causal LM (anything returning ``.logits``) on a 1-D token stream."""
    from tqdm import tqdm

    stride = stride or max(1, window // 2)
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()
    windows = sliding_windows(len(tokens), window, stride)
    device = next(model.parameters()).device
    # Only the scored positions need the vocabulary projection (a fifth of SmolLM2's forward); transformers'
    # causal LMs take `logits_to_keep`, other models get every position.
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    nll_sum, scored, start = 0.0, 0, time.perf_counter()
    bar = tqdm(total=sum(w.scored for w in windows), desc="perplexity", unit="tok", disable=not progress)
    for group in _batches_of_equal_length(windows, batch_size):
        chunk = torch.stack([tokens[w.begin:w.end] for w in group]).to(device)
        keep = {"logits_to_keep": max(w.scored for w in group)} if keeps_logits else {}
        logits = model(input_ids=chunk[:, :-1], **keep).logits.float()  # position i predicts chunk[i + 1]
        for row, w in enumerate(group):
            nll_sum += torch.nn.functional.cross_entropy(logits[row, -w.scored:], chunk[row, -w.scored:],
                                                         reduction="sum").item()
            scored += w.scored
        bar.update(sum(w.scored for w in group))
    bar.close()
    mean = nll_sum / scored
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean, scored_tokens=scored, windows=len(windows),
                            window=window, stride=stride, seconds=round(time.perf_counter() - start, 2))


def _batches_of_equal_length(windows: list[Window], batch_size: int):
    """Consecutive windows of the same length (all but possibly the last), so batches need no padding."""
    batch = []
    for w in windows:
        if batch and (len(batch) == batch_size or w.end - w.begin != batch[0].end - batch[0].begin):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


def split_tokens(data_cfg, tokenizer_dir: str | Path, split: str = "test", max_tokens: int | None = None
                 ) -> torch.Tensor:
    """The token stream of one split of the data pipeline (documents in corpus order, EOS after each)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prepared = prepare(data_cfg, tokenizer_dir)
    if prepared.documents[split] == 0:
        raise MinitronError(f"data split {split!r} of {data_cfg.source} is empty; give it a share in data.split")
    pieces = []
    for prefix in prepared.prefixes[split]:  # a blend: each dataset's held-out text in turn
        dataset, total = IndexedDataset(prefix), 0
        for i in range(len(dataset)):
            pieces.append(torch.from_numpy(dataset[i].astype("int64")))
            total += len(pieces[-1])
            if max_tokens is not None and total >= max_tokens // len(prepared.prefixes[split]):
                break
    return torch.cat(pieces)[:max_tokens]


def file_tokens(path: str | Path, tokenizer_dir: str | Path, max_tokens: int | None = None,
                text_key: str = "text") -> torch.Tensor:
    """The token stream of a whole text file (.txt paragraphs, .jsonl/.json/.parquet rows)."""
    path = Path(path)
    if not path.is_file():
        raise MinitronError(f"{path}: evaluation file not found")
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = []
    for doc in iter_documents(DataConfig(source=str(path), text_key=text_key)):
        ids += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens], dtype=torch.long)


def load_causal_lm(hf_dir: str | Path, dtype: str = "float32"):
    """A transformers causal LM from a checkpoint folder, in eval mode (no remote code).

    `dtype`: auto|bf16|fp32 (or bfloat16/float32); auto follows the hardware (minitron.runtime.precision)."""
    from transformers import AutoModelForCausalLM

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise MinitronError(f"{hf_dir}: not a model folder (no config.json); give an exported HF checkpoint")
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=resolve_precision(dtype).dtype, use_safetensors=True,
                                                     trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MinitronError(f"{hf_dir}: cannot load the model ({first})") from None
    return model.eval()
