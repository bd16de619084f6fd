"""Which precision to compute in, chosen from the hardware: ``auto`` = bf16 where it is native, else fp32.

GPUs compute bf16 natively. CPUs differ by orders of magnitude between kinds: with AVX512-BF16 or AMX
(Sapphire Rapids, Zen 4 and later) or Arm's BF16 extension a bf16 matmul is faster than fp32, while on
AVX2-only CPUs PyTorch emulates it, hundreds of times slower (docs/cpu.md). So no recipe hard-codes a
CPU precision: they say ``auto``, and this module decides from what PyTorch reports about the CPU and,
where that says nothing, a short probe.

An explicit ``bf16`` on a CPU without native bf16 is obeyed, with one warning that gives the probed
slowdown. The choice and its reason go into every stage summary and the report (`describe`).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from minitron.errors import MinitronError
from minitron.runtime import cpu_runtime

#: What a config may say, and what each means. Dtype names are accepted where configs used them before.
ALIASES = {"auto": "auto", "bf16": "bf16", "bfloat16": "bf16", "fp32": "fp32", "float32": "fp32"}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Precision:
    name: str          # "bf16" or "fp32"
    requested: str     # what the config said
    reason: str        # why, in words (printed once, recorded in summaries)

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.name]

    def to_dict(self) -> dict:
        return {"precision": self.name, "requested": self.requested, "reason": self.reason, **hardware()}


def check(value: str, key: str) -> list[str]:
    """Config-check problems of a precision value (one line, listing the allowed values)."""
    return [] if value in ALIASES else [f"{key}={value!r} must be one of {sorted(ALIASES)}"]


def resolve(requested: str, device: torch.device | str | None = None) -> Precision:
    """The precision to use for `requested` (auto|bf16|fp32 or the dtype names) on `device`."""
    if requested not in ALIASES:
        raise MinitronError(f"precision {requested!r}: use one of {sorted(ALIASES)}")
    wanted = ALIASES[requested]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cpu":
        name = "bf16" if wanted == "auto" else wanted
        return _announce(Precision(name, requested, f"{device.type}: bf16 is native" if wanted == "auto"
                                   else f"asked for {name}"))
    native, why = cpu_bf16_native()
    if wanted == "auto":
        return _announce(Precision("bf16" if native else "fp32", requested, why))
    if wanted == "bf16" and not native:
        _warn_slow_bf16(why)
    return _announce(Precision(wanted, requested, f"asked for {wanted}; {why}"))


def fp32_on_cpu(requested: str, device: torch.device | str | None = None) -> bool:
    """Does `requested` compute in fp32 on a CPU here? (A recipe's `cpu_budget` applies where it does.)"""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device.type == "cpu" and resolve(requested, device).name == "fp32"


@functools.lru_cache(maxsize=None)
def cpu_bf16_native() -> tuple[bool, str]:
    """(does this CPU compute bf16 natively?, why we think so)."""
    cap = torch.backends.cpu.get_cpu_capability()
    limited = _isa_limit(cap)
    if limited:
        return False, limited
    if torch.cpu._is_amx_tile_supported():
        return True, f"CPU has AMX ({cap}): native bf16"
    if torch.cpu._is_avx512_bf16_supported():
        return True, f"CPU has AVX512-BF16 ({cap}): native bf16"
    if platform.machine() in ("aarch64", "arm64") and "bf16" in _cpu_flags():
        return True, f"Arm CPU with the BF16 extension ({cap}): native bf16"
    if platform.machine() in ("x86_64", "AMD64"):
        return False, f"CPU capability {cap}, no AVX512-BF16 or AMX: bf16 is emulated"
    ratio = bf16_slowdown()  # an unknown kind of CPU: measure
    return ratio < 1.5, f"CPU capability {cap}: bf16 matmul measured {ratio:.1f}x the fp32 time"


#: oneDNN ISA limits (DNNL_MAX_CPU_ISA / ONEDNN_MAX_CPU_ISA) below its first bf16 instructions.
_ONEDNN_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


def _isa_limit(cap: str) -> str:
    """Why bf16 is emulated although the CPU may have it: the process was told to stay below it.

    `make demo CPU=avx2` sets these on a newer CPU to run the AVX2-only path (oneDNN computes bf16
    matmuls, PyTorch's own kernels the rest); a user may set them for the same reason.
    """
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = os.environ.get(var, "").upper()
        if isa in _ONEDNN_WITHOUT_BF16:
            return f"{var}={isa} keeps oneDNN off the CPU's bf16 instructions: bf16 is emulated"
    if platform.machine() in ("x86_64", "AMD64") and not cap.startswith("AVX512"):
        # every x86 CPU with AVX512-BF16 or AMX reports AVX512 unless ATEN_CPU_CAPABILITY lowers it
        return f"CPU capability {cap}: PyTorch runs without AVX512, so bf16 is emulated"
    return ""


@functools.lru_cache(maxsize=None)
def bf16_slowdown(n: int = 256, repeats: int = 3) -> float:
    """bf16 matmul time / fp32 matmul time on this CPU (best of `repeats`, n x n x n)."""
    def best(dtype):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up (and oneDNN's kernel choice)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.bfloat16) / best(torch.float32)


def hardware() -> dict:
    """What the report says about the machine: CPU capability, cores, GPU, OpenMP runtime and allocator."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, **cpu_runtime.active()}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.lower().startswith(("flags", "features"))
            for f in line.split(":", 1)[1].split()}


_announced: set[tuple[str, str]] = set()


def _announce(choice: Precision) -> Precision:
    key = (choice.requested, choice.name)
    if key not in _announced:  # once per process and request, not on every model load
        _announced.add(key)
        # stderr: several commands print a JSON summary on stdout
        print(f"[precision] {choice.requested} -> {choice.name} ({choice.reason})", file=sys.stderr, flush=True)
    return choice


@functools.lru_cache(maxsize=None)
def _warn_slow_bf16(why: str) -> None:
    warnings.warn(f"bf16 on this CPU is slow ({why}; bf16 matmul measured {bf16_slowdown():.0f}x the fp32 "
                  "time): precision auto would choose fp32", stacklevel=3)
