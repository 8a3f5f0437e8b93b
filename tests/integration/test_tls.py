"""mTLS on both ports: what must be served is served, every attack is refused by the server.

Each negative test is paired with a positive control that differs only in the one thing under
test, so a refusal cannot come from a broken probe, a wrong address or a down member.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from conftest import APISERVER_CREDS, MEMBER_PEER_CREDS, Topology

Probe = Callable[..., dict[str, Any]]
# Every attack here is also tried against the VM tier's member.
pytestmark = pytest.mark.any_tier


def client_url(topology: Topology, member: str, path: str = "/health", scheme: str = "https") -> str:
    return f"{scheme}://{topology.addresses[member]}:2379{path}"


def peer_url(topology: Topology, member: str, path: str = "/version", scheme: str = "https") -> str:
    return f"{scheme}://{topology.addresses[member]}:2380{path}"


def peer_prober(topology: Topology) -> str:
    """A member to try the peer port from: another one, or the only one (the VM tier's) itself."""
    return topology.members[1] if len(topology.members) > 1 else topology.members[0]


def assert_served(outcome: dict[str, Any]) -> None:
    assert outcome["served"], f"expected to be served, got {outcome}"


def assert_refused_by_server(outcome: dict[str, Any], *alerts: str) -> None:
    """Refused, and by the server: a TLS alert it sent, not a failure of the probe itself."""
    assert not outcome["served"], f"expected a refusal, but it was served: {outcome}"
    error = (outcome["error"] or "").lower()
    assert "alert" in error, f"expected a TLS alert from the server, got {outcome}"
    if alerts:
        assert any(a in error for a in alerts), f"expected one of {alerts}, got {outcome}"


# --- positive ---------------------------------------------------------------------------------


def test_every_member_is_healthy_over_mtls(topology: Topology, probe: Probe) -> None:
    apiserver = topology.apiservers[0]
    for member in topology.members:
        outcome = probe(apiserver, "request", client_url(topology, member), *APISERVER_CREDS)
        assert_served(outcome)
        assert '"health":"true"' in outcome["body"], outcome


def test_cluster_has_every_inventory_member(topology: Topology, probe: Probe) -> None:
    outcome = probe(
        topology.apiservers[0],
        "request",
        client_url(topology, topology.members[0], "/v3/cluster/member/list"),
        "--method",
        "POST",
        "--data",
        "{}",
        *APISERVER_CREDS,
    )
    assert_served(outcome)
    for member in topology.members:
        assert f'"name":"{member}"' in outcome["body"].replace(" ", ""), outcome


def test_apiserver_writes_on_one_member_and_reads_on_every_member(topology: Topology, probe: Probe) -> None:
    apiserver = topology.apiservers[0]
    key, value = f"/tests/write-read/{uuid.uuid4()}", str(uuid.uuid4())
    endpoint = client_url(topology, topology.members[0], "")
    assert_served(probe(apiserver, "kv", "put", key, value, "--endpoint", endpoint, *APISERVER_CREDS))
    for member in topology.members:
        endpoint = client_url(topology, member, "")
        got = probe(apiserver, "kv", "get", key, "--endpoint", endpoint, *APISERVER_CREDS)
        assert_served(got)
        assert got["body"] == f'["{value}"]', got


# --- client port: who may connect -------------------------------------------------------------


def test_client_port_refuses_tls_without_a_client_certificate(topology: Topology, probe: Probe) -> None:
    url = client_url(topology, topology.members[0])
    no_cert = probe(topology.apiservers[0], "request", url, *APISERVER_CREDS[:2])
    assert_refused_by_server(no_cert, "certificate required", "bad certificate", "handshake failure")


def test_client_port_refuses_a_client_certificate_from_another_ca(
    topology: Topology, probe: Probe, foreign_client_cert: tuple[str, ...]
) -> None:
    url = client_url(topology, topology.members[0])
    outcome = probe(topology.apiservers[0], "request", url, "--no-verify", *foreign_client_cert)
    assert_refused_by_server(outcome, "unknown ca", "bad certificate", "decrypt error")


def test_client_port_refuses_plain_http(topology: Topology, probe: Probe) -> None:
    for member in topology.members:
        outcome = probe(topology.apiservers[0], "request", client_url(topology, member, scheme="http"))
        assert not outcome["served"], outcome
        assert outcome["status"] in (None, 400), outcome


# --- TLS policy -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_client_port_refuses_old_tls_versions(topology: Topology, probe: Probe, version: str) -> None:
    url = client_url(topology, topology.members[0])
    control = probe(topology.apiservers[0], "request", url, *APISERVER_CREDS, "--tls-version", "1.2")
    assert_served(control)
    outcome = probe(topology.apiservers[0], "request", url, *APISERVER_CREDS, "--tls-version", version)
    assert_refused_by_server(outcome, "protocol version", "handshake failure")


@pytest.mark.parametrize("port", [2379, 2380])
def test_both_ports_refuse_cbc_cipher_suites_on_tls12(topology: Topology, probe: Probe, port: int) -> None:
    member = topology.members[0]
    url = f"https://{topology.addresses[member]}:{port}/version"
    creds = APISERVER_CREDS if port == 2379 else MEMBER_PEER_CREDS
    on = topology.apiservers[0] if port == 2379 else peer_prober(topology)
    aead = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    cbc = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384"
    assert_served(probe(on, "request", url, *creds, "--ciphers", aead))
    outcome = probe(on, "request", url, *creds, "--ciphers", cbc)
    assert_refused_by_server(outcome, "handshake failure")


# --- peer port --------------------------------------------------------------------------------


def test_peer_port_serves_a_member_peer_certificate(topology: Topology, probe: Probe) -> None:
    outcome = probe(
        peer_prober(topology), "request", peer_url(topology, topology.members[0]), *MEMBER_PEER_CREDS
    )
    assert_served(outcome)


# The firewall lets only members reach the peer port, so these attacks come from a member that
# leaves its peer credentials aside: mTLS must hold on its own.


def test_peer_port_refuses_a_certificate_from_the_client_ca(topology: Topology, probe: Probe) -> None:
    # The admin certificate is a valid client certificate of this cluster (the apiservers' CA).
    client_ca_cert = ("--cert", "/etc/etcd/pki/admin.crt", "--key", "/etc/etcd/pki/admin.key")
    outcome = probe(
        peer_prober(topology),
        "request",
        peer_url(topology, topology.members[0]),
        "--no-verify",
        *client_ca_cert,
    )
    assert_refused_by_server(outcome, "unknown ca", "bad certificate", "certificate unknown")


def test_peer_port_refuses_tls_without_a_client_certificate(topology: Topology, probe: Probe) -> None:
    outcome = probe(peer_prober(topology), "request", peer_url(topology, topology.members[0]), "--no-verify")
    assert_refused_by_server(outcome, "certificate required", "bad certificate", "handshake failure")


def test_peer_port_refuses_plain_http(topology: Topology, probe: Probe) -> None:
    outcome = probe(peer_prober(topology), "request", peer_url(topology, topology.members[0], scheme="http"))
    assert not outcome["served"], outcome
    assert outcome["status"] in (None, 400), outcome


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_are_served_on_loopback_only(topology: Topology, probe: Probe) -> None:
    member = topology.members[0]
    local = probe(member, "request", "http://127.0.0.1:2381/metrics")
    assert_served(local)
    assert "etcd_server_has_leader 1" in local["body"]
    for attacker in (topology.untrusted[0], topology.apiservers[0]):
        remote = probe(attacker, "tcp", topology.addresses[member], "2381")
        assert not remote["served"], remote
