"""Shared data pipeline: text sources -> tokenized Megatron indexed datasets -> packed samples.

Used by pruning calibration, distillation and evaluation::

    from minitron.data import DataConfig, prepare, samples, batches
    prepared = prepare(DataConfig(), tokenizer_dir)        # tokenizes once, then cached
    for batch in batches(prepared, "train", seq_length=512, batch_size=8, num_samples=64):
        inputs, labels = batch[:, :-1], batch[:, 1:]

See docs/data.md for the default corpus, the split method and the cache layout.
"""

from minitron.data.config import SPLITS, DataConfig
from minitron.data.prepare import PreparedData, prepare
from minitron.data.samples import PackedSamples, batches, samples
from minitron.data.tokenizer import check_tokenizer_matches

__all__ = ["SPLITS", "DataConfig", "PreparedData", "PackedSamples", "prepare", "samples", "batches",
           "check_tokenizer_matches"]
