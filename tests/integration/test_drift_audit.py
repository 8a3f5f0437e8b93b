"""Drift detection and the compliance audit, against the converged lab.

Seven real drifts, each on its own member and control, are made at once (one round of check run,
audit and repair instead of seven, to keep `make test` within its time): a key made 0644,
client-cert-auth switched off in etcd's unit, the firewall table deleted, a member certificate
replaced by one (signed by the etcd CA) that expires in 5 days, the data directory loosened to
0755, an ETCD_* variable in the environment file etcd's unit reads, and a drop-in beside ours that
gives etcd a plain-HTTP listener the untrusted host reads. Each must be reported by
`scripts/drift.py` and by `scripts/audit.py`, each exiting non-zero, and one converge must repair
them all, after which both are clean: no change left, every member judged on every control (the
clean check right after the first converge was the same check on the same state, and cost over 3
minutes of `make test`).
"""

from __future__ import annotations

import datetime
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from testinfra.host import Host

from conftest import REPO, Report, Topology, audit, drift, failed, run_site

# Long (two check runs, two audits and a converge): in the default scenario only, whose lane of
# `make test` has time to spare (docs/tests.md); until 2026-12-02 it ran in debian12 (etcd 3.4).
pytestmark = [pytest.mark.changes_cluster(order=0), pytest.mark.platform_independent]

HostOf = Callable[[str], Host]
Probe = Callable[..., dict[str, Any]]
KEY, CERT = "/etc/etcd/pki/server.key", "/etc/etcd/pki/server.crt"
UNIT = "/etc/systemd/system/etcd.service"
DROP_IN = "/etc/systemd/system/etcd.service.d/99-local.conf"
BOOTSTRAP_ENV = "/run/etcd-bootstrap.env"
PLAIN_PORT = 4001


def expiring_certificate(topology: Topology, current_pem: str, days: int) -> bytes:
    """The member's own certificate, re-signed by the etcd CA (on the controller) to expire soon."""
    pki_dir = REPO / ".lab/pki" / topology.cluster_vars["etcd_cluster_name"]
    passphrase = topology.cluster_vars.get("etcd_pki_ca_passphrase")
    ca_key = serialization.load_pem_private_key(
        (pki_dir / "etcd-ca.key").read_bytes(), passphrase.encode() if passphrase else None
    )
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "etcd-ca.crt").read_bytes())
    current = x509.load_pem_x509_certificate(current_pem.encode())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(ca_cert.subject)
        .public_key(current.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension in current.extensions:
        if extension.oid != x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER:
            builder = builder.add_extension(extension.value, extension.critical)
    # Python's ssl (the play's health checks) insists on it.
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        ),
        critical=False,
    )
    signed = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return signed.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def drifted(
    topology: Topology, host_of: HostOf, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Report, Report]:
    first, second, third = topology.members[:3]
    data_dir = f"/var/lib/etcd/{topology.cluster_vars['etcd_cluster_name']}"
    host_of(first).check_output(f"chmod 0644 {KEY}")
    host_of(first).check_output(f"sed -i 's/--client-cert-auth=true/--client-cert-auth=false/' {UNIT}")
    # A rule that lets anyone reach the client port, ahead of the table's own: the sets still match
    # the inventory and the final drop is still there (what the audit once judged by).
    host_of(first).check_output("nft insert rule inet etcd_firewall input tcp dport 2379 accept")
    host_of(second).check_output("nft delete table inet etcd_firewall")
    soon = expiring_certificate(topology, host_of(second).check_output(f"cat {CERT}") + "\n", days=5)
    subprocess.run(
        ["podman", "exec", "-i", second, "sh", "-c",
         f"cat > {CERT}.new && chown --reference={CERT} {CERT}.new && chmod --reference={CERT} {CERT}.new "
         f"&& mv {CERT}.new {CERT}"],
        input=soon, check=True,
    )  # fmt: skip
    host_of(third).check_output(f"chmod 0755 {data_dir}")
    # Behaviour, not files of ours: on the second member an ETCD_* variable in the environment file
    # etcd's unit reads; on the third a drop-in beside ours that resets ExecStart= to the same
    # command plus a plain-HTTP listener outside the firewall's ports (the review's attack).
    host_of(second).check_output(f"echo ETCD_ENABLE_PPROF=true > {BOOTSTRAP_ENV} && systemctl restart etcd")
    execstart = host_of(third).check_output("systemctl show -p ExecStart --value etcd.service")
    command = re.search(r"argv\[\]=([^;]*) ;", execstart)
    assert command, execstart
    listen = f"https://{topology.addresses[third]}:2379,https://127.0.0.1:2379,http://0.0.0.0:{PLAIN_PORT}"
    host_of(third).check_output(
        f"printf '[Service]\\nExecStart=\\nExecStart=%s --listen-client-urls={listen}\\n' "
        f"{shlex.quote(command.group(1).strip())} > {DROP_IN} && chmod 0600 {DROP_IN} "
        "&& systemctl daemon-reload && systemctl restart etcd"
    )
    tmp_path = tmp_path_factory.mktemp("drifted")
    return drift(topology, tmp_path), audit(topology, tmp_path)


