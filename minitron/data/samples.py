"""Fixed-length training/evaluation samples, packed across documents by Megatron's GPTDataset.

A sample is a LongTensor of ``seq_length + 1`` tokens: ``sample[:-1]`` are the inputs and
``sample[1:]`` the next-token labels. Documents are concatenated (each ends with EOS) and
cut into samples, so one sample may span several documents; a trailing partial sample is
dropped, so every token is real text.

The packing, shuffling and multi-epoch logic is Megatron-Core's own (``GPTDataset`` built by
``BlendedMegatronDatasetBuilder``, with its compiled index helpers; they run on CPU). Its
index files are cached in ``<prepared root>/index_cache/``. Under torch.distributed the
builder is collective: call ``samples``/``batches`` on every rank (rank 0 builds the index
first, the others then load it). Sharding samples over data-parallel ranks is the caller's job.

Training samples are shuffled by ``seed`` and repeat the data for as many epochs as
``num_samples`` needs. Validation and test samples ignore ``seed``: they use one fixed
permutation (Megatron always shuffles documents), so every call, run and machine sees the
same samples, and the first N of them are a spread over the whole split rather than its
first few documents. Asking for more than one epoch of them is an error.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from minitron.data.config import SPLITS
from minitron.data.prepare import PreparedData
from minitron.errors import MinitronError

EVAL_SEED = 20240716  # fixed order of validation/test samples, whatever the training seed
_MEGATRON_SPLIT = {"train": 0, "validation": 1, "test": 2}  # megatron.core.datasets.utils.Split


class _TokenIds:
    """What GPTDataset needs of a tokenizer once text is tokenized: the vocabulary size and EOD id.

    It has no ``pad``: GPTDataset then pads with -1, which never happens here because partial
    samples are dropped. ``unique_identifiers`` enters Megatron's index-cache key.
    """

    def __init__(self, prepared: PreparedData):
        self.vocab_size = prepared.info["tokenizer_size"]
        self.eod = prepared.info["eos_token_id"]
        self.unique_identifiers = {"class": "minitron.data", "eod": self.eod,
                                   "tokenizer_sha256": prepared.info["tokenizer_sha256"]}


class PackedSamples(torch.utils.data.Dataset):
    """A sequence of packed samples (LongTensor[seq_length + 1] each); usable with a DataLoader."""

    def __init__(self, dataset, length: int, seq_length: int):
        self.dataset, self.length, self.seq_length = dataset, length, seq_length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.length <= index < self.length:
            raise IndexError(f"sample {index} out of range ({self.length} samples)")
        item = self.dataset[index % self.length]
        # GPTDataset returns tokens = text[:-1], labels = text[1:]; rebuild text.
        return torch.cat([item["tokens"], item["labels"][-1:]])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(self.length))


def samples(prepared: PreparedData, split: str, seq_length: int, num_samples: int | None = None,
            seed: int = 1234) -> PackedSamples:
    """Packed samples of `split`: one epoch when `num_samples` is None, else exactly `num_samples`."""
    if split not in SPLITS:
        raise MinitronError(f"split {split!r} is not one of {list(SPLITS)}")
    if seq_length < 1 or (num_samples is not None and num_samples < 1):
        raise MinitronError(f"seq_length={seq_length} and num_samples={num_samples} must be >= 1")
    _check_enough_tokens(prepared, split, seq_length)
    train = split == "train"
    size = num_samples if train else None  # evaluation: always the same single epoch
    dataset = _gpt_dataset(prepared, split, seq_length, size, seed if train else EVAL_SEED)
    available = len(dataset)
    if num_samples is not None and num_samples > available:
        raise MinitronError(f"{prepared.root}: the {split} split has {available} samples of "
                            f"{seq_length + 1} tokens, fewer than the {num_samples} asked for; "
                            "ask for fewer or give it more text (data.split)")
    return PackedSamples(dataset, num_samples or available, seq_length)


def batches(prepared: PreparedData, split: str, seq_length: int, batch_size: int,
            num_samples: int | None = None, seed: int = 1234, drop_last: bool = False
            ) -> Iterator[torch.Tensor]:
    """LongTensor[batch_size, seq_length + 1] batches of `samples(...)`, in order."""
    if batch_size < 1:
        raise MinitronError(f"batch_size={batch_size} must be >= 1")
    rows = samples(prepared, split, seq_length, num_samples, seed)
    for start in range(0, len(rows), batch_size):
        count = min(batch_size, len(rows) - start)
        if count < batch_size and drop_last:
            return
        yield torch.stack([rows[start + i] for i in range(count)])


def _check_enough_tokens(prepared: PreparedData, split: str, seq_length: int) -> None:
    have = prepared.tokens[split]
    if have < seq_length + 1:
        raise MinitronError(f"{prepared.root}: the {split} split has {have} tokens, fewer than one sample "
                            f"of {seq_length + 1}; lower seq_length or give it more text (data.split)")


def _gpt_dataset(prepared: PreparedData, split: str, seq_length: int, size: int | None, seed: int):
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    which = _MEGATRON_SPLIT[split]
    blend_per_split = [None] * len(SPLITS)
    # Training samples follow the blend weights; held-out samples are every dataset's split as it is.
    blend_per_split[which] = (prepared.prefixes[split], prepared.weights if split == "train" else None)
    sizes = [None] * len(SPLITS)
    sizes[which] = size
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend_per_split=blend_per_split,
        path_to_cache=str(prepared.root / "index_cache"), tokenizer=_TokenIds(prepared),
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask=False,  # callers build causal masks; a [s, s] mask per sample is waste
        drop_last_partial_validation_sequence=True)
    with _world_of_one(len(prepared.prefixes[split]) > 1):
        datasets = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return datasets[which]


@contextlib.contextmanager
def _world_of_one(needed: bool):
    """Megatron's BlendedDataset asks torch.distributed for the rank while it builds its index; outside a
    distributed job that is a world of one (in-memory store, no port)."""
    import torch.distributed as dist

    if not needed or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
