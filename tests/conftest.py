from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "tests" / "data"
RECORDED = DATA / "qemu-7.2"

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def recorded(name: str) -> Any:
    """The `return` value of a recorded real reply."""
    return json.loads((RECORDED / f"{name}.json").read_text())["return"]


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.harness import Harness

    with Harness(tmp_path_factory.mktemp("harness")) as h:
        yield h


@pytest.fixture(scope="session")
def moto_url(harness: Any) -> str:
    return str(harness.start_moto())
