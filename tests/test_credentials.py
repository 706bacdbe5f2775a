"""`credentials.role_arn` (the CloudWatch Agent's key, agent-wide or for metrics): the agent
signs with the role's temporary credentials from STS AssumeRole, asked of the endpoint's STS
when endpoint_override is set. Checked against moto's real STS and CloudWatch behind the strict
endpoint, which records the access key each request was signed with."""

from __future__ import annotations

from typing import Any

from hiveagent.accounts import client_settings
from hiveagent.config import parse_config
from hiveagent.wire import make_client

ROLE = "arn:aws:iam::123456789012:role/hiveagent-publisher"
DEFAULT_KEY = "testing"  # the default chain's credentials in the test environment (conftest)


def test_the_role_is_assumed_at_the_endpoints_sts_and_signs_the_requests(
    harness: Any, moto_url: str
) -> None:
    endpoint = next(f for f in harness.fronts.values() if f.url == moto_url)
    client = make_client("us-east-1", moto_url, 5.0, role_arn=ROLE)
    client.put_metric_data(Namespace="Creds", MetricData=[{"MetricName": "M", "Value": 1.0}])
    signed = endpoint.requests[-1]
    assert signed.status == 200
    # moto's AssumeRole hands out temporary keys (ASIA...), not the default chain's.
    assert signed.access_key is not None and signed.access_key.startswith("ASIA")
    # The STS request went through the same endpoint (passed on to moto).
    assert endpoint.forwarded >= 1
    plain = make_client("us-east-1", moto_url, 5.0)
    plain.put_metric_data(Namespace="Creds", MetricData=[{"MetricName": "M", "Value": 2.0}])
    assert endpoint.requests[-1].access_key == DEFAULT_KEY


def test_metrics_role_overrides_the_agents() -> None:
    """The CloudWatch Agent's rule: metrics.credentials.role_arn, else agent.credentials'."""

    def role(data: dict[str, Any]) -> Any:
        settings = client_settings(parse_config(data))
        assert settings is not None
        return settings[4]  # (region, endpoint, timeout, protocol, role, ...)

    agent_role = "arn:aws:iam::111111111111:role/agent"
    both = {"agent": {"credentials": {"role_arn": agent_role}},
            "metrics": {"credentials": {"role_arn": ROLE}}}  # fmt: skip
    assert role(both) == ROLE
    assert role({"agent": {"credentials": {"role_arn": agent_role}}}) == agent_role
    assert role({}) is None
