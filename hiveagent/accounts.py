"""Routing by account (hypervisor.accounts): every VM's metrics land in the account that owns
the VM, signed with that account's credentials.

A VM's account comes from discovery (the Spinifex sidecar's `account_id`, a generic entry's
`(?P<account_id>...)` group, or the metadata file's `account_id`). Its route is:

- `DEFAULT` (the agent's own credentials, the operator's account) when routing is off (no
  `role_arn` template and no `profiles`);
- the account id when the account has credentials: a profile named for it in `profiles`, else
  the `role_arn` template assumed through STS;
- otherwise (no account, or no credentials for it) `unrouted` decides: `default_credentials`
  sends with the agent's own credentials, `hold` (the default) keeps the datums in that
  account's spool (`UNASSIGNED` for VMs with no account), counted and shown in /status, until
  a reload gives them credentials. Never into another tenant's account.

With `aws_namespaces`, the EC2 and EBS families of a routed VM go to `AWS/EC2` and `AWS/EBS`
in its account (`tenant_datums`), for endpoints that allow it (config.py checks the rest).

Each account has its own spool (under `<spool>/accounts/<account>/`; the default route keeps
the spool directory itself, so what an earlier version spooled is delivered to it after an
upgrade) and its own publisher: client, circuit breaker, backoff and drops. A role that cannot
be assumed or an account that is throttled holds back that account only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiveagent.catalog import CATALOG, Family
from hiveagent.config import TENANT_EBS_NAMESPACE, TENANT_EC2_NAMESPACE, Config
from hiveagent.model import Datum
from hiveagent.publisher import Publisher
from hiveagent.spool import Spool, SpoolBudget
from hiveagent.wire import Rules, make_client

log = logging.getLogger(__name__)

DEFAULT = ""  # the agent's own credentials
UNASSIGNED = "unassigned"  # held: VMs with no account
ACCOUNT_ID = re.compile(r"^[0-9]{12}$")


def route(account_id: str | None, config: Config) -> str:
    """The route of a VM's datums (module docstring)."""
    settings = config.accounts
    if not settings.enabled:
        return DEFAULT
    if account_id is not None and not ACCOUNT_ID.match(account_id):
        account_id = None  # not an AWS account id: treated as none (discovery logged it)
    if account_id is not None and (settings.profile_for(account_id) or settings.role_arn):
        return account_id
    if settings.unrouted == "default_credentials":
        return DEFAULT
    return account_id or UNASSIGNED


def tenant_namespaces(config: Config, account: str) -> dict[str, str]:
    """Configured namespace -> the one a route's datums go to: AWS/EC2 and AWS/EBS for an
    account's own route under `aws_namespaces`, else nothing renamed."""
    if not config.accounts.aws_namespaces or account in (DEFAULT, UNASSIGNED):
        return {}
    return {
        config.ec2_namespace: TENANT_EC2_NAMESPACE,
        config.ebs_namespace: TENANT_EBS_NAMESPACE,
    }


_HYPERVISOR_FAMILIES = (Family.EC2, Family.EBS)


def tenant_datums(config: Config, account: str, datums: list[Datum]) -> list[Datum]:
    """A route's datums in the namespaces they are sent under (`tenant_namespaces`); only
    the EC2 and EBS families' metrics are renamed, whatever namespace they share."""
    renamed = tenant_namespaces(config, account)
    if not renamed:
        return datums
    out = []
    for d in datums:
        to = renamed.get(d.namespace)
        if to is not None:
            spec = CATALOG.get(d.name)
            if spec is not None and spec.family in _HYPERVISOR_FAMILIES:
                d = d._replace(namespace=to)
        out.append(d)
    return out


def tenant_rules(config: Config, account: str) -> Rules:
    """What the endpoint takes from a route: `metrics.datum_shape`, and the tenant's AWS/
    namespaces under `aws_namespaces` (the operator says the endpoint takes them)."""
    return Rules(
        config.datum_shape, open_namespaces=frozenset(tenant_namespaces(config, account).values())
    )


