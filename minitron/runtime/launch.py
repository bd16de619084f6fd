"""Run a module's entry point on N local processes under torchrun (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from minitron import config
from minitron.errors import MinitronError
from minitron.runtime import distributed


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *args]


def run_module(nproc: int, module: str, args: list[str], expect_result: bool = True):
    """Run ``python -m <module> <args> --result-file F`` on `nproc` ranks; return what rank(s) wrote to F."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        proc = subprocess.run(torchrun_command(nproc, module, [*args, "--result-file", str(result)]),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")] or proc.stderr.splitlines()[-5:]
            raise MinitronError(f"torchrun ({nproc} ranks) `{module}` failed: {' | '.join(lines)}")
        if not expect_result:
            return None
        if not result.is_file():
            raise MinitronError(f"torchrun `{module}` wrote no result")
        return json.loads(result.read_text())


def job_main(run_job, job_class, description: str, argv: list[str] | None = None, many: bool = False) -> int:
    """``python -m <module> JOB.json [--result-file F]``: one job on every rank (the torchrun entry point).

    With ``many``, ``JOB.json ...`` is a list of jobs handed to `run_job` together. The jobs are read
    back through the config checks; rank 0 writes the result, if any, as JSON to F. Errors print one
    line, as the `minitron` command does.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("job", nargs="+" if many else None, help="job JSON written by the stage")
    p.add_argument("--result-file", default=None)
    args = p.parse_args(argv)
    try:
        jobs = [config.load_saved(job_class, f) for f in args.job] if many else config.load_saved(job_class, args.job)
        result = distributed.distributed_entry(run_job)(jobs)
    except MinitronError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.result_file and result is not None and distributed.is_rank0():
        Path(args.result_file).write_text(json.dumps(result))
    return 0
