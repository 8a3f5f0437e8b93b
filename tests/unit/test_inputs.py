"""The input checks (plugins/filter/etcd_inputs.py): what each kind accepts and refuses."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO

_SPEC = importlib.util.spec_from_file_location("etcd_inputs", REPO / "plugins/filter/etcd_inputs.py")
assert _SPEC and _SPEC.loader
INPUTS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(INPUTS)

ACCEPTED: dict[str, list[object]] = {
    "host_name": ["etcd-1", "etcd-1.example.org", "etcd_1", "e"],
    "cluster_name": ["lab", "prod-eu-1"],
    "ip_address": ["192.0.2.1", "2001:db8::1", "::1"],
    "source_network": ["192.0.2.1", "192.0.2.0/24", "2001:db8::/64", "10.0.0.0/8"],
    "path": ["/var/lib/etcd/lab", "/etc/etcd/pki"],
    "user": ["etcd", "_etcd"],
    "port": [2379, "2380", 1, 65535],
    "nft_identifier": ["etcd_firewall"],
    "nft_rate": ["10/minute", "1/second"],
    "nft_log_prefix": ["etcd-firewall refused: ", "etcd [lab]:"],
    "subject_alt_name": ["DNS:etcd.example.org", "IP:192.0.2.1", "IP:2001:db8::1"],
    "cipher_suite": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
}
REFUSED: dict[str, list[object]] = {
    "host_name": ["a,b", "a=b", "a b", "etcd-%i", "etcd-1\n", "-etcd", ""],
    "cluster_name": ["Lab", "lab prod", "lab%", "lab/x"],
    "ip_address": ["192.0.2.1\n", " 192.0.2.1", "fe80::1%eth0", "etcd.example.org", "192.0.2.0/24", ""],
    "source_network": [
        "0.0.0.0/0",
        "::/0",
        "192.0.2.1\n",
        "fe80::1%eth0",
        "backup.example",
        "192.0.2.1,10.0.0.1",
    ],
    "path": ["relative/path", "/var/lib/my data", "/var/lib/etcd%n", '/var/"x"', "/var/lib/etcd\n"],
    "user": ["Etcd", "etcd user", "root;x"],
    "port": [0, 65536, "2379 ", "x", True, None],
    "nft_identifier": ["etcd-firewall", "1table", "t; flush ruleset"],
    "nft_rate": ["10/minute accept", "0/minute", "ten/minute"],
    "nft_log_prefix": ['etcd" accept', "etcd\\", "x" * 128, "", "a\nb"],
    "subject_alt_name": ["etcd.example.org", "URI:https://x", "IP:not-an-ip", "DNS:a b"],
    "cipher_suite": ["ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_AES,TLS_X"],
}


@pytest.mark.parametrize("kind", sorted(INPUTS.KINDS))
def test_each_kind_accepts_what_it_must_and_refuses_the_rest(kind: str) -> None:
    valid, _ = INPUTS.KINDS[kind]
    assert [v for v in ACCEPTED[kind] if not valid(v)] == []
    assert [v for v in REFUSED[kind] if valid(v)] == []


def test_a_bad_value_is_reported_once_with_every_host_it_is_set_for() -> None:
    problems = INPUTS.etcd_input_problems(
        [
            ["etcd-1", "etcd_firewall_log_prefix", 'x"', "nft_log_prefix"],
            ["etcd-2", "etcd_firewall_log_prefix", 'x"', "nft_log_prefix"],
            ["etcd-2", "etcd_firewall_client_extra_sources", ["192.0.2.1", "0.0.0.0/0"], "source_network"],
            ["etcd-3", "etcd_address", "192.0.2.3", "ip_address"],
        ]
    )
    assert problems == [
        "etcd_firewall_log_prefix is 'x\"' on etcd-1, etcd-2: it must be at most 127 letters, digits, spaces"
        " and ':._/=()[]-' (no quote or backslash).",
        "etcd_firewall_client_extra_sources is '0.0.0.0/0' on etcd-2: it must be an IPv4 or IPv6 address or"
        " CIDR and nothing else, narrower than the whole address space (/0).",
    ]
