"""The audit judges evidence: each control passes, fails with a reason, or is not applicable.

The integration tests collect real evidence from the lab and loosen real hosts; these pin down the
judging itself, on static pods, units, handshake transcripts and nft tables as the hosts print them.
"""

from __future__ import annotations

import copy
import datetime
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from audit import (
    FAIL,
    NA,
    PASS,
    Check,
    firewall_verdict,
    flags_from_unit,
    judge,
    junit,
    tls_verdict,
)

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime.datetime(2026, 11, 24, tzinfo=datetime.UTC)


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.cis or c.id: c.status for c in checks}


def run_audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts/audit.py"), *args], capture_output=True, text=True, check=False
    )


def test_a_known_bad_kubeadm_manifest_fails_exactly_the_loosened_controls() -> None:
    result = run_audit("--kubeadm-etcd-manifest", str(FIXTURES / "kubeadm-etcd-bad.yaml"), "--json", "-")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    failed = {c["cis"]: c["detail"] for c in report["checks"] if c["status"] == FAIL}
    assert failed == {
        "2.1": "--key-file not set",
        "2.2": "--client-cert-auth=false",
        "2.3": "--auto-tls=true",
        "2.5": "--peer-client-cert-auth=false (not set)",
        "2.6": "--peer-auto-tls=true",
    }
    assert report["summary"] == {"pass": 1, "fail": 5, "n/a": 0}


def test_kubeadms_own_manifest_passes_the_flag_controls() -> None:
    result = run_audit("--kubeadm-etcd-manifest", str(FIXTURES / "kubeadm-etcd-good.yaml"))
    assert result.returncode == 0, result.stdout
    assert "6 passed, 0 failed, 0 not applicable" in result.stdout


def test_the_unit_is_read_as_systemd_reads_it_drop_ins_last() -> None:
    unit = (
        "# /etc/systemd/system/etcd.service\n[Service]\n"
        "ExecStart=/usr/bin/etcd \\\n  --client-cert-auth=true \\\n"
        "  --data-dir=/var/lib/etcd/lab\n\n# /etc/systemd/system/etcd.service.d/debug.conf\n[Service]\n"
        "ExecStart=\nExecStart=/usr/bin/etcd --client-cert-auth=false --data-dir /srv/etcd\n"
    )
    assert flags_from_unit(unit) == {"client-cert-auth": "false", "data-dir": "/srv/etcd"}


def test_the_environment_file_counts_only_where_the_command_line_is_silent() -> None:
    member = {
        "source": "systemd",
        "config_text": "ExecStart=/usr/bin/etcd --client-cert-auth=true\n",
        "environment_text": "ETCD_CLIENT_CERT_AUTH=false\nETCD_PEER_AUTO_TLS=true\n",
    }
    result = statuses(judge([{"host": "m1", "member": member}], NOW))
    assert (result["2.2"], result["2.6"]) == (PASS, FAIL)


# As OpenSSL 3.5 prints them (trimmed by the role's grep): it names the protocol it tried even
# when the server refused it.
CLIENT_CERT_DEMANDED = """== tls1.1
40072956127F0000:error:0A00042E:SSL routines:ssl3_read_bytes:tlsv1 alert protocol version:SSL alert number 70
New, (NONE), Cipher is (NONE)
Protocol: TLSv1.1
    Protocol  : TLSv1.1
== default
Acceptable client certificate CA names
New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256
Protocol: TLSv1.3
4037:error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate required:SSL alert number 116
"""


def test_a_served_policy_is_judged_from_the_handshakes() -> None:
    assert tls_verdict(CLIENT_CERT_DEMANDED) == (
        PASS,
        "TLS 1.1 refused; TLSv1.3 with a client certificate demanded",
    )
    no_client_cert = CLIENT_CERT_DEMANDED.replace("Acceptable client certificate CA names\n", "")
    assert tls_verdict(no_client_cert)[0] == FAIL
    old_accepted = (
        "== tls1.1\nNew, TLSv1.1, Cipher is ECDHE-RSA-AES256-SHA\n    Protocol  : TLSv1.1\n== default\n"
    )
    assert tls_verdict(old_accepted) == (FAIL, "a TLS 1.1 handshake succeeded")
    assert tls_verdict("== tls1.1\nconnect:errno=111\n== default\nconnect:errno=111\n")[0] == FAIL


