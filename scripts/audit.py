#!/usr/bin/env python3
"""Compliance audit: judge every control the toolkit claims, on every host, from what the hosts run.

`playbooks/audit.yml` (roles/etcd_audit) collects read-only evidence on each etcd member and
apiserver: etcd's flags (from the toolkit's systemd unit, or from a kubeadm stacked etcd's static
pod), the modes and owners of its files, its public certificates, TLS as served (real handshakes
with openssl), the firewall table, where the data directory is mounted, the AppArmor confinement of
the running etcd and the unit's sandbox score. This script runs that playbook and judges the
evidence, with the CIS Kubernetes Benchmark id where there is one (numbering of v1.8/1.9):

    audit.py -i inventory/lab                              # table; exit 1 on any failure
    audit.py -i inventory/prod --json audit.json --junit audit.xml
    audit.py --evidence-dir DIR                            # judge evidence already collected
    audit.py --kubeadm-etcd-manifest etcd.yaml --json -    # only a static pod's flags and paths

Each check passes, fails, or is not applicable (n/a, with the reason: e.g. no AppArmor in the
kernel); n/a is never counted as a pass. Exit 0 when nothing failed, 1 on any failure, 2 when the
evidence could not be collected.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nft_packet
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

REPO = Path(__file__).resolve().parent.parent
# The membership judgement is the filter the site play and its summary use: one home for it.
sys.path.insert(0, str(REPO / "plugins/filter"))
from etcd_membership import etcd_membership_problems  # noqa: E402

PASS, FAIL, NA = "pass", "fail", "n/a"
# systemd-analyze security: 0 is fully sandboxed, 10 is not at all; the toolkit's unit scores
# about 1 (1.1 in the VM tier). Above this, a sandbox directive was lost.
MAX_SANDBOX_EXPOSURE = 2.0
KEY_FLAGS = ("key-file", "peer-key-file")


@dataclass(frozen=True)
class Check:
    host: str
    id: str
    cis: str
    title: str
    status: str
    detail: str


Evidence = dict[str, Any]


# ---------------------------------------------------------------- reading the flags


def flags_from_command(argv: Iterable[str]) -> dict[str, str]:
    """--name=value and --name value pairs; a bare --name is "true"; the last one wins, as for etcd."""
    flags: dict[str, str] = {}
    words = list(argv)
    for index, word in enumerate(words):
        if not word.startswith("--"):
            continue
        name, sep, value = word[2:].partition("=")
        if not sep:
            following = words[index + 1] if index + 1 < len(words) else ""
            value = following if following and not following.startswith("-") else "true"
        flags[name] = value
    return flags


def flags_from_unit(unit_text: str) -> dict[str, str]:
    """The flags of the last ExecStart= in `systemctl cat` output (drop-ins after the unit)."""
    joined = re.sub(r"\\\n", " ", unit_text)
    commands = [line.split("=", 1)[1] for line in joined.splitlines() if line.startswith("ExecStart=")]
    commands = [command for command in commands if command.strip()]
    return flags_from_command(shlex.split(commands[-1])) if commands else {}


def flags_from_environment(environment_text: str) -> dict[str, str]:
    """ETCD_CLIENT_CERT_AUTH=true -> client-cert-auth: true (etcd reads these when no flag is given)."""
    flags = {}
    for line in environment_text.splitlines():
        match = re.match(r"\s*(?:export\s+)?ETCD_([A-Z0-9_]+)\s*=\s*(.*?)\s*$", line)
        if match:
            flags[match.group(1).lower().replace("_", "-")] = match.group(2).strip("\"'")
    return flags


def pod_command(manifest_text: str) -> list[str]:
    """The first container's command and args of a static pod manifest."""
    pod = yaml.safe_load(manifest_text) or {}
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    container = containers[0]
    return [str(word) for word in (container.get("command") or []) + (container.get("args") or [])]


