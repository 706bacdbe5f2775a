"""The balloon through QMP on a real QEMU: found without knowing its id, its polling interval
turned on only when the operator allows it and the VM has none, and no data before the guest
reports (a guest-less QEMU never does)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hiveagent.config import parse_config
from hiveagent.model import Datum
from tests.harness import Collection, Harness

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("allowed", [True, False])
def test_balloon_polling_interval(tmp_path: Path, allowed: bool) -> None:
    with Harness(tmp_path) as h:
        off = h.launch_vm(61, boot_guest=False, volumes=((8, False),), balloon_poll_s=0)
        on = h.launch_vm(62, boot_guest=False, volumes=((8, False),), balloon_poll_s=3)
        hyper: dict[str, object] = {
            "discovery": {"spinifex": {"run_dir": str(h.run_dir)}},
            "qga": {"enabled": False},
            "state_dir": str(tmp_path / "s"),
        }
        if allowed:
            hyper["balloon"] = {"set_polling_interval_seconds": 7}
        config = parse_config({"metrics": {"metrics_collected": {"mem": {}}}, "hypervisor": hyper})
        agent = Collection(config)

        async def run() -> tuple[list[Datum], dict[str, object]]:
            datums = await agent.cycle()
            got = {}
            for vm in (off, on):
                got[vm.instance_id] = await agent.vms[vm.instance_id].session.qmp.execute(
                    "qom-get",
                    {"path": "/machine/peripheral/balloon0",
                     "property": "guest-stats-polling-interval"},
                )  # fmt: skip
            await agent.close()
            return datums, got

        datums, got = asyncio.run(run())
    assert got[off.instance_id] == (7 if allowed else 0)
    assert got[on.instance_id] == 3  # the VM's own setting is never changed
    # No guest driver ever reported: last-update 0, so no mem_* at all.
    assert not [d for d in datums if d.name.startswith("mem_")]
