"""Config examples: every valid one loads; every invalid one exits 2 through the real CLI with
its expected text (which names the JSON path) and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from hiveagent.config import ConfigError, load_config

CONFIGS = REPO / "tests" / "configs"
INVALID = sorted((CONFIGS / "invalid").glob("*.json"))


@pytest.mark.parametrize(
    "path", [*sorted((CONFIGS / "valid").glob("*.json")), REPO / "agent.json"], ids=lambda p: p.name
)
def test_valid_configs_load(path: Path) -> None:
    load_config(path)


def test_defaults_and_values() -> None:
    minimal = load_config(CONFIGS / "valid" / "minimal.json")
    assert (
        minimal.interval_s,
        minimal.guest_namespace,
        minimal.ec2_namespace,
        minimal.ebs_namespace,
    ) == (60, "CWAgent", "Hive/EC2", "Hive/EBS")
    assert minimal.spinifex_run_dir == "/run/spinifex" and minimal.disk is None
    generic = load_config(CONFIGS / "valid" / "generic-host.json")
    assert generic.spinifex_run_dir is None
    [g] = generic.generic
    m = g.instance_id_regex.search("/var/lib/libvirt/qemu/web-1.monitor")
    assert m is not None and m.group("instance_id") == "web-1"
    assert generic.disk is not None and generic.disk.metrics == ("disk_used_percent",)
    assert generic.disk.drop_device and generic.qga_max_reply_bytes == 262144
    assert generic.with_run_dir("/tmp/x").spinifex_run_dir == "/tmp/x"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_configs_rejected(path: Path) -> None:
    expected = path.with_suffix(".expected").read_text().strip()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)


@pytest.mark.parametrize("path", INVALID[:4], ids=lambda p: p.stem)
@pytest.mark.parametrize("command", ["check-config", "run", "list-vms"])
def test_cli_exit_code_2_without_traceback(path: Path, command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hiveagent", command, "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert path.with_suffix(".expected").read_text().strip() in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_missing_file_is_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hiveagent", "check-config", "-c", "/nonexistent.json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "/nonexistent.json: no such file" in proc.stderr


def test_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hiveagent", "--version"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0 and proc.stdout.startswith("hiveagent 0.")
