"""Host-side controls: flags as the running process sees them, key custody, file modes, sandbox."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from testinfra.host import Host

from conftest import REPO, Topology

HostOf = Callable[[str], Host]

# Flags CIS 2.1-2.7 look for, as auditors read them: from the process command line.
REQUIRED_FLAGS = {
    "client-cert-auth": "true",  # CIS 2.2
    "auto-tls": "false",  # CIS 2.3
    "peer-client-cert-auth": "true",  # CIS 2.5
    "peer-auto-tls": "false",  # CIS 2.6
    "enable-v2": "false",
    "strict-reconfig-check": "true",
    "listen-metrics-urls": "http://127.0.0.1:2381",
}
REQUIRED_FILE_FLAGS = (
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
)


def etcd_flags(host: Host) -> dict[str, str]:
    pid = host.check_output("systemctl show -p MainPID --value etcd.service")
    assert pid not in ("", "0"), "etcd is not running"
    argv = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").splitlines()
    assert argv[0].endswith("/etcd"), argv
    flags = {}
    for arg in argv[1:]:
        name, _, value = arg.removeprefix("--").partition("=")
        flags[name] = value
    return flags


def test_tls_flags_are_on_the_running_process(topology: Topology, host_of: HostOf) -> None:
    for member in topology.members:
        flags = etcd_flags(host_of(member))
        for name, value in REQUIRED_FLAGS.items():
            assert flags.get(name) == value, f"{member}: --{name}={flags.get(name)!r}, want {value!r}"
        for name in REQUIRED_FILE_FLAGS:
            assert flags.get(name), f"{member}: --{name} is not set"
            assert host_of(member).file(flags[name]).exists, f"{member}: {flags[name]} missing"
        urls = flags["listen-client-urls"].split(",") + flags["listen-peer-urls"].split(",")
        assert all(u.startswith("https://") for u in urls), urls


def test_peer_and_client_ports_trust_different_dedicated_cas(topology: Topology, host_of: HostOf) -> None:
    """CIS 2.7: a dedicated etcd CA; and the peer CA is separate, so no client can be a peer."""
    member = host_of(topology.members[0])
    flags = etcd_flags(member)
    client_ca = member.check_output(
        f"openssl x509 -noout -subject -fingerprint -sha256 -in {flags['trusted-ca-file']}"
    )
    peer_ca = member.check_output(
        f"openssl x509 -noout -subject -fingerprint -sha256 -in {flags['peer-trusted-ca-file']}"
    )
    assert "etcd-ca" in client_ca and "kubernetes" not in client_ca.lower(), client_ca
    if topology.cluster_vars.get("etcd_pki_separate_peer_ca", True):
        assert client_ca != peer_ca
        assert "etcd-peer-ca" in peer_ca
    else:
        assert flags.get("peer-cert-allowed-cn"), "a shared CA needs the peer CN pinned"


def test_peer_identity_is_pinned(topology: Topology, host_of: HostOf) -> None:
    member = host_of(topology.members[0])
    flags = etcd_flags(member)
    pinned = flags.get("peer-cert-allowed-cn")
    assert pinned, "--peer-cert-allowed-cn is not set"
    subject = member.check_output(
        f"openssl x509 -noout -subject -nameopt RFC2253 -in {flags['peer-cert-file']}"
    )
    assert f"CN={pinned}" in subject


def test_etcd_runs_as_its_own_user_with_a_private_data_dir(topology: Topology, host_of: HostOf) -> None:
    for member in topology.members:
        host = host_of(member)
        assert host.service("etcd").is_running
        assert host.check_output("ps -o user= -C etcd").split() == ["etcd"]
        data_dir = host.file(etcd_flags(host)["data-dir"])
        assert (data_dir.user, data_dir.group, data_dir.mode) == ("etcd", "etcd", 0o700)  # CIS 1.1.11/12


@pytest.mark.parametrize(
    "path",
    [
        "/etc/systemd/system/etcd.service",
        # The drop-ins are part of etcd's unit (the audit found them 0644).
        "/etc/systemd/system/etcd.service.d/10-etcd-firewall.conf",
        "/etc/systemd/system/etcd.service.d/20-etcd-apparmor.conf",
        "/etc/default/etcd",
    ],
)
def test_configuration_files_are_root_only(topology: Topology, host_of: HostOf, path: str) -> None:
    for member in topology.members:
        f = host_of(member).file(path)
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), f"{member}:{path}"  # CIS 1.1.7/8


def package_unit(host: Host) -> str:
    """The etcd unit the Debian package ships, as dpkg knows its path."""
    files = host.check_output("dpkg-query --listfiles etcd-server").splitlines()
    units = [f for f in files if re.fullmatch(r"/.*/systemd/system/etcd\.service", f)]
    assert len(units) == 1, files
    return str(units[0])


def test_the_packages_unit_kube_bench_judges_is_root_only(topology: Topology, host_of: HostOf) -> None:
    # kube-bench judges CIS 1.1.7/1.1.8 on the first file of its list that exists: on a Debian
    # member, the package's unit (see etcd_audit_kube_bench_etcd_confs).
    for member in topology.members:
        host = host_of(member)
        unit = package_unit(host)
        f = host.file("/usr/lib/systemd/system/etcd.service")
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), f"{member}: {unit}"
        assert host.check_output(f"dpkg-statoverride --list {unit}") == f"root root 600 {unit}", member


@pytest.mark.changes_cluster
def test_the_packages_unit_stays_root_only_when_the_package_is_installed_again(
    topology: Topology, host_of: HostOf
) -> None:
    # What an upgrade does to the file: dpkg unpacks it again. policy-rc.d keeps the package's
    # scripts from restarting etcd, as an unattended upgrade under a maintenance policy would.
    member = topology.members[0]
    host = host_of(member)
    pid = host.check_output("systemctl show -p MainPID --value etcd.service")
    deb = host.run("ls /var/cache/apt/archives/etcd-server_*.deb").stdout.split()
    if not deb:
        host.run_expect([0], "cd /var/cache/apt/archives && apt-get download -q etcd-server")
        deb = host.check_output("ls /var/cache/apt/archives/etcd-server_*.deb").split()
    host.run_expect(
        [0], "printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d"
    )
    try:
        host.run_expect([0], f"DEBIAN_FRONTEND=noninteractive dpkg --install {deb[-1]}")
    finally:
        host.run("rm -f /usr/sbin/policy-rc.d")
    f = host.file(package_unit(host))
    assert (f.user, f.group, f.mode) == ("root", "root", 0o600)
    assert host.check_output("systemctl show -p MainPID --value etcd.service") == pid


def test_key_files_are_0600_and_owned_by_their_user(topology: Topology, host_of: HostOf) -> None:
    expected = {
        "/etc/etcd/pki/server.key": "etcd",
        "/etc/etcd/pki/peer.key": "etcd",
        "/etc/etcd/pki/healthcheck-client.key": "root",
        "/etc/etcd/pki/admin.key": "root",
    }
    for member in topology.members:
        for path, owner in expected.items():
            f = host_of(member).file(path)
            assert (f.user, f.mode) == (owner, 0o600), f"{member}:{path} is {f.user} {oct(f.mode)}"
    for apiserver in topology.apiservers:
        f = host_of(apiserver).file("/etc/kubernetes/pki/apiserver-etcd-client.key")
        assert (f.user, f.mode) == ("root", 0o600)


def private_key_fingerprints(host: Host) -> dict[str, str]:
    """Public-key fingerprint of every unencrypted private key file on the host, by path."""
    # pipefail: an encrypted key (openssl cannot read it without its passphrase) must give no line,
    # not the hash of empty input; the CA keys' bodies are searched for separately below.
    script = r"""
