"""What a packet meets in etcd's nftables table, judged on paper (scripts/nft_packet.py).

The table is `nft -j list table inet etcd_firewall` from a debian12 member of the test scenarios
(tests/unit/fixtures/etcd_firewall_table.json). Each attack below is a table the audit's old check
("the sets match and some rule drops") passed, although a packet from anywhere got in.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from nft_packet import ACCEPT, DROP, Packet, Table

LISTING: dict[str, Any] = json.loads(
    (Path(__file__).parent / "fixtures/etcd_firewall_table.json").read_text()
)
OUTSIDE_V4, OUTSIDE_V6 = "192.0.2.1", "2001:db8::1"


def meets(listing: dict[str, Any], source: str, port: int) -> set[str]:
    return {o.verdict for o in Table(listing).outcomes(Packet(ipaddress.ip_address(source), port))}


def rule(*expressions: dict[str, Any], chain: str = "input") -> dict[str, Any]:
    return {"rule": {"family": "inet", "table": "etcd_firewall", "chain": chain, "expr": list(expressions)}}


def dport(*ports: int) -> dict[str, Any]:
    right: Any = ports[0] if len(ports) == 1 else {"set": list(ports)}
    return {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": right}}


def with_rules(*added: dict[str, Any], first: bool = True, drop_final: bool = True) -> dict[str, Any]:
    """The lab's table with rules added at the top of input (or the bottom), and perhaps no final drop."""
    listing = copy.deepcopy(LISTING)
    entries = listing["nftables"]
    if not drop_final:
        entries.pop()  # the last rule: tcp dport { 2379, 2380, 2381 } drop
    at = next(i for i, e in enumerate(entries) if "rule" in e) if first else len(entries)
    entries[at:at] = list(added)
    return listing


@pytest.mark.parametrize("port", [2379, 2380, 2381])
@pytest.mark.parametrize("source", [OUTSIDE_V4, OUTSIDE_V6, "10.90.26.11", "fd00::5"])
def test_from_outside_the_sources_every_etcd_port_meets_drop(source: str, port: int) -> None:
    assert meets(LISTING, source, port) == {DROP}


@pytest.mark.parametrize(
    ("source", "port", "verdict"),
    [
        ("10.90.25.21", 2379, ACCEPT),  # the apiserver, a client
        ("10.90.25.21", 2380, DROP),  # but no peer
        ("10.90.25.12", 2380, ACCEPT),  # inside the members' range
        ("10.90.25.14", 2380, DROP),  # just past it
        ("::1", 2379, ACCEPT),
        ("127.0.0.1", 2381, ACCEPT),
        ("10.90.25.21", 2381, DROP),
        (OUTSIDE_V4, 22, ACCEPT),  # not etcd's port: the table leaves it to the host's firewall
    ],
)  # fmt: skip
def test_each_source_meets_what_the_inventory_says(source: str, port: int, verdict: str) -> None:
    assert meets(LISTING, source, port) == {verdict}


ANY_SOURCE_ACCEPTED = with_rules(rule(dport(2379), {"accept": None}))
DROP_FOR_IPV4_ONLY = with_rules(
    rule({"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
         dport(2379, 2380, 2381), {"drop": None}),
    first=False, drop_final=False,
)  # fmt: skip
DROP_FOR_ANOTHER_PORT = with_rules(rule(dport(9999), {"drop": None}), first=False, drop_final=False)
JUMP_TO_AN_ACCEPT = with_rules(
    {"chain": {"family": "inet", "table": "etcd_firewall", "name": "extra"}},
    rule({"accept": None}, chain="extra"),
    rule(dport(2379), {"jump": {"target": "extra"}}),
)
DROP_BEHIND_A_RATE_LIMIT = with_rules(
    rule(dport(2379, 2380, 2381), {"limit": {"rate": 10, "per": "second"}}, {"drop": None}),
    first=False, drop_final=False,
)  # fmt: skip
NEW_CONNECTIONS_ACCEPTED = with_rules(
    rule({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["new", "established"]}},
         {"accept": None}),
)  # fmt: skip
AN_INTERFACE_ACCEPTED = with_rules(
    rule({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}}, {"accept": None})
)


@pytest.mark.parametrize(
    ("listing", "source", "port", "can_meet"),
    [
        (ANY_SOURCE_ACCEPTED, OUTSIDE_V4, 2379, {ACCEPT}),
        (DROP_FOR_IPV4_ONLY, OUTSIDE_V6, 2380, {ACCEPT}),
        (DROP_FOR_ANOTHER_PORT, OUTSIDE_V4, 2379, {ACCEPT}),
        (JUMP_TO_AN_ACCEPT, OUTSIDE_V4, 2379, {ACCEPT}),
        (DROP_BEHIND_A_RATE_LIMIT, OUTSIDE_V4, 2381, {ACCEPT, DROP}),
        (NEW_CONNECTIONS_ACCEPTED, OUTSIDE_V6, 2379, {ACCEPT}),
        (AN_INTERFACE_ACCEPTED, OUTSIDE_V4, 2379, {ACCEPT, DROP}),
    ],
    ids=["any-source-accepted", "drop-ipv4-only", "drop-another-port", "jump-to-accept",
         "drop-behind-limit", "ct-new-accepted", "interface-accepted"],
)  # fmt: skip
def test_a_packet_from_anywhere_that_can_get_in_is_seen(
    listing: dict[str, Any], source: str, port: int, can_meet: set[str]
) -> None:
    assert meets(listing, source, port) == can_meet


@pytest.mark.parametrize(
    "harmless",
    [
        rule({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": None}),
        rule(
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": None},
        ),
        rule(
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "udp", "field": "dport"}},
                    "right": 2379,
                }
            },
            {"accept": None},
        ),
        rule(dport(2379), {"counter": {"packets": 0, "bytes": 0}}),
    ],
    ids=["loopback", "established", "udp", "counter"],
)
def test_rules_a_new_tcp_connection_from_the_network_never_meets_change_nothing(
    harmless: dict[str, Any],
) -> None:
    assert meets(with_rules(harmless), OUTSIDE_V4, 2379) == {DROP}


def test_a_chain_with_policy_drop_drops_what_no_rule_accepts() -> None:
    listing = copy.deepcopy(LISTING)
    for entry in listing["nftables"]:
        if "chain" in entry:
            entry["chain"]["policy"] = "drop"
    listing["nftables"].pop()  # no final drop rule: the policy does it
    assert meets(listing, OUTSIDE_V4, 2379) == {DROP}
    assert meets(listing, "10.90.25.21", 2379) == {ACCEPT}


def test_a_table_with_no_input_chain_accepts_everything() -> None:
    listing = {"nftables": [e for e in LISTING["nftables"] if "chain" not in e and "rule" not in e]}
    assert meets(listing, OUTSIDE_V4, 2379) == {ACCEPT}
