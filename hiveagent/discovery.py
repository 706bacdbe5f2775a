"""Finding the VMs on this host, rescanned every cycle.

Spinifex layout: `<run_dir>/qmp-telemetry-<instance-id>.json` sidecars naming the telemetry QMP
socket. Generic layout: QMP sockets matched by a glob, the instance id taken from the path by a
regex, the guest agent socket from an optional template. A sidecar is parsed again only when its
(inode, size, mtime) changes.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from typing import Any

from hiveagent.config import Config
from hiveagent.model import VmSpec

log = logging.getLogger(__name__)

SIDECAR_RE = re.compile(r"^qmp-telemetry-(?P<id>[^/]+)\.json$")
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TAP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
ACCOUNT_ID_RE = re.compile(r"^[0-9]{12}$")
MAX_SIDECAR_BYTES = 65536


class SidecarError(ValueError):
    pass


def _field(obj: dict[str, Any], key: str, kind: type, where: str, required: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if required:
            raise SidecarError(f"{where}: missing {key!r}")
        return None
    value = obj[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SidecarError(f"{where}: {key!r} must be an integer")
    if not isinstance(value, kind):
        raise SidecarError(f"{where}: {key!r} must be {kind.__name__}")
    return value


METADATA_FIELDS = ("image_id", "instance_type", "autoscaling_group")


def parse_sidecar(data: bytes, path: str) -> VmSpec:
    """Validate a Spinifex sidecar's fields one by one."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SidecarError(f"{path}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SidecarError(f"{path}: not a JSON object")
    instance_id = _field(obj, "instance_id", str, path, required=True)
    if not INSTANCE_ID_RE.match(instance_id):
        raise SidecarError(f"{path}: bad instance_id {instance_id!r}")
    m = SIDECAR_RE.match(os.path.basename(path))
    if m and m.group("id") != instance_id:
        raise SidecarError(f"{path}: instance_id {instance_id!r} does not match the file name")
    run_dir = os.path.dirname(path)
    qmp = _field(obj, "socket", str, path) or f"qmp-telemetry-{instance_id}.sock"
    qga = _field(obj, "qga_socket", str, path)
    vcpus = _field(obj, "vcpus", int, path)
    if vcpus is not None and not 1 <= vcpus <= 4096:
        raise SidecarError(f"{path}: vcpus out of range: {vcpus}")
    period = _field(obj, "period_seconds", int, path)
    if period is not None and period not in (60, 300):
        raise SidecarError(f"{path}: period_seconds must be 60 or 300, got {period}")
    taps_raw = _field(obj, "taps", list, path)
    taps = None
    if taps_raw is not None:
        if not all(isinstance(t, str) and TAP_RE.match(t) for t in taps_raw):
            raise SidecarError(f"{path}: taps must be interface names (<= 15 characters)")
        # The management tap (mg...) is not instance traffic.
        taps = tuple(t for t in taps_raw if not t.startswith("mg"))
    account = _field(obj, "account_id", str, path)
    if account is not None and not ACCOUNT_ID_RE.match(account):
        raise SidecarError(f"{path}: account_id must be 12 digits, got {account!r}")
    meta = {k: _field(obj, k, str, path) for k in METADATA_FIELDS}
    return VmSpec(
        instance_id=instance_id,
        qmp_socket=os.path.join(run_dir, qmp),
        qga_socket=os.path.join(run_dir, qga) if qga else None,
        vcpus=vcpus,
        taps=taps,
        period_s=period,
        account_id=account,
        origin=path,
        all_volumes=True,  # Spinifex attaches volumes only: even the boot drive (`os`) is one
        image_id=meta["image_id"],
        instance_type=meta["instance_type"],
        autoscaling_group=meta["autoscaling_group"],
    )


class Discovery:
    """Finds VMs; keeps parsed sidecars keyed by their stat identity."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._sidecars: dict[str, tuple[tuple[int, int, int], VmSpec | SidecarError]] = {}

    def scan(self) -> tuple[list[VmSpec], list[str]]:
        """All VMs found now, and the problems met (one message each)."""
        specs: dict[str, VmSpec] = {}
        problems: list[str] = []
        if self.config.spinifex_run_dir:
            for spec_or_error in self._scan_spinifex(self.config.spinifex_run_dir):
                if isinstance(spec_or_error, SidecarError):
                    problems.append(str(spec_or_error))
                else:
                    specs.setdefault(spec_or_error.instance_id, spec_or_error)
        for g in self.config.generic:
            for path in sorted(glob.glob(g.qmp_glob)):
                m = g.instance_id_regex.search(path)
                if not m:
                    continue
                instance_id = m.group("instance_id")
                if not INSTANCE_ID_RE.match(instance_id):
                    problems.append(f"{path}: bad instance id {instance_id!r}")
                    continue
                qga = (
                    g.qga_socket.format(instance_id=instance_id, qmp_dir=os.path.dirname(path))
                    if g.qga_socket
                    else None
                )
                account = m.groupdict().get("account_id")  # (?P<account_id>...) if any
                if account is not None and not ACCOUNT_ID_RE.match(account):
                    problems.append(f"{path}: bad account id {account!r}; taken as none")
                    account = None
                specs.setdefault(
                    instance_id,
                    VmSpec(instance_id, path, qga, g.vcpus, None, None, account, g.qmp_glob),
                )
        return sorted(specs.values(), key=lambda s: s.instance_id), problems

    def _scan_spinifex(self, run_dir: str) -> list[VmSpec | SidecarError]:
        out: list[VmSpec | SidecarError] = []
        seen = set()
        try:
            entries = list(os.scandir(run_dir))
        except FileNotFoundError:
            return out
        except OSError as exc:
            return [SidecarError(f"{run_dir}: cannot list: {exc.strerror}")]
        for entry in entries:
            if not SIDECAR_RE.match(entry.name):
                continue
            seen.add(entry.path)
            try:
                st = entry.stat()
            except OSError:
                continue  # removed while scanning: the VM stopped
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._sidecars.get(entry.path)
            if cached is None or cached[0] != key:
                cached = (key, self._load_sidecar(entry.path))
                self._sidecars[entry.path] = cached
            out.append(cached[1])
        for gone in set(self._sidecars) - seen:
            del self._sidecars[gone]
        return out

    @staticmethod
    def _load_sidecar(path: str) -> VmSpec | SidecarError:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SIDECAR_BYTES + 1)
        except OSError as exc:
            return SidecarError(f"{path}: cannot read: {exc.strerror}")
        if len(data) > MAX_SIDECAR_BYTES:
            return SidecarError(f"{path}: larger than {MAX_SIDECAR_BYTES} bytes")
        try:
            return parse_sidecar(data, path)
        except SidecarError as exc:
            return exc