def member_flags(member: Evidence) -> dict[str, str]:
    if member.get("source") == "kubeadm":
        return flags_from_command(pod_command(member.get("config_text", "")))
    from_unit = flags_from_unit(member.get("config_text", ""))
    return {**flags_from_environment(member.get("environment_text", "")), **from_unit}


# ---------------------------------------------------------------- judging a member


def mode_at_most(stat: dict[str, Any], limit: int) -> bool:
    return int(str(stat.get("mode", "7777")), 8) & ~limit == 0


def file_check(
    stats: dict[str, Any], path: str | None, what: str, limit: int | None, owners: Sequence[str]
) -> tuple[str, str]:
    """A file's mode (at most `limit`, when given) and owner (one of `owners`, when given)."""
    if not path:
        return FAIL, f"no {what} is configured"
    stat = stats.get(path) or {}
    if not stat.get("exists"):
        return FAIL, f"{path} does not exist"
    mode, owner = stat.get("mode", "?"), f"{stat.get('pw_name')}:{stat.get('gr_name')}"
    problems = []
    if limit is not None and not mode_at_most(stat, limit):
        problems.append(f"mode {mode} (want {limit:04o} or stricter)")
    if owners and owner not in owners:
        problems.append(f"owner {owner} (want {' or '.join(owners)})")
    return (FAIL, f"{path}: " + ", ".join(problems)) if problems else (PASS, f"{path}: {mode} {owner}")


def certificate(pem: str | None) -> x509.Certificate | None:
    if not pem or "BEGIN CERTIFICATE" not in pem:
        return None
    return x509.load_pem_x509_certificate(pem.encode())


def tls_verdict(transcript: str) -> tuple[str, str]:
    """Judge `openssl s_client` output: TLS 1.1 refused, and a client certificate demanded."""
    if not transcript.strip():
        return NA, "no endpoint to shake hands with"
    old, _, default = transcript.partition("== default")
    # OpenSSL names the protocol it tried even when the server refused it: only a cipher agreed on
    # ("Cipher is X", not "(NONE)") shows that a TLS 1.1 session was made.
    old_accepted = bool(re.search(r"Cipher is (?!\(NONE\))\S", old))
    session = re.search(r"^New, (TLSv[0-9.]+)", default, re.M)
    tried = re.search(r"Protocol\s*:\s*(\S+)", default)
    demanded = "Acceptable client certificate CA names" in default or "Client Certificate Types" in default
    if old_accepted:
        return FAIL, "a TLS 1.1 handshake succeeded"
    if demanded:
        found = session or tried
        version = found.group(1) if found else "TLS"
        return PASS, f"TLS 1.1 refused; {version} with a client certificate demanded"
    if session:
        return FAIL, f"{session.group(1)} served without asking for a client certificate"
    return FAIL, "no TLS handshake at all (is etcd running?)"


def networks(addresses: Iterable[str]) -> set[nft_packet.Network]:
    parsed = [ipaddress.ip_network(address, strict=False) for address in addresses]
    v4 = ipaddress.collapse_addresses(n for n in parsed if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in parsed if isinstance(n, ipaddress.IPv6Network))
    return set(v4) | set(v6)


def nft_set_elements(table: nft_packet.Table, name: str) -> list[str]:
    """The set's elements as networks (a range as the networks that make it up)."""
    elements: list[str] = []
    for element in table.sets.get(name, []):
        found = nft_packet.element_networks(element)
        elements += [str(n) for n in found] if found is not None else [str(element)]
    return elements


# Addresses to send a packet from, on paper, when judging the firewall: the first of each family
# that no rule's sources hold (documentation ranges first, then private ones).
OUTSIDERS = tuple(
    ipaddress.ip_address(a)
    for a in ("192.0.2.1", "198.51.100.1", "10.255.255.254", "100.127.255.254",
              "2001:db8::1", "fd00:ffff::1", "fe80::ffff")
)  # fmt: skip


