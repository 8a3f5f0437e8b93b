"""The live membership of an etcd cluster, judged against the inventory.

etcd's own view of its members (`etcdctl member list --write-out=json`) is what decides quorum;
the inventory is what the operator meant. A member added by hand, a half-finished add (an entry
that never started), a learner left unpromoted, or a member the inventory lost are each a
cluster that tolerates fewer failures than its operator believes. The site play's run phase
stops on some of them, and the summary and `scripts/audit.py` report all of them; all three
judge through this module, so they cannot disagree.

Filters:
- `etcd_membership_problems(listing, expected)`: one sentence per difference (empty: it matches).
- `etcd_membership_strangers(listing, expected)`: live entries that belong to no inventory member.
- `etcd_membership_initial_cluster(added, name)`: ETCD_INITIAL_CLUSTER for a member just added,
  from `etcdctl member add --write-out=json`'s answer (the live membership, the new one included).
"""

from __future__ import annotations

from typing import Any

Member = dict[str, Any]


def _members(listing: object) -> list[Member]:
    """The members of a `member list`/`member add` JSON answer; refuses what is not one."""
    members = listing.get("members") if isinstance(listing, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, dict) and "ID" in m for m in members):
        raise ValueError(f"not an etcd member listing: {str(listing)[:200]}")
    return members


def member_id(member: Member) -> str:
    """The ID as etcdctl takes it (`member remove`, `member promote`): hexadecimal."""
    return f"{int(member['ID']):x}"


def describe(member: Member) -> str:
    """A member as the messages name it: name (or that it never started), ID, peer URLs."""
    name = member.get("name") or "(never started)"
    return f"{name} (ID {member_id(member)}, peer URLs {', '.join(member.get('peerURLs') or []) or 'none'})"


def etcd_membership_strangers(listing: object, expected: dict[str, str]) -> list[Member]:
    """Live entries whose peer URLs are no inventory member's: nothing the play may touch by itself."""
    own_urls = set(expected.values())
    return [m for m in _members(listing) if not set(m.get("peerURLs") or []) & own_urls]


def etcd_membership_problems(listing: object, expected: dict[str, str]) -> list[str]:
    """Each way the live membership differs from the inventory's members ({name: peer URL})."""
    members = _members(listing)
    problems: list[str] = []
    for member in members:
        name, urls = member.get("name") or "", member.get("peerURLs") or []
        if member in etcd_membership_strangers(listing, expected):
            problems.append(f"{describe(member)} is a member of the cluster but not in the inventory")
        elif not name:
            problems.append(f"{describe(member)} was added but never started: it counts toward quorum")
        elif name not in expected or urls != [expected[name]]:
            want = f"{name} at {expected[name]}" if name in expected else "no member of that name"
            problems.append(f"{describe(member)} differs from the inventory, which has {want}")
        if member.get("isLearner"):
            problems.append(f"{describe(member)} is a learner: it does not vote and was never promoted")
    present = {url for m in members for url in m.get("peerURLs") or []}
    problems.extend(
        f"{name} ({url}) is in the inventory but not a member of the cluster"
        for name, url in sorted(expected.items())
        if url not in present
    )
    return problems


def etcd_membership_initial_cluster(added: object, name: str) -> str:
    """`name=url,...` of every live member, the one just added under `name` included."""
    if not isinstance(added, dict) or not isinstance(added.get("member"), dict):
        raise ValueError(f"not the answer of etcdctl member add: {str(added)[:200]}")
    new_id = added["member"]["ID"]
    entries: list[str] = []
    for member in _members(added):
        member_name = name if member["ID"] == new_id else member.get("name")
        if not member_name:
            raise ValueError(f"{describe(member)} has no name: another add is unfinished")
        entries.extend(f"{member_name}={url}" for url in member.get("peerURLs") or [])
    return ",".join(entries)


class FilterModule:
    """Filters that judge etcd's live membership."""

    def filters(self) -> dict[str, Any]:
        return {
            "etcd_membership_problems": etcd_membership_problems,
            "etcd_membership_strangers": etcd_membership_strangers,
            "etcd_membership_initial_cluster": etcd_membership_initial_cluster,
            "etcd_member_id": member_id,
            "etcd_member_describe": describe,
        }
