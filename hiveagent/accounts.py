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


# The namespaces AWS gives the EC2 and EBS families (REFERENCE §5)
TENANT_NAMESPACES = {Family.EC2: TENANT_EC2_NAMESPACE, Family.EBS: TENANT_EBS_NAMESPACE}


def renames_namespaces(config: Config, account: str) -> bool:
    """Whether a route's EC2 and EBS datums go under AWS/EC2 and AWS/EBS: an account's own
    route under `aws_namespaces` (not the agent's own, nor VMs held for want of an account)."""
    return config.accounts.aws_namespaces and account not in (DEFAULT, UNASSIGNED)


def tenant_datums(config: Config, account: str, datums: list[Datum]) -> list[Datum]:
    """A route's datums in the namespaces they are sent under (`renames_namespaces`): each
    EC2 or EBS metric in its configured namespace goes to its family's AWS namespace, told by
    the catalog (the two families, or one of them and the in-guest one, may share a
    namespace)."""
    if not renames_namespaces(config, account):
        return datums
    configured = {config.ec2_namespace, config.ebs_namespace}
    out = []
    for d in datums:
        if d.namespace in configured:
            spec = CATALOG.get(d.name)
            to = TENANT_NAMESPACES.get(spec.family) if spec is not None else None
            if to is not None:
                d = d._replace(namespace=to)
        out.append(d)
    return out


def tenant_rules(config: Config, account: str) -> Rules:
    """What the endpoint takes from a route: `metrics.datum_shape`, and the tenant's AWS/
    namespaces under `aws_namespaces` (the operator says the endpoint takes them)."""
    opened = renames_namespaces(config, account)
    return Rules(
        config.datum_shape,
        open_namespaces=frozenset(TENANT_NAMESPACES.values()) if opened else frozenset(),
    )


def client_settings(config: Config, account: str = DEFAULT) -> tuple[Any, ...] | None:
    """What the CloudWatch client of a route is made of (a reload that changes it makes a new
    one); None when the route has no credentials (held)."""
    base = (config.region, config.endpoint_override, config.publish.timeout_s, config.wire_protocol)
    if account == DEFAULT:
        role = config.metrics_role_arn or config.role_arn  # metrics.credentials wins, as in CWA
        return (*base, role, None, None, None)
    settings = config.accounts
    profile = None if account == UNASSIGNED else settings.profile_for(account)
    role = None if profile or account == UNASSIGNED else settings.role_for(account)
    if not profile and not role:
        if settings.unrouted == "default_credentials":
            # what was held before the operator chose this: sent as unrouted VMs now are
            return client_settings(config, DEFAULT)
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
        _retire(tenant)
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
        _retire(tenant)
        tenant.held = f"credentials cannot be made: {type(exc).__name__}: {exc}"
        log.error("account %s: held in the spool: %s", tenant.account, tenant.held)
        return
    tenant.held = None
    if tenant.publisher is not None:
        # The same publisher, with the new client: a flush under way sends its next request
        # with it (a new publisher would leave the old one sending with the old credentials),
        # and its figures go on counting.
        tenant.publisher.client = client
        tenant.publisher.shape_fallback = False
        tenant.publisher.settings = config.publish
        tenant.publisher.datum_shape = config.datum_shape
        tenant.publisher.breaker.failures = config.publish.breaker_failures
        tenant.publisher.breaker.open_s = config.publish.breaker_open_s
        return
    publisher = Publisher(client, tenant.spool, config.publish)
    publisher.datum_shape = config.datum_shape
    tenant.publisher = publisher


def _retire(tenant: Tenant) -> None:
    """Hold the tenant: its publisher starts no request from now on (a flush under way stops
    before its next one; the request in flight, if any, ends as it may)."""
    if tenant.publisher is not None:
        tenant.publisher.retired = True
    tenant.publisher = None
