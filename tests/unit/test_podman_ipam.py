"""podman_ipam.py reads podman's IPAM database and frees only what it is asked to, leaving a valid file.

The fixture is a copy of a real /run/containers/networks/ipam.db (podman 4.3.1, netavark 1.4.0)
taken while two containers ran on a dual-stack network `ipam-fixture`, beside the five
containers of the lab's `etcd-lab` network (a bucket large enough to have a page of its own).
That real podman accepts the edited file is shown by the lab's integration test
(test_lab.py): a container blocked by a leaked address starts after `make lab`.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import podman_ipam
from podman_ipam import Allocation, IpamError

FIXTURE = Path(__file__).parent / "fixtures" / "podman_ipam.db.gz"
CONTAINER_A = "b47d60f0d75599e9ee0deb4c71f9f8d42cb03b44938382cb58ce89086a97f343"
CONTAINER_B = "e970c56d3127c780f89d4d37733a70c37d599650fc651d273b440304264c3367"


@pytest.fixture
def database() -> bytes:
    return gzip.decompress(FIXTURE.read_bytes())


def everything(data: bytes) -> dict[str, list[Allocation]]:
    return {net: podman_ipam.allocations_in(data, net) for net in ("ipam-fixture", "etcd-lab")}


def test_every_address_of_a_network_is_read_with_its_container(database: bytes) -> None:
    assert sorted(podman_ipam.allocations_in(database, "ipam-fixture"), key=lambda a: a.address) == [
        Allocation("ipam-fixture", "10.231.8.11", CONTAINER_A),
        Allocation("ipam-fixture", "10.231.8.12", CONTAINER_B),
        Allocation("ipam-fixture", "fd31:8::11", CONTAINER_A),
        Allocation("ipam-fixture", "fd31:8::12", CONTAINER_B),
    ]
    lab = podman_ipam.allocations_in(database, "etcd-lab")
    assert len(lab) == 10 and {a.address for a in lab} >= {"10.90.23.11", "fd90:23::31"}
    assert podman_ipam.allocations_in(database, "no-such-network") == []


def test_releasing_a_container_deletes_its_records_and_nothing_else(database: bytes) -> None:
    before = everything(database)
    after, released = podman_ipam.without_holders(database, "ipam-fixture", {CONTAINER_A})
    assert sorted(a.address for a in released) == ["10.231.8.11", "fd31:8::11"]
    assert everything(after) == {
        "ipam-fixture": [a for a in before["ipam-fixture"] if a.container != CONTAINER_A],
        "etcd-lab": before["etcd-lab"],
    }
    ids = [e.key.decode() for e in podman_ipam._id_records(podman_ipam._Database(after), "ipam-fixture")]
    assert ids == [CONTAINER_B]
    # Every remaining record of B reads back whole (keys and values, not only the count).
    assert [
        json.loads(e.value) for e in podman_ipam._id_records(podman_ipam._Database(after), "ipam-fixture")
    ] == [["10.231.8.12", "fd31:8::12"]]
    # The file keeps its size and its meta pages: only the index of the changed page moves.
    assert len(after) == len(database) and after[:8192] == database[:8192]


def test_releasing_every_container_leaves_empty_buckets_that_still_read(database: bytes) -> None:
    after, released = podman_ipam.without_holders(
        database, "etcd-lab", {a.container for a in everything(database)["etcd-lab"]}
    )
    assert len(released) == 10
    assert podman_ipam.allocations_in(after, "etcd-lab") == []
    assert list(podman_ipam._id_records(podman_ipam._Database(after), "etcd-lab")) == []
    assert everything(after)["ipam-fixture"] == everything(database)["ipam-fixture"]


def test_a_record_can_be_moved_to_a_neighbouring_address_only(database: bytes) -> None:
    moved = podman_ipam.with_address_renamed(database, "ipam-fixture", "10.231.8.12", "10.231.8.13")
    assert Allocation("ipam-fixture", "10.231.8.13", CONTAINER_B) in podman_ipam.allocations_in(
        moved, "ipam-fixture"
    )
    with pytest.raises(IpamError, match="sorted subnet bucket"):
        podman_ipam.with_address_renamed(database, "ipam-fixture", "10.231.8.12", "10.231.8.5")
    with pytest.raises(IpamError, match="is taken"):
        podman_ipam.with_address_renamed(database, "ipam-fixture", "10.231.8.12", "10.231.8.11")
    with pytest.raises(IpamError, match="one family"):
        podman_ipam.with_address_renamed(database, "ipam-fixture", "10.231.8.12", "fd31:8::13")
    with pytest.raises(IpamError, match="no container holds"):
        podman_ipam.with_address_renamed(database, "ipam-fixture", "10.231.8.99", "10.231.8.98")


def test_a_file_that_is_not_a_valid_database_is_refused(database: bytes) -> None:
    page_size = 4096
    txid_at = 16 + 48  # page header, then the meta fields before txid
    txids = [
        int.from_bytes(database[p * page_size + txid_at : p * page_size + txid_at + 8], "little")
        for p in (0, 1)
    ]
    older = txids.index(min(txids))
    broken = bytearray(database)
    broken[older * page_size + 16 + 40] ^= 0xFF  # a field of the older meta page, under its checksum
    # One bad meta page: bbolt uses the other one, and so does this script.
    assert podman_ipam.allocations_in(bytes(broken), "ipam-fixture") == everything(database)["ipam-fixture"]
    broken[(1 - older) * page_size + 16 + 40] ^= 0xFF
    with pytest.raises(IpamError, match="neither meta page"):
        podman_ipam.allocations_in(bytes(broken), "ipam-fixture")
    with pytest.raises(IpamError, match="too short"):
        podman_ipam.allocations_in(b"\0" * 64, "ipam-fixture")


def test_release_stale_frees_only_containers_that_are_not_running(
    database: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ipam.db"
    path.write_bytes(database)
    monkeypatch.setattr(podman_ipam, "containers_holding_addresses", lambda: {CONTAINER_B})

    planned = podman_ipam.release_stale(path, "ipam-fixture", dry_run=True)
    assert {a.container for a in planned} == {CONTAINER_A}
    assert path.read_bytes() == database, "a dry run changed the file"

    released = podman_ipam.release_stale(path, "ipam-fixture", dry_run=False)
    assert released == planned
    assert {a.container for a in podman_ipam.allocations_in(path.read_bytes(), "ipam-fixture")} == {
        CONTAINER_B
    }
    assert podman_ipam.release_stale(path, "ipam-fixture", dry_run=False) == []
    assert podman_ipam.release_stale(tmp_path / "absent.db", "ipam-fixture", dry_run=False) == []


def test_the_command_line_prints_json_and_fails_on_a_broken_file(
    database: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ipam.db"
    path.write_bytes(database)
    assert podman_ipam.main(["--database", str(path), "list", "ipam-fixture"]) == 0
    assert len(json.loads(capsys.readouterr().out)["allocations"]) == 4
    path.write_bytes(b"\0" * 64)
    assert podman_ipam.main(["--database", str(path), "list", "ipam-fixture"]) == 1
    assert "too short" in capsys.readouterr().err