def read_over_plain_http(topology: Topology, host_of: HostOf) -> int:
    """What the untrusted host gets from the third member's extra port: an HTTP status, or 0."""
    script = (
        "import urllib.request, sys\n"
        "try:\n"
        f"    r = urllib.request.urlopen(urllib.request.Request('http://{topology.addresses[topology.members[2]]}:"
        f'{PLAIN_PORT}/v3/kv/range\', data=b\'{{"key": "AA==", "range_end": "AA=="}}\'), timeout=5)\n'
        "    print(r.status)\n"
        "except OSError:\n"
        "    print(0)\n"
    )
    return int(host_of(topology.untrusted[0]).check_output(f"python3 -c {shlex.quote(script)}"))


def connects(probe: Probe, source: str, address: str, port: int) -> bool:
    """Whether a TCP connection from `source` to address:port is made (a dropped SYN times out)."""
    return bool(probe(source, "tcp", address, str(port), "--timeout", "3")["served"])


def test_the_drifts_are_real_the_untrusted_host_reads_etcd_over_plain_http(
    topology: Topology, host_of: HostOf, probe: Probe, drifted: tuple[Report, Report]
) -> None:
    assert read_over_plain_http(topology, host_of) == 200
    first, _, third = topology.members[:3]
    untrusted = topology.untrusted[0]
    # The inserted accept opens the first member's client port to it; the third's still refuses it.
    assert connects(probe, untrusted, topology.addresses[first], 2379)
    assert not connects(probe, untrusted, topology.addresses[third], 2379)


def test_drift_reports_each_change_and_exits_non_zero(
    topology: Topology, drifted: tuple[Report, Report]
) -> None:
    checked, _ = drifted
    assert checked.returncode == 1, checked.output
    first, second, third = topology.members[:3]
    changes = [(c["host"], c["task"], " ".join(c["what"])) for c in checked.data["changes"]]

    def reported(host: str, *words: str) -> bool:
        return any(h == host and all(w in f"{task} {what}" for w in words) for h, task, what in changes)

    # The PKI role handles keys with no_log: the task, not the diff, says which key.
    assert reported(first, "private key", "server"), changes
    assert reported(first, UNIT), changes
    assert reported(first, "irewall"), changes  # the accept rule inserted ahead of the table's own
    assert reported(second, "irewall"), changes
    assert reported(second, "server"), changes  # the certificate re-issued inside its renewal window
    assert reported(third, "mode 0755 -> 0700"), changes
    assert reported(second, BOOTSTRAP_ENV, "absent"), changes
    assert reported(third, DROP_IN, "absent"), changes


def test_the_audit_fails_each_loosened_control_and_exits_non_zero(
    topology: Topology, drifted: tuple[Report, Report]
) -> None:
    _, audited = drifted
    assert audited.returncode == 1, audited.output
    first, second, third = topology.members[:3]
    assert failed(audited) == {
        (first, "etcd-key-file-mode"),
        (first, "etcd-client-cert-auth"),
        (first, "etcd-firewall"),
        (second, "etcd-firewall"),
        (second, "etcd-cert-file-expiry"),
        (third, "etcd-data-dir-mode"),
        (second, "etcd-environment"),
        (third, "etcd-unit-files"),
        (third, "etcd-listeners"),
    }, audited.output


def test_a_converge_repairs_every_drift_and_both_are_clean_again(
    topology: Topology, host_of: HostOf, probe: Probe, drifted: tuple[Report, Report], tmp_path: Path
) -> None:
    result = run_site(topology)
    assert result.returncode == 0, result.stdout[-5000:]
    assert read_over_plain_http(topology, host_of) == 0
    assert not connects(probe, topology.untrusted[0], topology.addresses[topology.members[0]], 2379)
    checked = drift(topology, tmp_path)
    assert checked.returncode == 0, checked.output
    assert "no drift: a real run would change nothing" in checked.output
    audited = audit(topology, tmp_path)
    assert audited.returncode == 0 and not failed(audited), audited.output
    checks = audited.data["checks"]
    # Every member is judged on every control, and n/a only where the lab cannot show it.
    assert {c["host"] for c in checks} == set(topology.members + topology.apiservers)
    not_applicable = {c["id"] for c in checks if c["status"] == "n/a"}
    assert not_applicable <= {"etcd-apparmor", "etcd-own-ca"}, not_applicable
    passed = {(c["host"], c["cis"]) for c in checks if c["status"] == "pass"}
    for member in topology.members:
        cis_ids = ("2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "1.1.7", "1.1.8", "1.1.11", "1.1.12")
        assert {(member, cis) for cis in cis_ids} <= passed
    # The apiserver's static pod (kubeadm's, edited by kube_apiserver_etcd): etcd client flags, encryption.
    for apiserver in topology.apiservers:
        assert {(apiserver, cis) for cis in ("1.2.26", "1.2.29", "1.2.30", "1.2.31")} <= passed