def packets_meet(table: nft_packet.Table, port: int, wanted: set[nft_packet.Network]) -> list[str]:
    """What a packet from outside `wanted`, and one from inside each of its networks, meets at port."""
    problems = []
    for version in (4, 6):
        outsider = next(
            (a for a in OUTSIDERS if a.version == version and not any(a in n for n in wanted)), None
        )
        if outsider is None:
            problems.append(f"port {port}: the sources hold every test address of IPv{version}")
            continue
        ends = table.outcomes(nft_packet.Packet(outsider, port))
        if any(o.verdict != nft_packet.DROP for o in ends):
            problems.append(f"port {port}: a packet from {outsider} can meet {describe(ends)}")
    for network in sorted(wanted, key=str):
        inside = network[1] if network.num_addresses > 2 else network.network_address
        ends = table.outcomes(nft_packet.Packet(inside, port))
        if any(o.verdict != nft_packet.ACCEPT for o in ends):
            problems.append(f"port {port}: {inside}, an allowed source, can meet {describe(ends)}")
    return problems


def describe(outcomes: list[nft_packet.Outcome]) -> str:
    return ", ".join(sorted({f"{o.verdict} ({o.why})" for o in outcomes}))


def firewall_verdict(member: Evidence) -> tuple[str, str]:
    """The table's address sets are exactly the inventory's, and what a packet actually meets in it:
    from outside the sources (IPv4 and IPv6), drop at every etcd port; from each source, accept."""
    expected = (member.get("expected") or {}).get("firewall") or {}
    if not member.get("firewall"):
        return FAIL, f"table inet {expected.get('table', 'etcd_firewall')} is not loaded"
    if not expected:
        return NA, "the inventory does not say who may connect (etcd_firewall_enabled is false)"
    table = nft_packet.Table(json.loads(member["firewall"]))
    problems = []
    ports = []
    for name, rule in expected.get("rules", {}).items():
        actual = networks(nft_set_elements(table, f"{name}_v4") + nft_set_elements(table, f"{name}_v6"))
        want = networks(rule.get("sources", []))
        if actual != want:
            extra = sorted(str(n) for n in actual - want)
            missing = sorted(str(n) for n in want - actual)
            problems.append(
                f"port {rule.get('port')} ({name}): extra {extra or '-'}, missing {missing or '-'}"
            )
        ports.append(int(rule["port"]))
        problems += packets_meet(table, ports[-1], want)
    if not ports:
        problems.append("the inventory names no port to judge")
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, (
        f"sources match the inventory; from elsewhere, ports {', '.join(map(str, ports))} meet drop"
        " (IPv4 and IPv6), and each source meets accept"
    )


# One judged control: (id, CIS id or "", title, (status, detail)).
Verdict = tuple[str, str, str, tuple[str, str]]


def tls_flag_verdicts(flags: dict[str, str]) -> list[Verdict]:
    """CIS 2.1-2.6: the TLS flags of etcd's command line (or environment)."""

    def both_set(*names: str) -> tuple[str, str]:
        unset = [f"--{name}" for name in names if not flags.get(name)]
        return (FAIL, f"{', '.join(unset)} not set") if unset else (PASS, ", ".join(flags[n] for n in names))

    def true_or_not(name: str, want_true: bool) -> tuple[str, str]:
        value = flags.get(name, "false (not set)")
        return (PASS if (value == "true") == want_true else FAIL, f"--{name}={value}")

    return [
        ("etcd-cert-key", "2.1", "--cert-file and --key-file are set", both_set("cert-file", "key-file")),
        ("etcd-client-cert-auth", "2.2", "--client-cert-auth is true", true_or_not("client-cert-auth", True)),
        ("etcd-auto-tls", "2.3", "--auto-tls is not true", true_or_not("auto-tls", False)),
        ("etcd-peer-cert-key", "2.4", "--peer-cert-file and --peer-key-file are set",
         both_set("peer-cert-file", "peer-key-file")),
        ("etcd-peer-client-cert-auth", "2.5", "--peer-client-cert-auth is true",
         true_or_not("peer-client-cert-auth", True)),
        ("etcd-peer-auto-tls", "2.6", "--peer-auto-tls is not true", true_or_not("peer-auto-tls", False)),
    ]  # fmt: skip


