"""The whole tree, tests included, is mypy --strict and ruff clean (pyproject.toml holds both
configurations): a CI run fails on a type error or a lint finding like on a failing test."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.parametrize(
    "command",
    [
        ["mypy", "--no-incremental"],
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
    ],
    ids=["mypy", "ruff-check", "ruff-format"],
)
def test_static_checks(command: list[str]) -> None:
    tool = [sys.executable, "-m", *command]
    r = subprocess.run(tool, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
