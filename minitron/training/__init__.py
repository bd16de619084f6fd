"""Training on Megatron-Core: knowledge distillation and teacher correction (TP/PP/DP, resumable)."""
