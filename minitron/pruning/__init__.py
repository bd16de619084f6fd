"""Minitron structured pruning (width and depth) with NVIDIA Model Optimizer."""