LAB_TABLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "fixtures/etcd_firewall_table.json").read_text()
)
EXPECTED_FIREWALL = {
    "table": "etcd_firewall",
    "rules": {
        "clients": {"port": "2379", "sources": ["10.90.25.11", "10.90.25.12", "10.90.25.13", "10.90.25.21",
                                                "127.0.0.0/8", "::1"]},
        "peers": {"port": "2380", "sources": ["10.90.25.11", "10.90.25.12", "10.90.25.13"]},
        "metrics": {"port": "2381", "sources": ["127.0.0.0/8", "::1"]},
    },
}  # fmt: skip


def edited_table(edit: Callable[[list[dict[str, Any]]], None]) -> str:
    listing = copy.deepcopy(LAB_TABLE)
    edit(listing["nftables"])
    return json.dumps(listing)


def first_rule_index(entries: list[dict[str, Any]]) -> int:
    return next(i for i, e in enumerate(entries) if "rule" in e)


def test_the_firewall_must_let_in_exactly_the_inventorys_sources() -> None:
    member: dict[str, Any] = {"firewall": json.dumps(LAB_TABLE), "expected": {"firewall": EXPECTED_FIREWALL}}
    status, detail = firewall_verdict(member)
    assert status == PASS and "ports 2379, 2380, 2381 meet drop (IPv4 and IPv6)" in detail, detail

    def widen(entries: list[dict[str, Any]]) -> None:
        entries[1]["set"]["elem"].append({"prefix": {"addr": "10.90.24.0", "len": 24}})

    member["firewall"] = edited_table(widen)
    status, detail = firewall_verdict(member)
    assert status == FAIL and "port 2379 (clients): extra ['10.90.24.0/24']" in detail, detail
    member["firewall"] = ""
    assert firewall_verdict(member) == (FAIL, "table inet etcd_firewall is not loaded")


POLICY = "(chain input's policy accept)"
FIRST_RULE = "(chain input, rule 1)"


def accept_2379_from_anywhere(entries: list[dict[str, Any]]) -> None:
    match = {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 2379}}
    entries.insert(first_rule_index(entries), {"rule": {"chain": "input", "expr": [match, {"accept": None}]}})


def drop_only_ipv4(entries: list[dict[str, Any]]) -> None:
    nfproto = {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}
    entries[-1]["rule"]["expr"].insert(0, nfproto)


def drop_another_port(entries: list[dict[str, Any]]) -> None:
    entries[-1]["rule"]["expr"][0]["match"]["right"] = 9999


def no_drop_at_all(entries: list[dict[str, Any]]) -> None:
    entries.pop()


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (accept_2379_from_anywhere, f"port 2379: a packet from 192.0.2.1 can meet accept {FIRST_RULE}"),
        (drop_only_ipv4, f"port 2379: a packet from 2001:db8::1 can meet accept {POLICY}"),
        (drop_another_port, f"port 2380: a packet from 192.0.2.1 can meet accept {POLICY}"),
        (no_drop_at_all, f"port 2381: a packet from 192.0.2.1 can meet accept {POLICY}"),
    ],
)  # fmt: skip
def test_the_firewall_is_judged_by_what_a_packet_from_elsewhere_meets(
    edit: Callable[[list[dict[str, Any]]], None], said: str
) -> None:
    """Tables whose sets match the inventory and that have a drop rule: the old check passed each."""
    member = {"firewall": edited_table(edit), "expected": {"firewall": EXPECTED_FIREWALL}}
    status, detail = firewall_verdict(member)
    assert status == FAIL and said in detail, detail


