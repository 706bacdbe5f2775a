"""The `host` dimension of in-guest datums, shared by the in-guest collectors (not a collector).

The CloudWatch Agent's telegraf tags every metric with `host` = os.Hostname() of the instance
(telegraf config/config.go: unless agent.omit_hostname), and its ec2tagger processor removes it
again when metrics.append_dimensions is set (amazon-cloudwatch-agent plugins/processors/
ec2tagger/ec2tagger.go, updateOtelAttributes; the processor exists only then,
translator/translate/otel/pipeline/host/translator.go): Config.host_dimension. Here the name is
the guest's own, from qemu-guest-agent's guest-get-host-name (gethostname(2) in the guest, what
os.Hostname reads), which the VM session learns once per guest agent contact and refreshes
rarely (hiveagent.vm; VmFacts.host_name); `agent.hostname`, when set, is every VM's instead (as
telegraf's agent hostname replaces os.Hostname, translator/translate/agent/ruleHostname.go).

When the config wants `host` and the guest's host name is not known (its guest agent never
answered in this QEMU process's life, blocks guest-get-host-name, or gave a name CloudWatch
cannot take), the VM's in-guest datums are not sent: without `host` they would carry no
dimension that tells this VM from another, and every such VM's series would merge into one.
Each datum held back is counted per VM as `rejected.host_name.unknown` (/status, the agent's
stats, logged once per VM). A host name learnt once stays in use while the guest agent is down
(mem_* come from the balloon and go on).
"""

from __future__ import annotations

from collections.abc import Mapping

from hiveagent.collector import Emitter, VmView

HOST = "host"
HOST_UNKNOWN = "host_name.unknown"  # the rejection key of a datum held back


def emit_guest(out: Emitter, vm: VmView, values: Mapping[str, float], tags: dict[str, str]) -> None:
    """One in-guest series: `values` with the plugin's own `tags`, plus `host` when the config
    wants it; held back and counted when it wants it and the host name is unknown."""
    if not values:
        return
    if vm.config.host_dimension:
        host = vm.config.hostname or vm.facts.host_name
        if host is None:
            vm.rejected[HOST_UNKNOWN] += len(values)
            return
        tags[HOST] = host
    out.emit_all(values, tags)