def certificate_verdicts(certs: dict[str, str], renewal_days: int, now: datetime.datetime) -> list[Verdict]:
    """CIS 2.7 (etcd's own CA) and each certificate's expiry against the renewal window."""
    etcd_ca, kubernetes_ca = (
        certificate(certs.get("trusted-ca-file")),
        certificate(certs.get("kubernetes-ca")),
    )
    if not etcd_ca:
        ca = (FAIL, "--trusted-ca-file is not set or is not a certificate")
    elif not kubernetes_ca:
        ca = (
            NA,
            f"no Kubernetes CA on this host to compare with (etcd CA {etcd_ca.subject.rfc4514_string()})",
        )
    elif etcd_ca.fingerprint(hashes.SHA256()) == kubernetes_ca.fingerprint(hashes.SHA256()):
        ca = (FAIL, "etcd trusts the Kubernetes CA itself")
    else:
        ca = (PASS, f"etcd CA {etcd_ca.subject.rfc4514_string()} is not the Kubernetes CA")
    verdicts: list[Verdict] = [("etcd-own-ca", "2.7", "etcd has a CA of its own, not the Kubernetes CA", ca)]
    renewal = datetime.timedelta(days=renewal_days)
    for flag in ("cert-file", "peer-cert-file"):
        cert = certificate(certs.get(flag))
        if not cert:
            verdict = (FAIL, f"--{flag} is not set or is not a certificate")
        elif (left := cert.not_valid_after_utc - now) > renewal:
            verdict = (PASS, f"{left.days} days left (renewal window {renewal.days} days)")
        else:
            expiry = f"expires {cert.not_valid_after_utc:%Y-%m-%d}, {left.days} days left"
            verdict = (FAIL, f"{expiry}, inside the {renewal.days}-day renewal window")
        verdicts.append(
            (f"etcd-{flag}-expiry", "", f"the --{flag} certificate expires after the renewal window", verdict)
        )
    return verdicts


def kube_bench_config(member: Evidence) -> tuple[str | None, dict[str, Any]]:
    """The file kube-bench would judge for CIS 1.1.7/1.1.8: the first of its list that exists.

    The evidence holds the list (etcd_audit_kube_bench_etcd_confs) and `stat --format "%n %a %U:%G"`
    lines for the files of it that exist; returns that file and its stat in file_check's form.
    """
    found: dict[str, Any] = {}
    for line in member.get("kube_bench_stats") or []:
        path, mode, owner = line.rsplit(" ", 2)
        user, _, group = owner.partition(":")
        found[path] = {"exists": True, "mode": f"{int(mode, 8):04o}", "pw_name": user, "gr_name": group}
    picked = next((path for path in member.get("kube_bench_confs") or [] if path in found), None)
    return picked, found