def test_an_allowed_source_that_cannot_get_in_fails_too() -> None:
    def drop_first(entries: list[dict[str, Any]]) -> None:
        entries.insert(first_rule_index(entries), {"rule": {"chain": "input", "expr": [{"drop": None}]}})

    member = {"firewall": edited_table(drop_first), "expected": {"firewall": EXPECTED_FIREWALL}}
    status, detail = firewall_verdict(member)
    assert status == FAIL and "port 2379: 10.90.25.21, an allowed source, can meet drop" in detail, detail


def self_signed(name: str, days: int) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM).decode()


def test_certificates_inside_the_renewal_window_and_a_shared_ca_fail() -> None:
    etcd_ca = self_signed("etcd-ca", 3650)
    member: dict[str, Any] = {
        "source": "systemd",
        "config_text": "ExecStart=/usr/bin/etcd --cert-file=/s --peer-cert-file=/p --trusted-ca-file=/ca\n",
        "certificates": {
            "cert-file": self_signed("s", 5),
            "peer-cert-file": self_signed("p", 400),
            "trusted-ca-file": etcd_ca,
        },
        "expected": {"renewal_days": 30},
    }
    checks = {c.id: c for c in judge([{"host": "m1", "member": member}], NOW)}
    assert checks["etcd-cert-file-expiry"].status == FAIL
    assert "5 days left, inside the 30-day renewal window" in checks["etcd-cert-file-expiry"].detail
    assert checks["etcd-peer-cert-file-expiry"].status == PASS
    assert checks["etcd-own-ca"].status == NA  # no Kubernetes CA on the host: not a pass
    member["certificates"]["kubernetes-ca"] = etcd_ca
    checks = {c.id: c for c in judge([{"host": "m1", "member": member}], NOW)}
    assert (checks["etcd-own-ca"].status, checks["etcd-own-ca"].detail) == (
        FAIL,
        "etcd trusts the Kubernetes CA itself",
    )


def test_modes_and_owners_are_judged_against_cis() -> None:
    member = {
        "source": "systemd",
        "config_files": ["/etc/systemd/system/etcd.service"],
        "config_text": "ExecStart=/usr/bin/etcd --data-dir=/var/lib/etcd/x --key-file=/k --peer-key-file=/pk",
        "stats": {
            "/etc/systemd/system/etcd.service": {
                "exists": True,
                "mode": "0644",
                "pw_name": "root",
                "gr_name": "root",
            },
            "/var/lib/etcd/x": {"exists": True, "mode": "0755", "pw_name": "etcd", "gr_name": "etcd"},
            "/k": {"exists": True, "mode": "0600", "pw_name": "etcd", "gr_name": "etcd"},
            "/pk": {"exists": True, "mode": "0640", "pw_name": "nobody", "gr_name": "etcd"},
        },
        "expected": {"user": "etcd"},
    }
    checks = {c.id: c for c in judge([{"host": "m1", "member": member}], NOW)}
    assert checks["etcd-config-mode"].status == FAIL and "mode 0644" in checks["etcd-config-mode"].detail
    assert checks["etcd-config-owner"].status == PASS
    assert checks["etcd-data-dir-mode"].detail == "/var/lib/etcd/x: mode 0755 (want 0700 or stricter)"
    assert checks["etcd-data-dir-owner"].status == PASS
    assert checks["etcd-key-file-mode"].status == PASS
    assert checks["etcd-peer-key-file-mode"].detail.startswith(
        "/pk: mode 0640 (want 0600 or stricter), owner nobody:etcd"
    )


KUBE_BENCH_CONFS = [
    "/etc/kubernetes/manifests/etcd.yaml",
    "/etc/etcd/etcd.conf",
    "/usr/lib/systemd/system/etcd.service",
]


