"""Filter etcd_input_problems: inventory values that would corrupt a unit, a ruleset or a command line.

Every inventory value that reaches etcd's systemd unit (where `%` is a specifier and a space splits
arguments), etcd's flags (`--initial-cluster` is `name=url,name=url`), an nftables script (where a
`"` ends a string) or a certificate is checked here by what it must be, not by the bad cases
known so far. The preflight plays call it once, on the controller, before any host is touched.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

# A host name as etcd's --name, an --initial-cluster entry and a DNS SAN can all carry it.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")
# Lower-case DNS label: the cluster name is part of the peer CN, the bootstrap token and paths.
_CLUSTER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A path systemd and etcd take literally: no specifier (%), quote, space or control character.
_PATH = re.compile(r"/(?:[A-Za-z0-9._+@-]+/?)*")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# nftables: an identifier, a rate ("10/minute"), and a log prefix that stays inside its quotes
# (the kernel caps prefixes at 127 bytes).
_NFT_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_NFT_RATE = re.compile(r"[1-9][0-9]{0,8}/(?:second|minute|hour|day)")
_NFT_LOG_PREFIX = re.compile(r"[A-Za-z0-9 :._/=()\[\]-]{1,127}")
_CIPHER_SUITE = re.compile(r"TLS_[A-Z0-9_]+")


def _full(pattern: re.Pattern[str]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


def _ip_address(value: object) -> bool:
    """One IPv4 or IPv6 address, written the way nftables, URLs and certificates take it."""
    if not isinstance(value, str) or value != value.strip():
        return False
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return not (isinstance(address, ipaddress.IPv6Address) and address.scope_id)


def _source_network(value: object) -> bool:
    """An address or CIDR that names some hosts, not every address there is."""
    if not isinstance(value, str) or value != value.strip() or "%" in value:
        return False
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return network.prefixlen > 0


def _subject_alt_name(value: object) -> bool:
    if not isinstance(value, str):
        return False
    kind, _, name = value.partition(":")
    return (kind == "DNS" and _full(_HOST_NAME)(name)) or (kind == "IP" and _ip_address(name))


def _port(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return False
    try:
        return str(int(value)) == str(value) and 1 <= int(value) <= 65535
    except ValueError:
        return False


KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "host_name": (
        _full(_HOST_NAME),
        "a host name of letters, digits, '.', '-' and '_' (it becomes etcd's --name, an entry of"
        " --initial-cluster and a DNS name in certificates)",
    ),
    "cluster_name": (_full(_CLUSTER_NAME), "a lower-case DNS label (letters, digits, '-'; at most 63)"),
    "ip_address": (
        _ip_address,
        "one IPv4 or IPv6 address and nothing else (no name, zone, space or newline)",
    ),
    "source_network": (
        _source_network,
        "an IPv4 or IPv6 address or CIDR and nothing else, narrower than the whole address space (/0)",
    ),
    "path": (_full(_PATH), "an absolute path of letters, digits and '._+@-' (no space, quote or '%')"),
    "user": (_full(_USER), "a system user name (lower-case letters, digits, '_' and '-')"),
    "port": (_port, "a TCP port number, 1 to 65535"),
    "nft_identifier": (_full(_NFT_IDENTIFIER), "an nftables name (a letter, then letters, digits and '_')"),
    "nft_rate": (_full(_NFT_RATE), "an nftables rate such as 10/minute (per second, minute, hour or day)"),
    "nft_log_prefix": (
        _full(_NFT_LOG_PREFIX),
        "at most 127 letters, digits, spaces and ':._/=()[]-' (no quote or backslash)",
    ),
    "subject_alt_name": (_subject_alt_name, "DNS:<host name> or IP:<address>"),
    "cipher_suite": (
        _full(_CIPHER_SUITE),
        "a Go TLS cipher suite name such as TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
}


def etcd_input_problems(checks: Iterable[Iterable[Any]]) -> list[str]:
    """One message per bad (variable, value), naming the hosts it is set for and what it must be.

    `checks` holds [host, variable, value, kind] entries; a list value has each element checked. Kinds
    are the keys of KINDS. Entries for the same variable and value are reported once, with every host.
    """
    hosts_of: dict[tuple[str, str, str], list[str]] = {}
    for host, variable, value, kind in checks:
        valid, _ = KINDS[kind]
        for item in value if isinstance(value, list) else [value]:
            if not valid(item):
                hosts_of.setdefault((variable, repr(item), kind), []).append(str(host))
    return [
        f"{variable} is {value} on {', '.join(dict.fromkeys(hosts))}: it must be {KINDS[kind][1]}."
        for (variable, value, kind), hosts in hosts_of.items()
    ]


class FilterModule:
    """The toolkit's input checks."""

    def filters(self) -> dict[str, Any]:
        return {"etcd_input_problems": etcd_input_problems}
