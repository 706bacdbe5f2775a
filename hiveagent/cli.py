"""hiveagent's command line: run, check-config, list-vms, collect, catalog."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from collectors import REGISTRY
from hiveagent import __version__
from hiveagent.catalog import markdown_tables
from hiveagent.config import Config, ConfigError, load_config
from hiveagent.daemon import Daemon, redact_url
from hiveagent.model import Datum
from hiveagent.pipeline import Pipeline
from hiveagent.scheduler import Scheduler, interval_warnings

log = logging.getLogger("hiveagent")

EXIT_CONFIG = 2
# Guest agent commands the collectors use, shown by list-vms.
METRIC_COMMANDS = tuple(dict.fromkeys(c.qga_command for c in REGISTRY if c.qga_command))


class JournalFormatter(logging.Formatter):
    """Under systemd (JOURNAL_STREAM set) each line starts with its syslog priority, `<3>` for
    errors etc., which journald turns into the PRIORITY field; journald adds the timestamp."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 2)
        return f"<{priority}>" + super().format(record).replace("\n", "\n" + f"<{priority}>")


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # botocore at DEBUG would log request headers (credentials); keep it quiet.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if getattr(args, "run_dir", None):
        config = config.with_run_dir(args.run_dir)
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    # What the config asks for that hiveagent does not serve, each naming its JSON path and why
    # (a config the CloudWatch Agent's schema accepts passes, with these warnings).
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config.source}: OK")
    print(f"  interval {config.interval_s} s, flush every {config.force_flush_interval_s} s")
    print(
        f"  namespaces: EC2 {config.ec2_namespace}, EBS {config.ebs_namespace}, "
        f"guest {config.guest_namespace}"
        + (
            "; EC2 and EBS of VMs routed to an account: AWS/EC2, AWS/EBS"
            if config.accounts.aws_namespaces
            else ""
        )
    )
    print(f"  endpoint: {redact_url(config.endpoint_override) or 'the region default'}")
    for where, ns in (
        ("metrics.namespace", config.guest_namespace),
        ("hypervisor.ec2.namespace", config.ec2_namespace),
        ("hypervisor.ebs.namespace", config.ebs_namespace),
        ("hypervisor.self_metrics.namespace", config.self_metrics.namespace),
    ):
        if ns.startswith("AWS/"):
            print(
                f"warning: $.{where}: {ns!r} is a reserved namespace; AWS CloudWatch and "
                "private clouds such as Spinifex reject PutMetricData to AWS/ namespaces"
            )
    for warning in interval_warnings(config):
        print(f"warning: {warning}")
    print(
        f"  discovery: spinifex {config.spinifex_run_dir or 'off'}, "
        f"generic patterns {len(config.generic)}"
    )
    return 0


async def _list_vms(config: Config, as_json: bool) -> int:
    scheduler = Scheduler(config)
    try:
        await scheduler.collect()
        rows: list[dict[str, Any]] = []
        for state in scheduler.vms.values():
            session = state.session
            info = session.guest_info
            rows.append(
                {
                    "instance_id": state.spec.instance_id,
                    "qmp_socket": state.spec.qmp_socket,
                    "qmp": f"ok (pid {session.pid}, {session.run_status})"
                    if session.qmp.connected
                    else f"down: {state.last_error}",
                    "qga": session.qga_state,
                    "qga_commands": [
                        c for c in METRIC_COMMANDS if info and c in info.enabled_commands
                    ],
                    # Commands this guest's agent lacks (old qemu-ga, Windows): their metrics
                    # are skipped for this VM, quietly.
                    "qga_missing": [
                        c for c in METRIC_COMMANDS if info and c not in info.enabled_commands
                    ],
                    "vcpus": session.vcpus,
                }
            )
    finally:
        await scheduler.close()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no VMs found")
    for r in rows:
        print(f"{r['instance_id']}  {r['qmp_socket']}")
        print(f"  QMP: {r['qmp']}, vCPUs {r['vcpus']}")
        print(f"  guest agent: {r['qga']}")
        if r["qga_commands"]:
            print(f"  guest agent metric commands: {', '.join(r['qga_commands'])}")
        if r["qga_missing"]:
            print(f"  not in this guest agent (metrics skipped): {', '.join(r['qga_missing'])}")
    for p in scheduler.discovery_problems:
        print(f"problem: {p}")
    return 0


def format_table(datums: Sequence[Datum]) -> str:
    lines = [f"{'namespace':<10} {'metric':<28} {'value':>16} {'unit':<8} dimensions"]
    for d in sorted(datums, key=lambda d: (d.namespace, d.dimensions, d.name)):
        dims = ",".join(f"{k}={v}" for k, v in d.dimensions)
        lines.append(f"{d.namespace:<10} {d.name:<28} {d.value:>16.6g} {d.unit:<8} {dims}")
    return "\n".join(lines)


async def _collect_once(config: Config, fmt: str, gap_s: float) -> int:
    scheduler, pipeline = Scheduler(config), Pipeline(config)
    try:
        pipeline.finish(await scheduler.collect())  # primes the counters
        await asyncio.sleep(gap_s)
        datums = pipeline.finish(await scheduler.collect())
    finally:
        await scheduler.close()
    log.info(
        "collect: %d datum(s); %s",
        len(datums),
        ", ".join(f"{k}={v}" for k, v in sorted((scheduler.stats + pipeline.stats).items())),
    )
    if fmt == "json":
        print(json.dumps([d.as_json() for d in datums], indent=1))
    else:
        print(format_table(datums))
    return 0


async def _run(
    config: Config, max_cycles: int | None, audit_path: str | None, run_dir: str | None
) -> int:
    audit = open(audit_path, "a", encoding="utf-8") if audit_path else None  # noqa: SIM115
    try:
        daemon = Daemon(config, max_cycles=max_cycles, audit=audit, run_dir_override=run_dir)
        return await daemon.run()
    finally:
        if audit is not None:
            audit.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiveagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hiveagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, discovers: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-c", "--config", required=True, help="agent.json")
        if discovers:
            p.add_argument("--run-dir", help="read Spinifex sidecars from this directory")
        return p

    p = add("run", "run the daemon")
    p.add_argument("--cycles", type=int, help="stop after N cycles (testing, demos)")
    p.add_argument(
        "--audit-log",
        metavar="FILE",
        help="append every datum to FILE as a JSON line once it is in the spool (audits, tests)",
    )
    add("check-config", "validate agent.json and exit", discovers=False)
    p = add("list-vms", "show the VMs found and their QMP and guest agent state")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = add("collect", "collect twice, print the datums, push nothing")
    p.add_argument("--once", action="store_true", required=True)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--gap", type=float, default=2.0, help="seconds between the two samples")
    cat = sub.add_parser("catalog", help="print the metric catalog as Markdown tables")
    cat.add_argument("--markdown", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "catalog":
        sys.stdout.write(markdown_tables())
        return 0
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"hiveagent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(config.debug)
    if args.command == "check-config":
        return cmd_check_config(args)
    if args.command == "list-vms":
        return asyncio.run(_list_vms(config, args.format == "json"))
    if args.command == "collect":
        return asyncio.run(_collect_once(config, args.format, args.gap))
    if args.command == "run":
        return asyncio.run(_run(config, args.cycles, args.audit_log, args.run_dir))
    raise AssertionError(args.command)