@pytest.mark.parametrize(
    ("stat_lines", "expected"),
    [
        pytest.param(
            ["/usr/lib/systemd/system/etcd.service 644 root:root"],
            (FAIL, "/usr/lib/systemd/system/etcd.service: mode 0644 (want 0600 or stricter)"),
            id="the Debian package's unit, as installed",
        ),
        pytest.param(
            ["/usr/lib/systemd/system/etcd.service 600 root:root"],
            (PASS, "/usr/lib/systemd/system/etcd.service: 0600 root:root"),
            id="the package's unit under a stat override",
        ),
        pytest.param(
            ["/etc/etcd/etcd.conf 600 root:root", "/usr/lib/systemd/system/etcd.service 644 root:root"],
            (PASS, "/etc/etcd/etcd.conf: 0600 root:root"),
            id="the first file of the list that exists is the one judged",
        ),
        pytest.param(
            [], (FAIL, "no file of kube-bench's etcd list that exists is configured"), id="none exists"
        ),
    ],
)
def test_cis_1_1_7_is_judged_on_the_file_kube_bench_picks(
    stat_lines: list[str], expected: tuple[str, str]
) -> None:
    member = {
        "source": "systemd",
        "config_text": "ExecStart=/usr/bin/etcd",
        "kube_bench_confs": KUBE_BENCH_CONFS,
        "kube_bench_stats": stat_lines,
        "expected": {"user": "etcd"},
    }
    checks = {c.id: c for c in judge([{"host": "m1", "member": member}], NOW)}
    assert (
        checks["etcd-kube-bench-config-mode"].status,
        checks["etcd-kube-bench-config-mode"].detail,
    ) == expected


def test_apparmor_without_a_kernel_that_has_it_is_not_applicable_never_a_pass() -> None:
    member = {
        "running": {"pid": "42", "apparmor_kernel": ""},
        "mount": "tmpfs tmpfs -",
        # As in the lab's containers: the inventory accepts a kernel without AppArmor.
        "expected": {"storage_mode": "tmpfs", "apparmor_require_kernel": False},
    }
    checks = {c.id: c for c in judge([{"host": "m1", "member": member}], NOW)}
    assert checks["etcd-apparmor"].status == NA
    assert checks["etcd-data-at-rest"].status == PASS
    member["running"] = {"pid": "42", "apparmor_kernel": "Y", "apparmor": "etcd (complain)"}
    member["mount"] = "ext4 /dev/vda1 disk"
    checks = {c.id: c for c in judge([{"host": "m1", "member": member}], NOW)}
    assert checks["etcd-apparmor"].status == FAIL
    assert (checks["etcd-data-at-rest"].status, checks["etcd-data-at-rest"].detail) == (
        FAIL,
        "ext4 on /dev/vda1, a disk device (disk)",
    )


def member_judged(running: dict[str, str], mount: str, **expected: object) -> dict[str, Check]:
    member = {"running": running, "mount": mount, "expected": expected}
    return {c.id: c for c in judge([{"host": "m1", "member": member}], NOW)}


def test_only_a_dm_crypt_device_counts_as_luks() -> None:
    running = {"pid": "42", "apparmor_kernel": "Y", "apparmor": "etcd (enforce)"}
    lvm = member_judged(running, "ext4 /dev/mapper/vg0-etcd lvm", storage_mode="luks")
    crypt = member_judged(running, "ext4 /dev/mapper/etcd-data crypt", storage_mode="luks")
    assert (lvm["etcd-data-at-rest"].status, lvm["etcd-data-at-rest"].detail) == (
        FAIL,
        "ext4 on /dev/mapper/vg0-etcd, a lvm device (disk)",
    )
    assert crypt["etcd-data-at-rest"].status == PASS


