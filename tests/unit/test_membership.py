"""The live membership judged against the inventory (plugins/filter/etcd_membership.py).

The listings are shaped as etcdctl 3.4 and 3.5 print them (`member list --write-out=json`): a
member that never started has no name, a voter has no isLearner, IDs are decimal.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from conftest import REPO

_SPEC = importlib.util.spec_from_file_location("etcd_membership", REPO / "plugins/filter/etcd_membership.py")
assert _SPEC and _SPEC.loader
MEMBERSHIP = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(MEMBERSHIP)

EXPECTED = {f"m{i}": f"https://10.0.0.{i}:2380" for i in (1, 2, 3)}


def member(
    index: int, *, name: str | None = None, learner: bool = False, url: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"ID": 1000 + index, "peerURLs": [url or f"https://10.0.0.{index}:2380"]}
    if name != "":
        entry["name"] = name or f"m{index}"
    if learner:
        entry["isLearner"] = True
    return entry


def listing(*members: dict[str, Any]) -> dict[str, Any]:
    return {"header": {"cluster_id": 1}, "members": list(members)}


def problems(*members: dict[str, Any]) -> list[str]:
    result: list[str] = MEMBERSHIP.etcd_membership_problems(listing(*members), EXPECTED)
    return result


def test_the_inventorys_members_started_and_voting_match() -> None:
    assert problems(member(1), member(2), member(3)) == []


def test_each_difference_is_named() -> None:
    # An entry added by hand at an address no inventory member has, never started.
    ghost = problems(member(1), member(2), member(3), member(9, name=""))
    assert ghost == [
        "(never started) (ID 3f1, peer URLs https://10.0.0.9:2380)"
        " is a member of the cluster but not in the inventory"
    ]
    unstarted = problems(member(1), member(2), member(3, name=""))
    assert unstarted == [
        "(never started) (ID 3eb, peer URLs https://10.0.0.3:2380)"
        " was added but never started: it counts toward quorum"
    ]
    learner = problems(member(1), member(2), member(3, learner=True))
    assert learner == [
        "m3 (ID 3eb, peer URLs https://10.0.0.3:2380) is a learner: it does not vote and was never promoted"
    ]
    missing = problems(member(1), member(2))
    assert missing == ["m3 (https://10.0.0.3:2380) is in the inventory but not a member of the cluster"]
    moved = problems(member(1), member(2), member(3, name="m3", url="https://10.0.0.1:2380"))
    assert moved[0].startswith("m3 (ID 3eb, peer URLs https://10.0.0.1:2380) differs from the inventory")
    assert moved[1] == "m3 (https://10.0.0.3:2380) is in the inventory but not a member of the cluster"


def test_strangers_are_the_entries_no_inventory_member_owns() -> None:
    strangers = MEMBERSHIP.etcd_membership_strangers(
        listing(member(1), member(2, name=""), member(9), member(8, name="")), EXPECTED
    )
    assert [m["ID"] for m in strangers] == [1009, 1008]


def test_what_is_not_a_listing_is_refused_never_read_as_no_member() -> None:
    for answer in ({}, {"members": None}, {"members": [{"name": "m1"}]}, "members", None):
        with pytest.raises(ValueError, match="not an etcd member listing"):
            MEMBERSHIP.etcd_membership_problems(answer, EXPECTED)


def test_a_learner_starts_with_the_live_membership_under_its_own_name() -> None:
    # etcdctl member add --learner --write-out=json, as etcd 3.4.23 answered it in the lab.
    added: dict[str, Any] = {
        "member": {"ID": 1004, "peerURLs": ["https://10.0.0.4:2380"], "isLearner": True},
        "members": [member(4, name="", learner=True), member(1), member(2)],
    }
    assert MEMBERSHIP.etcd_membership_initial_cluster(added, "m4") == (
        "m4=https://10.0.0.4:2380,m1=https://10.0.0.1:2380,m2=https://10.0.0.2:2380"
    )
    # Another unfinished add would give etcd an entry without a name: refused.
    added["members"].append(member(5, name=""))
    with pytest.raises(ValueError, match="another add is unfinished"):
        MEMBERSHIP.etcd_membership_initial_cluster(added, "m4")
    with pytest.raises(ValueError, match="not the answer of etcdctl member add"):
        MEMBERSHIP.etcd_membership_initial_cluster(listing(member(1)), "m4")


def test_ids_are_written_as_etcdctl_takes_them() -> None:
    assert MEMBERSHIP.member_id({"ID": 8770287647215347281}) == "79b65225ee446651"
