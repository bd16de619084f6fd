"""Evaluation: held-out perplexity, lm-evaluation-harness tasks, throughput."""
