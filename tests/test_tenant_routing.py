"""Routing by account (issue 17), below the daemon: what a reload does to an account's
publisher, and where held datums go once the operator picks `default_credentials`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hiveagent.accounts import (
    DEFAULT,
    UNASSIGNED,
    client_settings,
    configure_tenant,
    open_tenant,
)
from hiveagent.config import Config, parse_config
from hiveagent.model import Datum
from tests.strict_endpoint import StrictEndpoint

ACCOUNT = "111111111111"


def config(tmp_path: Path, endpoint: str, **accounts: Any) -> Config:
    return parse_config(
        {
            "agent": {"region": "us-east-1"},
            "metrics": {"endpoint_override": endpoint},
            "hypervisor": {"state_dir": str(tmp_path), "accounts": accounts},
        }
    )


def datums(n: int) -> list[Datum]:
    now = time.time()
    return [
        Datum(
            "Hive/EC2", "CPUUtilization", (("InstanceId", f"i-{k:017x}"),), 1.0, "Percent", now, 60
        )
        for k in range(n)
    ]


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Static keys for the default chain, and two profiles in a shared credentials file."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADEFAULT000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "default-secret")
    shared = tmp_path / "credentials"
    shared.write_text(
        "[tenant-a]\naws_access_key_id = AKIATENANTA000000001\naws_secret_access_key = a\n"
        "[tenant-b]\naws_access_key_id = AKIATENANTB000000001\naws_secret_access_key = b\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


def test_a_reload_that_changes_an_accounts_credentials_keeps_its_publisher(tmp_path: Path) -> None:
    """A profile mended by a reload: the account's publisher (the one its sender task flushes)
    sends its next request with the new keys, its client swapped, and its figures go on
    counting."""
    with StrictEndpoint("aws") as endpoint:
        wrong = config(tmp_path, endpoint.url, profiles={ACCOUNT: "tenant-b"})
        tenant = open_tenant(wrong, ACCOUNT)
        publisher = tenant.publisher
        assert publisher is not None
        tenant.spool.add(datums(5))
        assert asyncio.run(publisher.flush())
        configure_tenant(tenant, config(tmp_path, endpoint.url, profiles={ACCOUNT: "tenant-a"}))
        assert tenant.publisher is publisher
        tenant.spool.add(datums(3))
        assert asyncio.run(publisher.flush())
        assert [r.access_key for r in endpoint.requests] == [
            "AKIATENANTB000000001",
            "AKIATENANTA000000001",
        ]
        assert publisher.stats["datums_sent"] == 8


def test_an_account_held_by_a_reload_sends_nothing_more(tmp_path: Path) -> None:
    """A reload that takes an account's credentials away: its old publisher (a sender task may
    still hold it) starts no request from then on; the datums wait in the spool."""
    with StrictEndpoint("aws") as endpoint:
        tenant = open_tenant(
            config(tmp_path, endpoint.url, profiles={ACCOUNT: "tenant-a"}), ACCOUNT
        )
        old = tenant.publisher
        assert old is not None
        tenant.spool.add(datums(4))
        configure_tenant(
            tenant, config(tmp_path, endpoint.url, profiles={"222222222222": "tenant-b"})
        )
        assert tenant.publisher is None and tenant.held
        assert not asyncio.run(old.flush())
        assert endpoint.requests == []
        assert tenant.spool.pending_datums == 4


def test_default_credentials_take_what_was_held(tmp_path: Path) -> None:
    """`unrouted: default_credentials`: the routes of VMs with no account, and of accounts with
    no credentials, get the agent's own client, so their spools held before the operator chose
    it go out too (never with another tenant's)."""
    c = config(tmp_path, "http://127.0.0.1:1", profiles={ACCOUNT: "tenant-a"})
    assert client_settings(c, UNASSIGNED) is None
    assert client_settings(c, "222222222222") is None
    c = config(
        tmp_path,
        "http://127.0.0.1:1",
        profiles={ACCOUNT: "tenant-a"},
        unrouted="default_credentials",
    )
    own = client_settings(c, DEFAULT)
    assert client_settings(c, UNASSIGNED) == own
    assert client_settings(c, "222222222222") == own
    assert client_settings(c, ACCOUNT) != own  # an account with credentials keeps its own


def test_a_record_given_up_while_in_flight_and_then_taken_counts_as_sent_only(
    tmp_path: Path,
) -> None:
    """The shared bound may give up the oldest segment of an account that is draining, while
    its request is in flight: the endpoint then has the datums, so they are counted as sent and
    not also as dropped."""
    with StrictEndpoint("aws") as endpoint:
        tenant = open_tenant(
            config(tmp_path, endpoint.url, profiles={ACCOUNT: "tenant-a"}), ACCOUNT
        )
        publisher = tenant.publisher
        assert publisher is not None
        tenant.spool.add(datums(6))
        group = tenant.spool.next_request(time.time())
        assert tenant.spool.discard_oldest("test: the bound")  # counted as spool_full
        assert tenant.spool.ledger.stats() == {"dropped.spool_full": 6}
        assert asyncio.run(publisher._deliver(group))  # the request that was in flight
        assert len(endpoint.accepted) == 6
        assert publisher.stats["datums_sent"] == 6
        assert not [k for k in publisher.stats if k.startswith("dropped.")]
