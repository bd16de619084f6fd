"""The README and docs/ cannot drift from the code: every `make` and `minitron` command line they show runs
through `make -n` or the `minitron` parser, and the README's test command is the one CI runs."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks(path) -> list[str]:
    """The command lines of a Markdown file's ```bash blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value before the command
                words.pop(0)
            if words:
                commands.append(words)
    return commands


def documented(program: str) -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCUMENTS:
        for words in shell_blocks(path):
            if words[0] == program:
                found.append((path.name, words[1:]))
            elif program == "minitron" and "minitron.cli" in words:  # torchrun ... -m minitron.cli <command>
                found.append((path.name, words[words.index("minitron.cli") + 1:]))
    return found


def test_the_documents_show_commands():
    assert len(documented("make")) >= 10 and len(documented("minitron")) >= 15
    readme = (REPO / "README.md").read_text().splitlines()
    first_screen = "\n".join(readme[:40])
    assert "make demo" in first_screen and "make test" in first_screen


@pytest.mark.parametrize("where, args", documented("minitron"), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_documented_minitron_command_parses(where, args):
    from minitron.cli import parser

    try:
        parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{where}: `minitron {' '.join(args)}` does not parse ({e})")


def test_every_documented_make_command_exists():
    failures = []
    for where, args in documented("make"):
        proc = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=REPO, timeout=120)
        if proc.returncode:
            failures.append(f"{where}: make {' '.join(args)}: {proc.stderr.strip()[-300:]}")
    assert failures == []


def test_the_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M)
    assert ["test"] in [args for where, args in documented("make") if where == "README.md"]


def test_make_help_lists_every_target_and_phony_names_only_targets():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z0-9-]+):(?!=)", makefile, re.M))
    documented_targets = set(re.findall(r"^([a-z0-9-]+):.*## ", makefile, re.M))
    assert targets == documented_targets, f"targets without a ## help comment: {targets - documented_targets}"
    phony = set(re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ").split())
    assert phony == targets
    help_text = subprocess.run(["make", "help"], capture_output=True, text=True, cwd=REPO).stdout
    assert all(f"make {t} " in help_text for t in targets)