def file_verdicts(flags: dict[str, str], member: Evidence, user: str) -> list[Verdict]:
    """CIS 1.1.7, 1.1.8, 1.1.11, 1.1.12 and the private keys' modes and owners."""
    stats: dict[str, Any] = member.get("stats") or {}
    verdicts: list[Verdict] = []
    for config in member.get("config_files") or [None]:
        name = Path(config).name if config else "(none)"
        verdicts += [
            ("etcd-config-mode", "1.1.7", f"etcd's configuration {name} is 0600 or stricter",
             file_check(stats, config, "configuration file", 0o600, ())),
            ("etcd-config-owner", "1.1.8", f"etcd's configuration {name} is owned by root:root",
             file_check(stats, config, "configuration file", None, ("root:root",))),
        ]  # fmt: skip
    picked, stats_of = kube_bench_config(member)
    judged, what = picked or "(none)", "file of kube-bench's etcd list that exists"
    verdicts += [
        ("etcd-kube-bench-config-mode", "1.1.7", f"kube-bench's file {judged} is 0600 or stricter",
         file_check(stats_of, picked, what, 0o600, ())),
        ("etcd-kube-bench-config-owner", "1.1.8", f"kube-bench's file {judged} is owned by root:root",
         file_check(stats_of, picked, what, None, ("root:root",))),
    ]  # fmt: skip
    data_dir = flags.get("data-dir")
    verdicts += [
        ("etcd-data-dir-mode", "1.1.11", "the data directory is 0700 or stricter",
         file_check(stats, data_dir, "--data-dir", 0o700, ())),
        ("etcd-data-dir-owner", "1.1.12", f"the data directory is owned by {user}:{user}",
         file_check(stats, data_dir, "--data-dir", None, (f"{user}:{user}",))),
    ]  # fmt: skip
    key_owners = (f"{user}:{user}", f"{user}:root", "root:root", f"root:{user}")
    for flag in KEY_FLAGS:
        verdicts.append(
            (f"etcd-{flag}-mode", "", f"the --{flag} private key is 0600 or stricter, owned by {user}/root",
             file_check(stats, flags.get(flag), f"--{flag}", 0o600, key_owners))
        )  # fmt: skip
    return verdicts


def behaviour_verdicts(member: Evidence) -> list[Verdict]:
    """What etcd really runs as: its unit's files, the sockets it listens on, its ETCD_* environment.

    Flags in our own unit file prove little when another drop-in resets ExecStart= or adds an
    Environment=: these judge the unit as systemd loads it and the process as it runs.
    """
    expected: dict[str, Any] = member.get("expected") or {}
    running = member.get("running") or {}
    if member.get("source") == "kubeadm":
        why = (NA, "a static pod: the kubelet runs it, not the toolkit's unit")
        return [
            ("etcd-unit-files", "", "etcd's unit is made of the toolkit's files only", why),
            ("etcd-listeners", "", "etcd listens on exactly the inventory's sockets", why),
            ("etcd-environment", "", "etcd was started with no ETCD_* variable of anyone else's", why),
        ]
    files = list(member.get("config_files") or [])
    extra = [f for f in files if f not in (expected.get("unit_files") or [])]
    unit_files = (
        (FAIL, "systemd names no file for etcd's unit")
        if not files
        else (FAIL, "not written by the toolkit: " + ", ".join(extra))
        if extra
        else (PASS, ", ".join(files))
    )
    if not running.get("pid"):
        listeners = environment = (FAIL, "etcd is not running")
    else:
        found = {s for s in str(running.get("listeners") or "").split(",") if s}
        wanted = set(expected.get("listeners") or [])
        problems = [f"also listens on {', '.join(sorted(found - wanted))}"] if found - wanted else []
        problems += [f"does not listen on {', '.join(sorted(wanted - found))}"] if wanted - found else []
        listeners = (
            (FAIL, "no listening socket was read (nothing is evidence of nothing)")
            if not found
            else (FAIL, "; ".join(problems))
            if problems
            else (PASS, ", ".join(sorted(found)))
        )
        allowed = str(expected.get("allowed_environment") or "^$")
        entries = [e for e in str(running.get("environment") or "").split("|") if e]
        stray = [e.split("=", 1)[0] for e in entries if not re.fullmatch(allowed, e)]
        environment = (
            (FAIL, "started with " + ", ".join(stray)) if stray else (PASS, ", ".join(entries) or "none")
        )
    return [
        ("etcd-unit-files", "", "etcd's unit is made of the toolkit's files only", unit_files),
        ("etcd-listeners", "", "etcd listens on exactly the inventory's sockets", listeners),
        ("etcd-environment", "", "etcd was started with no ETCD_* variable of anyone else's", environment),
    ]


