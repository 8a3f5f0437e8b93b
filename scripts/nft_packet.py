"""What a new TCP connection meets in one nftables table: accept, drop, or a rule that cannot be judged.

The audit does not trust that a table "has a drop rule somewhere": it sends a packet, on paper,
through the table's input hook as `nft -j list table` shows it, and reads off every verdict the
packet could meet. Matches it understands (tcp/th dport, ip/ip6 saddr against literals, prefixes,
ranges and named sets, meta l4proto/nfproto/iif(name), ct state) are decided; anything else (a
rate limit, a mark, an expression it has never seen) could go either way, and both ways are
followed. So a packet is "dropped" only when every path through the table drops it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ACCEPT, DROP, UNKNOWN = "accept", "drop", "unknown"
_ABSENT = object()  # the packet has no such header (ip saddr of an IPv6 packet): the match fails
_UNDECIDED = object()  # a value this evaluator does not model
_MAX_DEPTH = 16  # jumps; nft itself refuses loops, this only bounds a malformed listing


@dataclass(frozen=True)
class Packet:
    """The first packet of a TCP connection from `source`, arriving on a network interface."""

    source: Address
    port: int

    @property
    def family(self) -> str:
        return "ipv4" if self.source.version == 4 else "ipv6"


@dataclass(frozen=True)
class Outcome:
    verdict: str  # accept, drop or unknown
    why: str  # the rule (chain and position) or the chain's policy


Value = int | str | Address  # what a packet's header field holds

# Header fields by (protocol, field) for payload matches; meta and ct keys by name. A TCP packet
# has no UDP (or other transport) header: those matches simply fail.
_NO_SUCH_HEADER = frozenset({"udp", "sctp", "udplite", "dccp", "icmp", "icmpv6"})
_META = {"l4proto": "tcp", "iifname": "<not lo>", "iif": "<not lo>"}


def _field(left: object, packet: Packet) -> Value | object:
    """The packet's value for a match's left side, _ABSENT or _UNDECIDED."""
    found: Value | object = _UNDECIDED
    if isinstance(left, dict) and isinstance(left.get("payload"), dict):
        protocol, field = left["payload"].get("protocol"), left["payload"].get("field")
        if protocol in ("tcp", "th") and field == "dport":
            found = packet.port
        elif protocol in ("ip", "ip6") and field == "saddr":
            found = packet.source if (protocol == "ip") == (packet.source.version == 4) else _ABSENT
        elif protocol in _NO_SUCH_HEADER:
            found = _ABSENT
    elif isinstance(left, dict) and isinstance(left.get("meta"), dict):
        key = str(left["meta"].get("key"))
        found = packet.family if key == "nfproto" else _META.get(key, _UNDECIDED)
    elif isinstance(left, dict) and isinstance(left.get("ct"), dict) and left["ct"].get("key") == "state":
        found = "new"
    return found


def element_networks(element: object) -> list[Network] | None:
    """An element of an address set (or of a match) as the networks it covers: a prefix, a range, a
    literal address; None for what is no address (a concatenation, an element with a timeout)."""
    if isinstance(element, dict) and isinstance(element.get("prefix"), dict):
        text = f"{element['prefix'].get('addr')}/{element['prefix'].get('len')}"
    elif isinstance(element, dict) and isinstance(element.get("range"), list):
        low, high = (ipaddress.ip_address(str(a)) for a in element["range"])
        return list(ipaddress.summarize_address_range(low, high))
    elif isinstance(element, dict):
        return None
    else:
        text = str(element)
    try:
        return [ipaddress.ip_network(text, strict=False)]
    except ValueError:
        return None


def _in_network(element: object, address: Address) -> bool | None:
    found = element_networks(element)
    return None if found is None else any(address in network for network in found)


def _element_holds(element: object, value: Value) -> bool | None:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return _in_network(element, value)
    if isinstance(value, int):
        if isinstance(element, dict) and isinstance(element.get("range"), list):
            low, high = (int(str(b)) for b in element["range"])
            return low <= value <= high
        return str(element).isdigit() and int(str(element)) == value
    if value == "<not lo>":
        return False if str(element) == "lo" else None  # which other interface: unknown
    return str(element) == value or (value == "tcp" and str(element) == "6")


def _holds(right: object, value: Value, sets: dict[str, list[object]]) -> bool | None:
    if isinstance(right, str) and right.startswith("@"):
        if right[1:] not in sets:
            return None
        elements = sets[right[1:]]
    elif isinstance(right, dict) and "set" in right:
        elements = right["set"] if isinstance(right["set"], list) else [right["set"]]
    elif isinstance(right, list):
        elements = right
    else:
        elements = [right]
    answers = [_element_holds(element, value) for element in elements]
    if any(answers):
        return True
    return None if None in answers else False


def _match(match: dict[str, Any], packet: Packet, sets: dict[str, list[object]]) -> bool | None:
    value = _field(match.get("left"), packet)
    if value is _ABSENT:
        return False
    if not isinstance(value, (int, str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return None  # _UNDECIDED
    held = _holds(match.get("right"), value, sets)
    op = match.get("op", "==")
    if held is None or op not in ("==", "in", "!="):
        return None
    return held if op != "!=" else not held


_STATEMENTS = {"counter", "log", "notrack", "meta", "mangle", "set", "quota"}  # no verdict, no match
_VERDICTS = {"accept", "drop", "reject", "jump", "goto", "return", "continue", "queue"}


class Table:
    """One table of `nft -j list table <family> <name>`."""

    def __init__(self, listing: dict[str, Any]) -> None:
        entries = listing.get("nftables", [])
        self.chains = {e["chain"]["name"]: e["chain"] for e in entries if "chain" in e}
        self.rules: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in self.chains}
        for entry in entries:
            if "rule" in entry:
                self.rules.setdefault(entry["rule"]["chain"], []).append(entry["rule"].get("expr", []))
        self.sets: dict[str, list[object]] = {
            e["set"]["name"]: list(e["set"].get("elem", [])) for e in entries if "set" in e
        }

    def input_chains(self) -> list[str]:
        hooked = [c for c in self.chains.values() if c.get("hook") == "input" and c.get("type") == "filter"]
        return [c["name"] for c in sorted(hooked, key=lambda c: int(c.get("prio", 0)))]

    def outcomes(self, packet: Packet) -> list[Outcome]:
        """Every verdict the packet can meet in this table: drop as soon as one input chain surely
        drops it, accept when it passes them all."""
        chains = self.input_chains()
        if not chains:
            return [Outcome(ACCEPT, "no chain on the input hook")]
        every: list[Outcome] = []
        for chain in chains:
            ends = [
                self._policy(chain) if o.verdict == "return" else o for o in self._run(chain, packet, 0, 0)
            ]
            if all(o.verdict == DROP for o in ends):
                return ends  # whatever the other chains do, this one drops it
            every += ends
        return every

    def _policy(self, chain: str) -> Outcome:
        policy = self.chains.get(chain, {}).get("policy", "accept")
        return Outcome(DROP if policy == "drop" else ACCEPT, f"chain {chain}'s policy {policy}")

    def _run(self, chain: str, packet: Packet, start: int, depth: int) -> list[Outcome]:
        if depth > _MAX_DEPTH or chain not in self.rules:
            return [Outcome(UNKNOWN, f"chain {chain} (missing or too deep)")]
        rules = self.rules[chain]
        for index in range(start, len(rules)):
            decided, verdict = self._judge(rules[index], packet)
            if decided is False or verdict is None:
                continue
            taken = self._take(verdict, (chain, index), packet, depth)
            if decided is True:
                return taken
            # Might match: both ways.
            return taken + self._run(chain, packet, index + 1, depth)
        # The end of a chain: a base chain's policy, or back to the chain that jumped here.
        return [Outcome("return", f"end of chain {chain}")]

    def _judge(
        self, expressions: list[dict[str, Any]], packet: Packet
    ) -> tuple[bool | None, dict[str, Any] | None]:
        decided: bool | None = True
        for expr in expressions:
            (kind,) = expr.keys() if len(expr) == 1 else (None,)
            if kind == "match":
                found = _match(expr["match"], packet, self.sets)
                if found is False:
                    return False, None
                if found is None:
                    decided = None
            elif kind in _VERDICTS:
                return decided, expr
            elif kind not in _STATEMENTS:
                decided = None  # limit, a lookup, something new: it may or may not let the rule go on
        return decided, None

    def _take(
        self, verdict: dict[str, Any], at: tuple[str, int], packet: Packet, depth: int
    ) -> list[Outcome]:
        """What the verdict of the rule at (chain, index) leads to."""
        chain, index = at
        (kind,) = verdict.keys()
        final = {"accept": ACCEPT, "drop": DROP, "reject": DROP, "return": "return"}
        where = f"chain {chain}, rule {index + 1}"
        if kind in final:
            return [Outcome(final[kind], where)]
        if kind == "continue":
            return self._run(chain, packet, index + 1, depth)
        if kind not in ("jump", "goto"):
            return [Outcome(UNKNOWN, f"{where} ({kind})")]
        found = self._run((verdict[kind] or {}).get("target", ""), packet, 0, depth + 1)
        if kind == "goto":
            return found  # its return goes back past this chain
        after: list[Outcome] = []
        for outcome in found:
            after += self._run(chain, packet, index + 1, depth) if outcome.verdict == "return" else [outcome]
        return after
