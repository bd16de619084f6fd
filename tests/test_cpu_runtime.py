"""The CPU runtime of compute commands (minitron.runtime.cpu_runtime): Intel OpenMP / tcmalloc when installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minitron.runtime import cpu_runtime


@pytest.fixture
def cpu_host(monkeypatch):
    monkeypatch.setattr(cpu_runtime, "_gpu_host", lambda: False)
    monkeypatch.setattr(cpu_runtime, "_intel_openmp", lambda: "/venv/lib/libiomp5.so")
    monkeypatch.setattr(cpu_runtime, "_tcmalloc", lambda: "libtcmalloc_minimal.so.4")


def test_preloads_what_is_installed_and_keeps_an_existing_preload(cpu_host):
    env = cpu_runtime.tuned_environment({"LD_PRELOAD": "/opt/libother.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:/venv/lib/libiomp5.so:/opt/libother.so"
    assert env["KMP_BLOCKTIME"] == "1" and env["PATH"] == "/bin"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 2 ** 40  # no stderr line per 1 GB tensor
    assert cpu_runtime.tuned_environment({"KMP_BLOCKTIME": "200"})["KMP_BLOCKTIME"] == "200"  # the user's wins


def test_nothing_changes_when_asked_active_missing_or_on_a_gpu_host(cpu_host, monkeypatch):
    assert cpu_runtime.tuned_environment({"MINITRON_CPU_RUNTIME": "default"}) is None
    # Already running under it (the re-run itself): no second re-run.
    assert cpu_runtime.tuned_environment({"LD_PRELOAD": "/venv/lib/libiomp5.so"}) is None
    monkeypatch.setattr(cpu_runtime, "_gpu_host", lambda: True)
    assert cpu_runtime.tuned_environment({}) is None
    monkeypatch.setattr(cpu_runtime, "_gpu_host", lambda: False)
    monkeypatch.setattr(cpu_runtime, "_intel_openmp", lambda: None)
    monkeypatch.setattr(cpu_runtime, "_tcmalloc", lambda: None)
    assert cpu_runtime.tuned_environment({}) is None


def test_a_bad_choice_is_one_line_naming_the_choices():
    with pytest.raises(SystemExit, match=r"MINITRON_CPU_RUNTIME='fast': use one of \['auto', 'default'\]"):
        cpu_runtime.tuned_environment({"MINITRON_CPU_RUNTIME": "fast"})


# A real process: re-runs itself, then computes; prints its runtime and a result that must not depend on it.
PROBE = """
import json, torch
from minitron.runtime import cpu_runtime
cpu_runtime.use_tuned_runtime()
torch.manual_seed(0)
x = torch.randn(512, 768)
y = torch.log_softmax(x @ x.T / 30, -1).exp().sum(0)
print(json.dumps({**cpu_runtime.active(), "result": y.tolist()}))
"""


def _probe(choice: str) -> dict:
    env = cpu_runtime.pytorch_defaults(dict(os.environ))  # then `choice` decides
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, "MINITRON_CPU_RUNTIME": choice},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(cpu_runtime._intel_openmp() is None or cpu_runtime._gpu_host(),
                    reason="intel-openmp is not installed here (make setup installs it)")
def test_a_process_reruns_itself_under_intel_openmp_with_the_same_results():
    tuned, default = _probe("auto"), _probe("default")
    assert tuned["openmp"] == "intel (libiomp5)" and default["openmp"] == "gnu (libgomp)"
    assert tuned["allocator"] == ("tcmalloc" if cpu_runtime._tcmalloc() else "glibc malloc")
    assert tuned["result"] == default["result"]  # speed, not numbers: bit for bit the same