set -o pipefail
dirs="/etc /root /var /home /tmp /opt /usr/local /srv"
for f in $(grep -rlIs -e '-----BEGIN .*PRIVATE KEY-----' $dirs 2>/dev/null); do
  fp=$(openssl pkey -in "$f" -passin pass: -pubout 2>/dev/null | sha256sum | cut -d' ' -f1) && echo "$f $fp"
done
"""
    # bash: bookworm's sh (dash 0.5.12) has no pipefail, and `set -o pipefail` there ends the script
    # before any key is read.
    out = host.run("bash -c %s", script).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def controller_public_fingerprint(cert: Path) -> str:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pub = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def test_no_ca_private_key_and_no_foreign_private_key_on_any_node(
    topology: Topology, host_of: HostOf
) -> None:
    pki_dir = controller_pki_dir(topology)
    ca_fingerprints = {controller_public_fingerprint(p) for p in pki_dir.glob("*.crt")}
    assert ca_fingerprints, f"no CA certificates found in {pki_dir}"
    apiserver = topology.apiservers[0]
    apiserver_key = private_key_fingerprints(host_of(apiserver)).get(
        "/etc/kubernetes/pki/apiserver-etcd-client.key"
    )
    assert apiserver_key, "the apiserver's etcd client key is missing"
    for name in topology.all_hosts:
        keys = private_key_fingerprints(host_of(name))
        # A search that read nothing proves nothing: each member's own server key must be among them.
        assert name not in topology.members or "/etc/etcd/pki/server.key" in keys, f"{name}: {keys}"
        for path, fingerprint in keys.items():
            assert fingerprint not in ca_fingerprints, f"a CA private key is on {name} at {path}"
            if name != apiserver:
                assert fingerprint != apiserver_key, f"the apiserver's key is also on {name} at {path}"
        for path in keys:
            assert not re.search(r"ca\.key$", path), f"{name}: {path}"
    # Encrypted or not, a CA key file's own bytes: 40 characters from inside each body.
    pieces = {
        key.name: "".join(
            ln for ln in key.read_text().splitlines() if not ln.startswith("-") and ":" not in ln
        )[64:104]
        for key in pki_dir.glob("*.key")
    }
    assert pieces and all(len(piece) == 40 for piece in pieces.values()), pieces
    for name in topology.all_hosts:
        for key, piece in pieces.items():
            found = host_of(name).run(f"grep -rlF -e {piece} /etc /root /var /home /tmp /opt /usr/local /srv")
            assert found.stdout.strip() == "", f"the CA key {key} is on {name}: {found.stdout}"


def test_controller_holds_only_ca_material(topology: Topology) -> None:
    """Only CSRs travel to the controller: no node key is ever stored there."""
    names = sorted(p.name for p in controller_pki_dir(topology).iterdir())
    assert set(names) <= {"etcd-ca.crt", "etcd-ca.key", "etcd-peer-ca.crt", "etcd-peer-ca.key"}, names


def controller_pki_dir(topology: Topology) -> Path:
    """The CA directory on the controller: ETCD_TEST_PKI_DIR, else the lab's (.lab/pki/<cluster>)."""
    configured = os.environ.get("ETCD_TEST_PKI_DIR")
    if configured:
        return Path(configured)
    return REPO / ".lab" / "pki" / str(topology.cluster_vars.get("etcd_cluster_name", "etcd"))


def test_unit_sandbox_scores_2_or_lower(topology: Topology, host_of: HostOf) -> None:
    for member in topology.members:
        out = host_of(member).check_output("systemd-analyze security --no-pager etcd.service | tail -n 1")
        match = re.search(r"exposure level for etcd.service: ([0-9.]+)", out)
        assert match, out
        assert float(match.group(1)) <= 2.0, out


def test_a_members_fqdn_is_a_name_in_its_certificates(topology: Topology, host_of: HostOf) -> None:
    named = {m: topology.var(m, "etcd_pki_member_fqdn") for m in topology.members}
    named = {m: fqdn for m, fqdn in named.items() if fqdn}
    if not named:
        pytest.skip("no member of this inventory sets etcd_pki_member_fqdn")
    for member in topology.members:
        for cert in ("server", "peer"):
            text = host_of(member).check_output(
                f"openssl x509 -noout -ext subjectAltName -in /etc/etcd/pki/{cert}.crt"
            )
            dns_names = set(re.findall(r"DNS:([^,\s]+)", text))
            if member in named:
                assert named[member] in dns_names, (member, cert, text)
            # Another member's name never reaches a certificate.
            assert not (set(named.values()) - {named.get(member)}) & dns_names, (member, cert, text)