def host_verdicts(member: Evidence) -> list[Verdict]:
    """What the host really does: data-dir mount, AppArmor of the running etcd, the unit's sandbox."""
    expected: dict[str, Any] = member.get("expected") or {}
    fstype, source, device_type = [*(member.get("mount") or "").split(), "?", "?", "?"][:3]
    # Only a dm-crypt mapping is encrypted: an LVM volume is also under /dev/mapper/.
    mounted = "tmpfs" if fstype == "tmpfs" else "luks" if device_type == "crypt" else "disk"
    want = str(expected.get("storage_mode") or "disk")
    verdicts: list[Verdict] = [
        ("etcd-data-at-rest", "", f"the data directory is mounted as the inventory says ({want})",
         (PASS if mounted == want else FAIL, f"{fstype} on {source}, a {device_type} device ({mounted})")),
    ]  # fmt: skip
    running = member.get("running") or {}
    if not running.get("pid"):
        apparmor = (FAIL, "etcd is not running")
    elif running.get("apparmor_kernel") != "Y":
        apparmor = (
            (FAIL, "the kernel has no AppArmor, and the inventory requires enforcement")
            if expected.get("apparmor_require_kernel", True)
            else (NA, "the kernel has no AppArmor: nothing can be enforced here (the VM tier shows it)")
        )
    else:
        # etcd's own profile in the inventory's mode: any other profile in enforce mode is not it.
        label, want = running.get("apparmor", ""), str(expected.get("apparmor_label") or "etcd (enforce)")
        apparmor = (PASS if label == want else FAIL, f"running etcd: {label or 'unconfined'} (want {want})")
    verdicts.append(("etcd-apparmor", "", "the running etcd is confined by its AppArmor profile", apparmor))
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", member.get("sandbox") or "")
    if member.get("source") == "kubeadm":
        sandbox = (NA, "a static pod: the container runtime confines it, not a systemd unit")
    elif not score:
        sandbox = (FAIL, "systemd-analyze security gave no score")
    else:
        good = float(score.group(1)) <= MAX_SANDBOX_EXPOSURE
        sandbox = (PASS if good else FAIL, f"exposure {score.group(1)} (at most {MAX_SANDBOX_EXPOSURE})")
    verdicts.append(
        ("etcd-sandbox", "", "the unit's sandbox scores well in systemd-analyze security", sandbox)
    )
    return verdicts


def membership_verdict(member: Evidence) -> tuple[str, str]:
    """etcd's live membership (`member list` as this member sees it) against the inventory's members."""
    if member.get("source") == "kubeadm":
        return NA, "a static pod: kubeadm manages its membership, not the toolkit"
    expected: dict[str, str] = (member.get("expected") or {}).get("members") or {}
    try:
        listing = json.loads(member.get("membership") or "")
        problems = etcd_membership_problems(listing, expected)
    except ValueError as error:
        return FAIL, f"the membership could not be read from this member ({str(error)[:200] or 'no answer'})"
    if not expected:
        return FAIL, "the inventory names no member to compare with"
    if problems:
        return FAIL, "; ".join(problems)
    return PASS, f"{len(expected)} started voting members, as in the inventory: {', '.join(sorted(expected))}"


def judge_member(host: str, member: Evidence, now: datetime.datetime) -> list[Check]:
    flags = member_flags(member)
    if member.get("flags_only"):
        return [
            Check(host, check_id, cis, title, *verdict)
            for check_id, cis, title, verdict in tls_flag_verdicts(flags)
        ]
    expected: dict[str, Any] = member.get("expected") or {}
    tls: dict[str, str] = member.get("tls") or {}
    verdicts = [
        *tls_flag_verdicts(flags),
        *certificate_verdicts(member.get("certificates") or {}, int(expected.get("renewal_days") or 30), now),
        *file_verdicts(flags, member, str(expected.get("user") or "etcd")),
        *behaviour_verdicts(member),
        ("etcd-client-tls-served", "", "the client port refuses TLS 1.1 and demands a client certificate",
         tls_verdict(tls.get("client", ""))),
        ("etcd-peer-tls-served", "", "the peer port refuses TLS 1.1 and demands a client certificate",
         tls_verdict(tls.get("peer", ""))),
        ("etcd-firewall", "", "the firewall lets in exactly the inventory's sources",
         firewall_verdict(member)),
        *host_verdicts(member),
        ("etcd-membership", "", "etcd's live members are exactly the inventory's, each started and voting",
         membership_verdict(member)),
    ]  # fmt: skip
    return [Check(host, check_id, cis, title, *verdict) for check_id, cis, title, verdict in verdicts]


