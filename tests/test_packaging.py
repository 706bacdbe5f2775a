"""The deb and rpm, built by packaging/build.sh; the deb installed, upgraded, removed and purged
on this machine (root only); the rpm inspected and installed into a scratch root; the unit
verified with systemd-analyze."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

from hiveagent import __version__ as VERSION

ROOT = os.geteuid() == 0
DEB = REPO / "dist" / f"hiveagent_{VERSION}_amd64.deb"
RPM = REPO / "dist" / f"hiveagent-{VERSION}-1.x86_64.rpm"
LEFTOVERS = (
    "/usr/bin/hiveagent",
    "/opt/hiveagent",
    "/etc/hiveagent",
    "/var/lib/hiveagent",
    "/usr/lib/systemd/system/hiveagent.service",
)


def run(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]


@pytest.fixture(scope="module")
def packages() -> Iterator[None]:
    if not shutil.which("rpmbuild"):
        pytest.skip("rpmbuild missing (apt install rpm)")
    r = run("bash", "packaging/build.sh", "all", cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    assert DEB.exists() and RPM.exists()
    yield


def test_deb_contents_and_metadata(packages: None) -> None:
    info = run("dpkg-deb", "-I", str(DEB)).stdout
    assert "Depends: python3.11, adduser" in info
    assert run("dpkg-deb", "-f", str(DEB), "Version").stdout.strip() == VERSION
    files = run("dpkg-deb", "-c", str(DEB)).stdout
    for path in (
        "./usr/bin/hiveagent",
        "./usr/lib/systemd/system/hiveagent.service",
        "./etc/hiveagent/agent.json",
        "./opt/hiveagent/lib/hiveagent/cli.py",
        "./opt/hiveagent/lib/botocore/",
        "./opt/hiveagent/lib/aiohttp/",
    ):
        assert path in files, path
    conffiles = run("dpkg-deb", "--info", str(DEB), "conffiles").stdout
    assert conffiles.strip() == "/etc/hiveagent/agent.json"


@pytest.mark.skipif(not ROOT or not shutil.which("dpkg"), reason="installing a deb needs root")
def test_deb_install_upgrade_remove_purge(packages: None) -> None:
    if run("dpkg", "-s", "hiveagent").returncode == 0:
        pytest.skip("hiveagent is installed on this machine; not touching it")
    try:
        r = run("dpkg", "-i", str(DEB))
        assert r.returncode == 0, r.stderr
        assert run("hiveagent", "--version").stdout.strip() == f"hiveagent {VERSION}"
        # As the service user: the config is readable through the group, and valid.
        r = run(
            "runuser",
            "-u",
            "hiveagent",
            "--",
            "hiveagent",
            "check-config",
            "-c",
            "/etc/hiveagent/agent.json",
        )
        assert r.returncode == 0 and "agent.json: OK" in r.stdout, r.stderr
        st = os.stat("/var/lib/hiveagent")
        assert oct(st.st_mode & 0o777) == "0o750"
        assert run("stat", "-c", "%U", "/var/lib/hiveagent").stdout.strip() == "hiveagent"
        # The installed unit verifies (ExecStart exists now).
        r = run("systemd-analyze", "verify", "/usr/lib/systemd/system/hiveagent.service")
        assert r.returncode == 0, r.stderr
        # An operator's edit of the conffile survives an upgrade (a reinstall here).
        conf = Path("/etc/hiveagent/agent.json")
        edited = conf.read_text().replace(
            '"metrics_collection_interval": 60', '"metrics_collection_interval": 30'
        )
        conf.write_text(edited)
        r = run("dpkg", "-i", "--force-confold", str(DEB))
        assert r.returncode == 0, r.stderr
        assert conf.read_text() == edited
        # Remove: the program goes, config and state stay.
        assert run("dpkg", "-r", "hiveagent").returncode == 0
        assert not Path("/usr/bin/hiveagent").exists() and not Path("/opt/hiveagent").exists()
        assert conf.exists() and Path("/var/lib/hiveagent").is_dir()
        # Purge: nothing is left behind, not even the user.
        assert run("dpkg", "-P", "hiveagent").returncode == 0
        assert [p for p in LEFTOVERS if Path(p).exists()] == []
        assert run("getent", "passwd", "hiveagent").returncode == 2
        assert run("getent", "group", "hiveagent").returncode == 2
    finally:
        run("dpkg", "-P", "hiveagent")


def test_rpm_metadata_and_scripts(packages: None) -> None:
    files = run("rpm", "-qpl", str(RPM)).stdout.splitlines()
    for path in (
        "/usr/bin/hiveagent",
        "/usr/lib/systemd/system/hiveagent.service",
        "/etc/hiveagent/agent.json",
        "/var/lib/hiveagent",
        "/opt/hiveagent/lib/hiveagent/cli.py",
    ):
        assert path in files, path
    requires = run("rpm", "-qp", "--requires", str(RPM)).stdout
    assert "python3.11" in requires
    scripts = run("rpm", "-qp", "--scripts", str(RPM)).stdout
    assert "useradd -r -g hiveagent" in scripts
    assert "disable --now hiveagent.service" in scripts  # stopped on removal
    config = run("rpm", "-qpc", str(RPM)).stdout.split()
    assert config == ["/etc/hiveagent/agent.json"]
    dump = run("rpm", "-qp", "--dump", str(RPM)).stdout
    [state] = [ln for ln in dump.splitlines() if ln.startswith("/var/lib/hiveagent ")]
    assert " hiveagent hiveagent " in state


def test_rpm_installs_into_a_scratch_root_and_runs(packages: None, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run("rpm", "--root", str(root), "--initdb").returncode == 0
    r = run("rpm", "--root", str(root), "-i", "--nodeps", "--noscripts", str(RPM))
    assert r.returncode == 0, r.stderr
    assert (root / "usr/lib/systemd/system/hiveagent.service").exists()
    # The installed payload works with this machine's python3.11.
    r = run(
        "/usr/bin/python3.11",
        "-s",
        "-B",
        "-m",
        "hiveagent",
        "check-config",
        "-c",
        str(root / "etc/hiveagent/agent.json"),
        env={"PYTHONPATH": str(root / "opt/hiveagent/lib"), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0 and "agent.json: OK" in r.stdout, r.stderr
    assert run("rpm", "--root", str(root), "-q", "hiveagent").stdout.strip() == (
        f"hiveagent-{VERSION}-1.x86_64"
    )


def test_unit_file_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = (REPO / "packaging/hiveagent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=hiveagent",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=hiveagent",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
    ):
        assert line in unit, line
    # systemd-analyze verify checks ExecStart= exists: point a copy at a stand-in binary.
    fake = tmp_path / "hiveagent"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    copy = tmp_path / "hiveagent.service"
    copy.write_text(unit.replace("/usr/bin/hiveagent", str(fake)))
    r = run("systemd-analyze", "verify", str(copy))
    assert r.returncode == 0, r.stderr
    r = run("systemd-analyze", "security", "--offline=true", str(copy))
    exposure = [ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln]
    print(exposure)
    assert exposure and float(exposure[0].split("level for hiveagent.service:")[1].split()[0]) < 3