def client_settings(config: Config, account: str = DEFAULT) -> tuple[Any, ...] | None:
    """What the CloudWatch client of a route is made of (a reload that changes it makes a new
    one); None when the route has no credentials (held)."""
    base = (config.region, config.endpoint_override, config.publish.timeout_s, config.wire_protocol)
    if account == DEFAULT:
        role = config.metrics_role_arn or config.role_arn  # metrics.credentials wins, as in CWA
        return (*base, role, None, None, None)
    if account == UNASSIGNED:
        return None
    settings = config.accounts
    profile = settings.profile_for(account)
    role = None if profile else settings.role_for(account)
    if not profile and not role:
        return None
    return (*base, role, settings.external_id, settings.sts_endpoint, profile)


def client_for(settings: tuple[Any, ...]) -> Any:
    region, endpoint, timeout_s, protocol, role, external_id, sts_endpoint, profile = settings
    return make_client(
        region,
        endpoint,
        timeout_s,
        protocol,
        role_arn=role,
        external_id=external_id,
        sts_endpoint=sts_endpoint,
        profile=profile,
    )


def spool_dir(config: Config, account: str) -> Path:
    root = Path(config.spool.directory)
    return root if account == DEFAULT else root / "accounts" / account


def spooled_accounts(config: Config) -> list[str]:
    """The accounts with a spool on disk (found at start: their records are replayed)."""
    try:
        return sorted(
            p.name
            for p in (Path(config.spool.directory) / "accounts").iterdir()
            if p.is_dir() and (ACCOUNT_ID.match(p.name) or p.name == UNASSIGNED)
        )
    except OSError:
        return []


@dataclass
class Tenant:
    """One account's delivery: its spool, and its publisher unless held."""

    account: str
    spool: Spool
    publisher: Publisher | None  # None: held (no credentials, or they cannot be made)
    client_settings: tuple[Any, ...] | None
    held: str | None = None  # why it is held

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": "held" if self.publisher is None else "sending",
            "spool": self.spool.status(),
        }
        if self.held:
            out["held"] = self.held
        if self.publisher is not None:
            out["publisher"] = self.publisher.status()
        else:
            out["dropped"] = self.spool.ledger.stats()
        return out


def open_tenant(config: Config, account: str, budget: SpoolBudget | None = None) -> Tenant:
    spool = Spool(
        spool_dir(config, account),
        max_bytes=config.spool.max_bytes,
        fsync=config.spool.fsync,
        memory_max_datums=config.spool.memory_max_datums,
        rules=tenant_rules(config, account),
        budget=budget,
    )
    spool.open()
    tenant = Tenant(account, spool, None, None)
    configure_tenant(tenant, config)
    return tenant


def configure_tenant(tenant: Tenant, config: Config) -> None:
    """(Re)make the tenant's client when its settings changed; hold it when it has none."""
    tenant.spool.rules = tenant_rules(config, tenant.account)  # what is spooled from now on
    settings = client_settings(config, tenant.account)
    if settings is not None and settings == tenant.client_settings and tenant.publisher:
        tenant.publisher.settings = config.publish
        tenant.publisher.datum_shape = config.datum_shape
        return
    tenant.client_settings = settings
    if settings is None:
        tenant.publisher = None
        tenant.held = (
            "no account: hypervisor.accounts.unrouted is hold"
            if tenant.account == UNASSIGNED
            else "no credentials for this account (hypervisor.accounts: no profile, no role_arn)"
        )
        log.warning("account %s: held in the spool: %s", tenant.account, tenant.held)
        return
    try:
        client = client_for(settings)
    except Exception as exc:  # botocore: a profile not found, bad settings
        tenant.publisher = None
        tenant.held = f"credentials cannot be made: {type(exc).__name__}: {exc}"
        log.error("account %s: held in the spool: %s", tenant.account, tenant.held)
        return
    tenant.held = None
    publisher = Publisher(client, tenant.spool, config.publish)
    publisher.datum_shape = config.datum_shape
    tenant.publisher = publisher