def judge_apiserver(host: str, apiserver: Evidence) -> list[Check]:
    text = apiserver.get("manifest_text") or ""
    titles = {
        ("apiserver-etcd-cert-key", "1.2.26", "--etcd-certfile and --etcd-keyfile are set"): (
            "etcd-certfile",
            "etcd-keyfile",
        ),
        ("apiserver-etcd-ca", "1.2.29", "--etcd-cafile is set"): ("etcd-cafile",),
        ("apiserver-encryption", "1.2.30", "--encryption-provider-config is set"): (
            "encryption-provider-config",
        ),
    }
    providers_check = (
        "apiserver-encryption-providers",
        "1.2.31",
        "Secrets are encrypted by aescbc, kms or secretbox",
    )
    if not text:
        reason = "no kube-apiserver static pod on this host (no kube-apiserver runs here)"
        return [Check(host, i, cis, title, NA, reason) for (i, cis, title) in [*titles, providers_check]]
    flags = flags_from_command(pod_command(text))
    checks = []
    for (check_id, cis, title), names in titles.items():
        unset = [f"--{name}" for name in names if not flags.get(name)]
        verdict = (
            (FAIL, f"{', '.join(unset)} not set") if unset else (PASS, ", ".join(flags[n] for n in names))
        )
        checks.append(Check(host, check_id, cis, title, *verdict))
    checks.append(Check(host, *providers_check, *encryption_verdict(apiserver.get("encryption") or [])))
    return checks


# What CIS 1.2.31 accepts as the provider that encrypts Secrets (aesgcm needs a new key every
# 200,000 writes; identity does not encrypt).
STRONG_PROVIDERS = ("aescbc", "kms", "secretbox")


def encryption_verdict(entries: list[dict[str, Any]]) -> tuple[str, str]:
    """The first provider of the first entry that covers Secrets (the one the apiserver writes with)."""
    if not entries:
        return FAIL, "no EncryptionConfiguration could be read (flag unset, or the file is missing)"
    for entry in entries:
        names = entry.get("resources") or []
        if "secrets" in names or "*." in names or "*.*" in names:
            providers = entry.get("providers") or []
            first = providers[0] if providers else "none"
            order = " > ".join(providers)
            return (
                (PASS, order) if first in STRONG_PROVIDERS else (FAIL, f"{first} encrypts Secrets ({order})")
            )
    return FAIL, "no entry of the EncryptionConfiguration covers secrets"


def judge(evidence: Iterable[Evidence], now: datetime.datetime | None = None) -> list[Check]:
    moment = now or datetime.datetime.now(datetime.UTC)
    checks: list[Check] = []
    for host_evidence in sorted(evidence, key=lambda e: str(e.get("host"))):
        host = str(host_evidence.get("host"))
        if host_evidence.get("member"):
            checks += judge_member(host, host_evidence["member"], moment)
        if host_evidence.get("apiserver"):
            checks += judge_apiserver(host, host_evidence["apiserver"])
    return checks


def kubeadm_manifest_evidence(manifest: Path) -> Evidence:
    """Evidence from a static pod file alone: flags only, nothing read from a host."""
    member = {"source": "kubeadm", "config_text": manifest.read_text(), "flags_only": True}
    return {"host": manifest.name, "member": member}


