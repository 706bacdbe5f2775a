"""The stages' import direction (README, Layout): a datum travels one way, and each stage knows
only the stages before it. Read from the source with ast, imports inside functions and under
TYPE_CHECKING included."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("hiveagent", "collectors", "qga")
PROTOCOLS = {"hiveagent.qmp", "hiveagent.qom", "qga", "qga.client"}
DELIVERY = {"hiveagent.spool", "hiveagent.publisher", "hiveagent.wire", "hiveagent.ledger"}
SESSION = {"hiveagent.vm"}
SCHEDULER = {"hiveagent.scheduler", "hiveagent.discovery"}
PIPELINE = {"hiveagent.pipeline", "hiveagent.shaping", "hiveagent.monitoring"}
FRONT = {"hiveagent.daemon", "hiveagent.cli", "hiveagent.observe", "hiveagent.status_server"}
COLLECTOR_FRAMEWORK = {"hiveagent.collector"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports (`from pkg import mod` counted as pkg.mod)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    modules = {module_name(p) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {n for n in names if n in modules}


def all_imports() -> dict[str, set[str]]:
    return {
        module_name(p): project_imports(p) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
    }


def is_collector(module: str) -> bool:
    return module.startswith("collectors")


# module predicate -> the modules it must never import, and why
RULES: list[tuple[str, Callable[[str], bool], set[str]]] = [
    (
        "collectors never import the scheduler, the VM session, the pipeline or delivery",
        is_collector,
        SCHEDULER | SESSION | PIPELINE | DELIVERY | FRONT,
    ),
    (
        "delivery never imports collectors, their framework, the session or the pipeline",
        lambda m: m in DELIVERY,
        COLLECTOR_FRAMEWORK | SESSION | SCHEDULER | PIPELINE | FRONT | {"collectors"},
    ),
    (
        "the VM session knows no collector, nor what comes after it",
        lambda m: m in SESSION,
        COLLECTOR_FRAMEWORK | SCHEDULER | PIPELINE | DELIVERY | FRONT | {"collectors"},
    ),
    (
        "the scheduler hands raw datums on: it knows neither the pipeline nor delivery",
        lambda m: m in SCHEDULER,
        PIPELINE | DELIVERY | FRONT,
    ),
    (
        "the pipeline knows neither collectors, the scheduler, the session nor delivery",
        lambda m: m in PIPELINE,
        COLLECTOR_FRAMEWORK | SCHEDULER | SESSION | DELIVERY | FRONT | {"collectors"},
    ),
]


@pytest.mark.parametrize("rule", [r[0] for r in RULES])
def test_import_direction(rule: str) -> None:
    _, applies, forbidden = next(r for r in RULES if r[0] == rule)
    imports = all_imports()
    bad = {
        m: sorted(
            i for i in found if i in forbidden or any(i.startswith(f + ".") for f in forbidden)
        )
        for m, found in imports.items()
        if applies(m)
    }
    assert not {m: v for m, v in bad.items() if v}


def test_protocols_import_nothing_of_the_agents() -> None:
    """The QMP session, the QOM lookups and the guest agent client import only each other."""
    imports = all_imports()
    for module in PROTOCOLS & set(imports):
        assert imports[module] <= PROTOCOLS, (module, imports[module] - PROTOCOLS)


def test_rules_see_real_imports() -> None:
    """The checker itself: it finds imports that exist (so the rules above can fail)."""
    imports = all_imports()
    assert "collectors" in imports["hiveagent.scheduler"]
    assert "hiveagent.collector" in imports["collectors.guest_cpu"]
    assert "hiveagent.qmp" in imports["hiveagent.qom"]
    assert "hiveagent.observe" not in imports["collectors.status"]
    assert {"hiveagent.scheduler", "hiveagent.pipeline"} <= imports["hiveagent.daemon"]
