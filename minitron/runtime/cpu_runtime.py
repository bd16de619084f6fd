"""The OpenMP runtime and memory allocator of CPU runs: Intel OpenMP and tcmalloc where they are installed.

A KD step on a small model is hundreds of short elementwise kernels (norms, rotary embeddings, casts,
residual adds, the chunked KL) between the matmuls, and each one starts and joins PyTorch's OpenMP thread
team; Intel OpenMP starts and joins it faster than GNU OpenMP (libgomp, what PyTorch's wheels link), and
tcmalloc hands a step back the pages of the previous one (timings: docs/cpu.md; the results are bit for bit
the same). It is what PyTorch's own CPU launcher does (``python -m torch.backends.xeon.run_cpu``: LD_PRELOAD
of libiomp5 and tcmalloc, ``KMP_BLOCKTIME=1``); that launcher also pins cores and finds tcmalloc only as an
unversioned ``libtcmalloc.so``, so the compute subcommands of ``minitron`` do the preload themselves: they
re-run themselves once with the libraries in ``LD_PRELOAD`` (a library can only be preloaded at process
start).

* Intel OpenMP comes from the ``intel-openmp`` wheel (``requirements/cpu-runtime.txt``, installed by
  ``make setup``) as ``<venv>/lib/libiomp5.so``.
* tcmalloc is a system library (Debian/Ubuntu: ``apt install libtcmalloc-minimal4``); used when found.
* ``MINITRON_CPU_RUNTIME=default`` keeps PyTorch's own (libgomp, glibc malloc). Nothing changes on
  GPU hosts, on macOS, or where neither library is installed.

Child processes (torchrun ranks, stage subprocesses) inherit the environment, so they run the same way.
What a process runs with is recorded (`active`) in every stage summary and the report.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import sys
from pathlib import Path

#: MINITRON_CPU_RUNTIME values: "auto" (the default) preloads what is found; "default" keeps PyTorch's own.
CHOICES = ("auto", "default")
_INTEL_OMP, _TCMALLOC = "libiomp5.so", ("tcmalloc_minimal", "tcmalloc")
#: What `tuned_environment` sets (the user's own KMP_BLOCKTIME / report threshold win where given).
_SET = ("LD_PRELOAD", "KMP_BLOCKTIME", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD")


def _intel_openmp() -> str | None:
    """libiomp5.so of the `intel-openmp` wheel in this environment (pip installs it under <prefix>/lib)."""
    for prefix in dict.fromkeys([sys.prefix, os.environ.get("VIRTUAL_ENV"), os.environ.get("CONDA_PREFIX")]):
        if prefix and (Path(prefix) / "lib" / _INTEL_OMP).is_file():
            return str(Path(prefix) / "lib" / _INTEL_OMP)
    return None


def _tcmalloc() -> str | None:
    """tcmalloc's soname as the dynamic loader finds it (ldconfig), e.g. libtcmalloc_minimal.so.4."""
    for name in _TCMALLOC:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def _gpu_host() -> bool:
    """An NVIDIA driver is present: leave the (NGC) container's runtime as it is; GPUs do the compute there."""
    return Path("/dev/nvidiactl").exists()


def tuned_environment(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-run a CPU compute command in, or None when there is nothing to change."""
    choice = environ.get("MINITRON_CPU_RUNTIME", "auto")
    if choice not in CHOICES:
        raise SystemExit(f"error: MINITRON_CPU_RUNTIME={choice!r}: use one of {list(CHOICES)}")
    preloaded = environ.get("LD_PRELOAD", "")
    if choice == "default" or platform.system() != "Linux" or _INTEL_OMP in preloaded or _gpu_host():
        return None
    tcmalloc = _tcmalloc()  # asks ldconfig: once
    libs = [lib for lib in (tcmalloc, _intel_openmp()) if lib and lib not in preloaded]
    if not libs:
        return None
    env = dict(environ, LD_PRELOAD=":".join([*libs, *filter(None, [preloaded])]))
    # Threads sleep 1 ms after their last task (Intel's default is 200 ms of spinning), as run_cpu sets it:
    # the serial Python between kernels then leaves the cores to the one thread that has work.
    env.setdefault("KMP_BLOCKTIME", "1")
    if tcmalloc in libs:  # tcmalloc reports every allocation over 1 GB on stderr (a Llama embedding is one)
        env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(2 ** 40))
    return env


def pytorch_defaults(environ: dict[str, str]) -> dict[str, str]:
    """`environ` for a process that must run with PyTorch's own runtime (libgomp, glibc malloc)."""
    return {**{k: v for k, v in environ.items() if k not in _SET}, "MINITRON_CPU_RUNTIME": "default"}


def use_tuned_runtime() -> None:
    """Re-run this process under Intel OpenMP / tcmalloc when they are installed and not active yet.

    Call it first thing in a command's entry point (it replaces the process; it returns only when
    there is nothing to change). Not for library code: an in-process caller (a test) would be replaced.
    """
    env = tuned_environment(dict(os.environ))
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def active() -> dict:
    """The OpenMP runtime and allocator this process runs with (from its loaded libraries)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return {"openmp": "unknown", "allocator": "unknown"}
    openmp = "intel (libiomp5)" if _INTEL_OMP in maps else "gnu (libgomp)" if "libgomp" in maps else "unknown"
    allocator = "tcmalloc" if "libtcmalloc" in maps else "glibc malloc" if platform.libc_ver()[0] == "glibc" \
        else "system"
    return {"openmp": openmp, "allocator": allocator}
