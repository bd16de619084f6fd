"""Serving: a PyTriton model with PyTorch / TensorRT-LLM backends and an OpenAI-compatible facade."""
