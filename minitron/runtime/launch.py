"""Run a `minitron` subcommand on N local processes under torchrun (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from minitron.errors import MinitronError


def torchrun_command(nproc: int, cli_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "minitron.cli", *cli_args]


def run_cli(nproc: int, cli_args: list[str], expect_result: bool = True):
    """Run ``minitron <cli_args> --result-file F`` on `nproc` ranks; return what rank(s) wrote to F."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        proc = subprocess.run(torchrun_command(nproc, [*cli_args, "--result-file", str(result)]),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")] or proc.stderr.splitlines()[-5:]
            raise MinitronError(f"torchrun ({nproc} ranks) `minitron {cli_args[0]}` failed: {' | '.join(lines)}")
        if not expect_result:
            return None
        if not result.is_file():
            raise MinitronError(f"torchrun `minitron {cli_args[0]}` wrote no result")
        return json.loads(result.read_text())
