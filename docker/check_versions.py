"""Fail an image build whose packages are older than this project's floors (pyproject.toml).

    python docker/check_versions.py train     # NeMo image: torch, megatron-core, Model Optimizer, transformers
    python docker/check_versions.py deploy    # TensorRT-LLM image: tensorrt_llm 1.2.x

The base images' own pins decide what is installed (installing with --no-deps over them keeps their CUDA
builds); this check turns a too-old base into a build error naming the package, instead of a runtime error
on a cluster days later.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TRAIN = ("torch", "megatron-core", "nvidia-modelopt", "transformers")
DEPLOY = ("tensorrt_llm>=1.2,<1.3",)


def requirements(profile: str, pyproject: Path = PYPROJECT) -> list[Requirement]:
    if profile == "deploy":
        return [Requirement(r) for r in DEPLOY]
    declared = {Requirement(r).name: Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]}
    return [declared[name] for name in TRAIN]


def problems(reqs: list[Requirement], installed: dict[str, str | None]) -> list[str]:
    """One line per requirement the installed versions miss (pre-releases of a floor's version count)."""
    out = []
    for req in reqs:
        have = installed.get(req.name)
        if have is None:
            out.append(f"{req.name} is not installed (need {req.specifier})")
        elif not req.specifier.contains(Version(have), prereleases=True):
            out.append(f"{req.name} {have} does not satisfy {req.specifier}: pick a newer base image or pip "
                       f"install a pinned {req.name} in the Dockerfile")
    return out


def installed_versions(names) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("train", "deploy"):
        print("usage: check_versions.py train|deploy", file=sys.stderr)
        return 2
    reqs = requirements(argv[0])
    found = installed_versions(r.name for r in reqs)
    bad = problems(reqs, found)
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    if not bad:
        print("ok: " + ", ".join(f"{name} {version}" for name, version in found.items()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
