"""Deployment: FP8/BF16 export, TensorRT-LLM engines and serving (PyTriton + OpenAI-compatible API)."""