# ---------------------------------------------------------------- reports


def table(checks: Sequence[Check]) -> str:
    width = max((len(c.host) for c in checks), default=4)
    lines = [f"{'HOST':<{width}}  {'STATUS':<6}  {'CIS':<6}  CHECK / DETAIL"]
    for c in checks:
        lines.append(f"{c.host:<{width}}  {c.status.upper():<6}  {c.cis or '-':<6}  {c.title}")
        if c.status != PASS:
            lines.append(f"{'':<{width}}  {'':<6}  {'':<6}    {c.detail}")
    counts = {status: sum(c.status == status for c in checks) for status in (PASS, FAIL, NA)}
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[NA]} not applicable")
    return "\n".join(lines)


def junit(checks: Sequence[Check]) -> str:
    suites = ET.Element("testsuites", name="etcd audit")
    for host in sorted({c.host for c in checks}):
        mine = [c for c in checks if c.host == host]
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=host,
            tests=str(len(mine)),
            failures=str(sum(c.status == FAIL for c in mine)),
            skipped=str(sum(c.status == NA for c in mine)),
        )
        for c in mine:
            case = ET.SubElement(
                suite, "testcase", classname=host, name=f"{c.cis + ' ' if c.cis else ''}{c.title}"
            )
            if c.status == FAIL:
                ET.SubElement(case, "failure", message=c.detail).text = c.detail
            elif c.status == NA:
                ET.SubElement(case, "skipped", message=c.detail)
    return ET.tostring(suites, encoding="unicode") + "\n"


def collect(inventory: str, limit: str | None, directory: Path) -> list[Evidence]:
    env = dict(os.environ, ANSIBLE_CONFIG=os.environ.get("ANSIBLE_CONFIG", str(REPO / "ansible.cfg")))
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        inventory,
        str(REPO / "playbooks/audit.yml"),
        "-e",
        json.dumps({"etcd_audit_evidence_dir": str(directory)}),
        *(["--limit", limit] if limit else []),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-5000:] + completed.stderr[-2000:])
        raise SystemExit(2)
    return read_evidence(directory)


def read_evidence(directory: Path) -> list[Evidence]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def write(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-i", "--inventory", help="collect evidence from this inventory's hosts")
    source.add_argument("--evidence-dir", type=Path, help="judge evidence collected before")
    source.add_argument("--kubeadm-etcd-manifest", type=Path, help="judge a static pod file alone")
    parser.add_argument("--limit", help="hosts to audit (ansible-playbook --limit)")
    parser.add_argument(
        "--save-evidence", type=Path, help="with -i: keep the collected evidence in this directory"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the checks as JSON (- for stdout, then no table)"
    )
    parser.add_argument("--junit", metavar="FILE", help="write the checks as JUnit XML for CI")
    args = parser.parse_args(argv)

    if args.inventory and args.save_evidence:
        args.save_evidence.mkdir(parents=True, exist_ok=True)
        evidence = collect(args.inventory, args.limit, args.save_evidence.resolve())
    elif args.inventory:
        with tempfile.TemporaryDirectory(prefix="etcd-audit-") as directory:
            evidence = collect(args.inventory, args.limit, Path(directory))
    elif args.evidence_dir:
        evidence = read_evidence(args.evidence_dir)
    else:
        evidence = [kubeadm_manifest_evidence(args.kubeadm_etcd_manifest)]
    checks = judge(evidence)
    if not checks:
        # A wrong inventory or --limit must not pass for a clean audit.
        sys.stderr.write("no host was audited: no etcd member or apiserver in the evidence\n")
        return 2
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        summary = {status: sum(c.status == status for c in checks) for status in (PASS, FAIL, NA)}
        write(
            args.json,
            json.dumps({"checks": [asdict(c) for c in checks], "summary": summary}, indent=2) + "\n",
        )
    if args.junit:
        write(args.junit, junit(checks))
    if args.json != "-":
        print(table(checks))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
