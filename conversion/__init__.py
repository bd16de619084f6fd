"""Checkpoint conversion: GGUF -> HF, HF <-> NeMo 2 (Megatron-Core distributed checkpoint)."""