def test_apparmor_passes_only_for_etcds_own_profile_and_a_missing_kernel_fails_when_required() -> None:
    mount = "tmpfs tmpfs -"
    enforced = {"pid": "42", "apparmor_kernel": "Y", "apparmor": "etcd (enforce)"}
    other = {"pid": "42", "apparmor_kernel": "Y", "apparmor": "unconfined-but-named (enforce)"}
    no_kernel = {"pid": "42", "apparmor_kernel": "N"}
    label = {"apparmor_label": "etcd (enforce)"}
    assert member_judged(enforced, mount, **label)["etcd-apparmor"].status == PASS
    assert member_judged(other, mount, **label)["etcd-apparmor"].detail == (
        "running etcd: unconfined-but-named (enforce) (want etcd (enforce))"
    )
    assert member_judged(other, mount, **label)["etcd-apparmor"].status == FAIL
    required = member_judged(no_kernel, mount, apparmor_require_kernel=True)["etcd-apparmor"]
    assert (required.status, required.detail) == (
        FAIL,
        "the kernel has no AppArmor, and the inventory requires enforcement",
    )
    assert member_judged(no_kernel, mount, apparmor_require_kernel=False)["etcd-apparmor"].status == NA


def test_an_apiserver_without_a_manifest_is_not_applicable_and_a_loose_one_fails() -> None:
    assert {c.status for c in judge([{"host": "a1", "apiserver": {"manifest_text": ""}}])} == {NA}
    manifest = "spec:\n  containers:\n  - command: [kube-apiserver, --etcd-cafile=/ca, --etcd-certfile=/c]\n"
    result = statuses(judge([{"host": "a1", "apiserver": {"manifest_text": manifest}}]))
    assert result == {"1.2.26": FAIL, "1.2.29": PASS, "1.2.30": FAIL, "1.2.31": FAIL}


@pytest.mark.parametrize(
    ("entries", "status", "detail"),
    [
        ([{"resources": ["secrets"], "providers": ["secretbox", "identity"]}], PASS, "secretbox > identity"),
        ([{"resources": ["*.*"], "providers": ["kms", "aescbc"]}], PASS, "kms > aescbc"),
        (
            [{"resources": ["secrets"], "providers": ["identity", "aescbc"]}],
            FAIL,
            "identity encrypts Secrets",
        ),
        ([{"resources": ["secrets"], "providers": ["aesgcm"]}], FAIL, "aesgcm encrypts Secrets"),
        ([{"resources": ["configmaps"], "providers": ["aescbc"]}], FAIL, "no entry"),
        ([], FAIL, "no EncryptionConfiguration could be read"),
    ],
)
def test_the_provider_that_encrypts_secrets_is_judged(
    entries: list[dict[str, Any]], status: str, detail: str
) -> None:
    manifest = "spec:\n  containers:\n  - command: [kube-apiserver, --encryption-provider-config=/e.yaml]\n"
    checks = judge([{"host": "a1", "apiserver": {"manifest_text": manifest, "encryption": entries}}])
    (check,) = [c for c in checks if c.cis == "1.2.31"]
    assert check.status == status and detail in check.detail, check


def test_junit_has_a_failure_per_failed_check_and_skips_what_does_not_apply() -> None:
    checks = [
        Check("m1", "a", "2.2", "client auth", FAIL, "--client-cert-auth=false"),
        Check("m1", "b", "", "apparmor", NA, "no AppArmor"),
        Check("m1", "c", "2.1", "cert", PASS, "ok"),
    ]
    suite = ET.fromstring(junit(checks)).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase/failure")
    assert failure is not None and failure.get("message") == "--client-cert-auth=false"


def test_an_audit_of_no_host_is_no_verdict(tmp_path: Path) -> None:
    result = run_audit("--evidence-dir", str(tmp_path))
    assert result.returncode == 2 and "no host was audited" in result.stderr, result.stdout


OWN_UNIT = [
    "/etc/systemd/system/etcd.service",
    "/etc/systemd/system/etcd.service.d/10-etcd-firewall.conf",
    "/etc/systemd/system/etcd.service.d/20-etcd-apparmor.conf",
]
LISTENERS = ["10.0.0.1:2379", "127.0.0.1:2379", "10.0.0.1:2380", "127.0.0.1:2381"]


