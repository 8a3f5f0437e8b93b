"""Changes to a running cluster: re-issued certificates and a TLS policy change roll through the
members one at a time while an apiserver keeps writing, and the run logs no secret at -vvv.

One playbook run makes both changes (it is the slowest thing the suite does). It leaves the
cluster on the TLS 1.3-only profile, so conftest.py runs these tests after all the others; the
next converge (`make lab`) puts the inventory's profile back, one member at a time.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from testinfra.host import Host

from conftest import APISERVER_CREDS, REPO, ChangeRun, Topology, change_while_writing, run_site

# conftest.py moves these tests after all others (the storage tests' rejoin too): they leave the
# cluster changed. The rolling restart is the play's own logic, the same on etcd 3.4 and 3.5, so
# the debian12 scenario leaves it to default.
pytestmark = [pytest.mark.changes_cluster(order=3), pytest.mark.platform_independent]

HostOf = Callable[[str], Host]
Probe = Callable[..., dict[str, Any]]
RESULTS = REPO / "results"


def record(name: str, topology: Topology, run: ChangeRun) -> None:
    """Keep the measured figures (results/ is git-ignored) for the closing notes and the README."""
    RESULTS.mkdir(exist_ok=True)
    restarts = sorted(s.started_us for s in run.after.values())
    gaps = [round((b - a) / 1e6, 1) for a, b in itertools.pairwise(restarts)]
    (RESULTS / f"rolling-{name}-{topology.inventory.parent.parent.name}.json").write_text(
        json.dumps({"writes": run.writes, "seconds_between_restarts": gaps}, indent=2) + "\n"
    )


def assert_rolled_one_member_at_a_time(run: ChangeRun) -> None:
    for member, state in run.after.items():
        assert state.pid != run.before[member].pid, f"{member} was not restarted"
    restarts = sorted(s.started_us for s in run.after.values())
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(restarts)]
    # Each restart waits for the previous member's health check over mTLS, which takes more
    # than a second through Ansible; members restarted together would start within milliseconds.
    assert all(g >= 1.0 for g in gaps), f"members restarted too close together: {gaps} s apart"
    assert run.writes["attempts"] > 10, run.writes
    # A restarted leader costs one election (about a second here); never a lost quorum.
    assert run.writes["longest_outage_seconds"] <= 5.0, run.writes


def etcd_version(host: Host) -> tuple[int, ...]:
    match = re.search(r"etcd Version: ([0-9.]+)", host.check_output("etcd --version"))
    assert match
    return tuple(int(p) for p in match.group(1).split("."))


@pytest.fixture(scope="module")
def supports_tls13_only(topology: Topology, host_of: HostOf) -> bool:
    return etcd_version(host_of(topology.members[0])) >= (3, 5)


@pytest.fixture(scope="module")
def reissue(topology: Topology, host_of: HostOf, supports_tls13_only: bool) -> ChangeRun:
    # Certificates expiring within 366 days are due, so every one is re-issued; where etcd can,
    # the TLS policy changes too. The run is verbose so its log can be searched for secrets.
    profile = ["-e", "etcd_tls_profile=modern"] if supports_tls13_only else []
    run = change_while_writing(
        topology,
        host_of,
        "-vvv",
        "-e",
        "etcd_pki_leaf_lifetime_days=400",
        "-e",
        "etcd_pki_renewal_days=366",
        *profile,
    )
    record("reissue", topology, run)
    return run


def test_reissue_gives_every_member_a_new_certificate(reissue: ChangeRun) -> None:
    for member, state in reissue.after.items():
        assert state.serial != reissue.before[member].serial, f"{member} kept its certificate"


def test_reissue_restarts_members_one_at_a_time_while_writes_go_on(reissue: ChangeRun) -> None:
    assert_rolled_one_member_at_a_time(reissue)


def secrets_on_the_hosts(topology: Topology, host_of: HostOf) -> dict[str, str]:
    """A piece of every secret the run handled, by where it lives: private key bodies, Secrets keys.

    A log can hold a key without its PEM header (a module's arguments, a diff, JSON with escaped
    newlines): 40 characters from inside the base64 body are searched for, as is each Secrets key.
    """
    found: dict[str, str] = {}
    for host in topology.members + topology.apiservers:
        for path in (
            host_of(host).check_output("grep -rlIs -e '-----BEGIN .*PRIVATE KEY-----' /etc || true").split()
        ):
            body = [
                line
                for line in host_of(host).file(path).content_string.splitlines()
                if not line.startswith("-")
            ]
            assert body and len(body[0]) >= 56, f"{host}:{path} has no PEM body"
            found[f"{host}:{path}"] = body[0][16:56]
    for host in topology.apiservers:
        keys = host_of(host).check_output("grep -rhoE 'secret: *[A-Za-z0-9+/=]{40,}' /etc/kubernetes || true")
        for number, line in enumerate(keys.split("\n")):
            if line.strip():
                found[f"{host}: Secrets key {number}"] = line.split(":", 1)[1].strip()
    return found


def test_verbose_run_logs_no_private_key_and_no_passphrase(
    reissue: ChangeRun, topology: Topology, host_of: HostOf
) -> None:
    assert "Restart | Restart etcd on" in reissue.output, "the run did not restart anything"
    assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", reissue.output)
    passphrase = str(topology.cluster_vars.get("etcd_pki_ca_passphrase", ""))
    if passphrase:
        assert passphrase not in reissue.output
    secrets = secrets_on_the_hosts(topology, host_of)
    assert any("Secrets key" in where for where in secrets), f"no Secrets key found to search for: {secrets}"
    assert len(secrets) > len(topology.members) * 4, secrets
    leaked = [where for where, piece in secrets.items() if piece in reissue.output]
    assert not leaked, f"the -vvv log holds these secrets: {leaked}"


def test_every_member_is_healthy_after_the_changes(
    topology: Topology, probe: Probe, reissue: ChangeRun
) -> None:
    for member in topology.members:
        outcome = probe(
            topology.apiservers[0],
            "request",
            f"https://{topology.addresses[member]}:2379/health",
            *APISERVER_CREDS,
        )
        assert outcome["served"] and '"health":"true"' in outcome["body"], outcome


def test_tls13_only_profile_refuses_tls12_and_serves_tls13(
    topology: Topology, probe: Probe, reissue: ChangeRun, supports_tls13_only: bool
) -> None:
    if not supports_tls13_only:
        # etcd 3.4 cannot enforce it: the play must say so instead of weakening the policy.
        result = run_site(topology, "--check", "-e", "etcd_tls_profile=modern")
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0 and "cannot be limited to TLS 1.3" in output, output[-5000:]
        return
    url = f"https://{topology.addresses[topology.members[0]]}:2379/health"
    served = probe(topology.apiservers[0], "request", url, *APISERVER_CREDS, "--tls-version", "1.3")
    assert served["served"] and served["tls_version"] == "TLSv1.3", served
    refused = probe(topology.apiservers[0], "request", url, *APISERVER_CREDS, "--tls-version", "1.2")
    assert not refused["served"] and "alert" in (refused["error"] or "").lower(), refused
