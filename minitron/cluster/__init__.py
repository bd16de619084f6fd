"""Cluster jobs: `minitron launch` submits minitron commands through NVIDIA NeMo-Run (Slurm, DGX Cloud, Lepton,
Docker, this machine). Settings: ``config.LaunchConfig``; the submission: ``launch``."""