def behaviour(config_files: list[str], listeners: str, environment: str = "") -> dict[str, tuple[str, str]]:
    member = {
        "source": "systemd",
        "config_files": config_files,
        "running": {"pid": "42", "listeners": listeners, "environment": environment},
        "expected": {
            "unit_files": OWN_UNIT,
            "listeners": LISTENERS,
            "allowed_environment": "^ETCD_INITIAL_CLUSTER_STATE=(new|existing)$",
        },
    }
    checks = judge([{"host": "m1", "member": member}], NOW)
    return {
        c.id: (c.status, c.detail)
        for c in checks
        if c.id in ("etcd-unit-files", "etcd-listeners", "etcd-environment")
    }


def test_the_unit_as_systemd_loads_it_the_sockets_and_the_environment_are_judged() -> None:
    clean = behaviour(OWN_UNIT, ",".join(sorted(LISTENERS)), "ETCD_INITIAL_CLUSTER_STATE=existing")
    assert {check: status for check, (status, _) in clean.items()} == {
        "etcd-unit-files": PASS,
        "etcd-listeners": PASS,
        "etcd-environment": PASS,
    }
    # The attack found in review: a drop-in resets ExecStart= and adds a plain-HTTP listener.
    drop_in = "/etc/systemd/system/etcd.service.d/99-local.conf"
    attacked = behaviour(
        [*OWN_UNIT, drop_in], ",".join([*LISTENERS, "0.0.0.0:4001"]), "ETCD_ENABLE_PPROF=true"
    )
    assert attacked == {
        "etcd-unit-files": (FAIL, f"not written by the toolkit: {drop_in}"),
        "etcd-listeners": (FAIL, "also listens on 0.0.0.0:4001"),
        "etcd-environment": (FAIL, "started with ETCD_ENABLE_PPROF"),
    }


def test_no_socket_read_is_not_evidence_of_no_extra_socket() -> None:
    assert behaviour(OWN_UNIT, "")["etcd-listeners"] == (
        FAIL,
        "no listening socket was read (nothing is evidence of nothing)",
    )
    missing = behaviour(OWN_UNIT, "127.0.0.1:2379,127.0.0.1:2381")["etcd-listeners"]
    assert missing == (FAIL, "does not listen on 10.0.0.1:2379, 10.0.0.1:2380")


def membership(listing: object, members: dict[str, str], source: str = "systemd") -> tuple[str, str]:
    member = {"source": source, "membership": json.dumps(listing), "expected": {"members": members}}
    found = [c for c in judge([{"host": "m1", "member": member}], NOW) if c.id == "etcd-membership"]
    return found[0].status, found[0].detail


def test_the_live_membership_must_be_the_inventorys_started_voting_members() -> None:
    members = {"m1": "https://10.0.0.1:2380", "m2": "https://10.0.0.2:2380", "m3": "https://10.0.0.3:2380"}
    live = [{"ID": i, "name": n, "peerURLs": [u]} for i, (n, u) in enumerate(members.items(), 1)]
    assert membership({"members": live}, members) == (
        PASS, "3 started voting members, as in the inventory: m1, m2, m3"
    )  # fmt: skip
    # The review's case: an entry added with `etcdctl member add` that never started.
    stale = {"members": [*live, {"ID": 9, "peerURLs": ["https://10.0.0.9:2380"]}]}
    status, detail = membership(stale, members)
    assert status == FAIL and "https://10.0.0.9:2380" in detail and "not in the inventory" in detail, detail
    learner = {"members": [*live[:2], {**live[2], "isLearner": True}]}
    assert membership(learner, members)[0] == FAIL
    # Nothing read is not evidence of a good membership.
    assert membership("", members)[0] == FAIL
    assert membership(None, members)[0] == FAIL
    assert membership({"members": live}, {})[0] == FAIL
    assert membership({"members": live}, members, source="kubeadm")[0] == NA
