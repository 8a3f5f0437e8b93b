#!/usr/bin/env python3
"""Find, and free, IP addresses that podman's IPAM database keeps for containers that are not running.

podman (with netavark) records each container's addresses in /run/containers/networks/ipam.db
before it starts the container and deletes them when the container stops. On some error paths
of a start, podman 4.3 (Debian 12) never deletes them (containers/podman#25422, fixed upstream in
2025). libnetwork refuses a static address that is in the database, whoever holds it, so from
then on the container cannot start again ("IPAM error: requested ip address ... is already
allocated to container ID ..."), and neither can a new container with that address: the
records are keyed by the network's name, so they outlive `podman network rm`. podman has no
command that frees them; this script deletes them from the database, under the lock podman
takes, and touches nothing else.

    podman_ipam.py list NETWORK                      # the network's allocations, as JSON
    podman_ipam.py release-stale NETWORK [--dry-run] # free those of containers not running

The database is a bbolt file. Only what these two commands need is read here: the root bucket,
the network's bucket, its "ids" bucket (container ID -> JSON list of addresses) and one bucket
per subnet (address bytes -> container ID, plus a "lastIP" key). A record is deleted in place
from the leaf page that holds it (a page of its own or a small bucket stored inline in its
parent): the element is dropped from the page's index and the rest of bbolt's file is left as
it was. Anything else (a branch page, a version or checksum that does not match) is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_DATABASE = Path("/run/containers/networks/ipam.db")

# bbolt's on-disk layout (go.etcd.io/bbolt: page.go, db.go, bucket.go), little-endian on amd64.
_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct(
    "<IIII QQ QQQQ"
)  # magic, version, page size, flags, root bucket, freelist, pgid, txid, sum
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, key size, value size
_BUCKET_HEADER = struct.Struct("<QQ")  # root page (0: stored inline after this header), sequence
_BRANCH_PAGE, _LEAF_PAGE = 0x01, 0x02
_BUCKET_ELEMENT = 0x01
_MAGIC, _VERSION = 0xED0CDAED, 2
_META_CHECKSUMMED = _META.size - 8

# Keys of podman's records (containers/common libnetwork/netavark/ipam.go).
_IDS_BUCKET = b"ids"
_LAST_IP_KEY = b"lastIP"
# podman keeps a container's addresses while it is in one of these states.
_STATES_THAT_HOLD_ADDRESSES = frozenset({"running", "paused", "stopping"})


class IpamError(Exception):
    """The database is not what this script understands: nothing was changed."""


@dataclass(frozen=True)
class Allocation:
    network: str
    address: str
    container: str


@dataclass(frozen=True)
class _Element:
    """One key of a leaf page; `slot` is the file offset of its index entry."""

    page: int
    index: int
    slot: int
    key: bytes
    value: bytes
    value_at: int
    is_bucket: bool


def _fnv64a(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


class _Database:
    """A bbolt file held in memory; edits are written back with `save`."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.page_size, self.root = self._newest_meta()

    def _newest_meta(self) -> tuple[int, int]:
        if len(self.data) < 2 * _PAGE_HEADER.size + _META.size:
            raise IpamError("the file is too short to be a bbolt database")
        page_size = _META.unpack_from(self.data, _PAGE_HEADER.size)[2]
        metas = []
        for page in (0, 1):
            at = page * page_size + _PAGE_HEADER.size
            fields = _META.unpack_from(self.data, at)
            magic, version, _size, _flags, root, _seq, _freelist, _pgid, txid, checksum = fields
            if (magic, version) != (_MAGIC, _VERSION):
                continue
            if _fnv64a(bytes(self.data[at : at + _META_CHECKSUMMED])) != checksum:
                continue
            metas.append((txid, root))
        if not metas:
            raise IpamError("neither meta page is a valid bbolt v2 meta page")
        return page_size, max(metas)[1]

    def elements(self, page: int) -> Iterator[_Element]:
        """The keys of a bucket whose root is the leaf page at file offset `page`."""
        _pgid, flags, count, _overflow = _PAGE_HEADER.unpack_from(self.data, page)
        if flags & _BRANCH_PAGE:
            raise IpamError("a bucket spans several pages; this script handles one-page buckets only")
        if not flags & _LEAF_PAGE:
            raise IpamError(f"page at offset {page} is not a leaf page (flags {flags:#x})")
        for index in range(count):
            slot = page + _PAGE_HEADER.size + index * _LEAF_ELEMENT.size
            element_flags, pos, key_size, value_size = _LEAF_ELEMENT.unpack_from(self.data, slot)
            key_at = slot + pos
            value_at = key_at + key_size
            yield _Element(
                page=page,
                index=index,
                slot=slot,
                key=bytes(self.data[key_at:value_at]),
                value=bytes(self.data[value_at : value_at + value_size]),
                value_at=value_at,
                is_bucket=bool(element_flags & _BUCKET_ELEMENT),
            )

    def bucket_page(self, element: _Element) -> int:
        """The file offset of the root page of the bucket an element holds."""
        if not element.is_bucket:
            raise IpamError(f"key {element.key!r} is not a bucket")
        root, _sequence = _BUCKET_HEADER.unpack_from(element.value)
        return element.value_at + _BUCKET_HEADER.size if root == 0 else root * self.page_size

    def bucket(self, page: int, key: bytes) -> int | None:
        for element in self.elements(page):
            if element.key == key:
                return self.bucket_page(element)
        return None

    def remove(self, element: _Element) -> None:
        """Drop one key from its leaf page's index; its bytes stay where they are, unreferenced.

        An index entry locates its key relative to itself, so each entry moved one place down
        points 16 bytes further on.
        """
        pgid, flags, count, overflow = _PAGE_HEADER.unpack_from(self.data, element.page)
        for index in range(element.index + 1, count):
            slot = element.page + _PAGE_HEADER.size + index * _LEAF_ELEMENT.size
            element_flags, pos, key_size, value_size = _LEAF_ELEMENT.unpack_from(self.data, slot)
            _LEAF_ELEMENT.pack_into(
                self.data,
                slot - _LEAF_ELEMENT.size,
                element_flags,
                pos + _LEAF_ELEMENT.size,
                key_size,
                value_size,
            )
        _PAGE_HEADER.pack_into(self.data, element.page, pgid, flags, count - 1, overflow)


def _network_buckets(db: _Database, network: str) -> tuple[int | None, list[int]]:
    """The network's "ids" bucket and its subnet buckets (file offsets of their pages)."""
    network_page = db.bucket(db.root * db.page_size, network.encode())
    if network_page is None:
        return None, []
    ids_page = None
    subnet_pages = []
    for element in db.elements(network_page):
        if not element.is_bucket:
            continue
        if element.key == _IDS_BUCKET:
            ids_page = db.bucket_page(element)
        else:
            subnet_pages.append(db.bucket_page(element))
    return ids_page, subnet_pages


def _address_records(db: _Database, network: str) -> Iterator[_Element]:
    for page in _network_buckets(db, network)[1]:
        for element in db.elements(page):
            if not element.is_bucket and element.key != _LAST_IP_KEY:
                yield element


def _id_records(db: _Database, network: str) -> Iterator[_Element]:
    ids_page = _network_buckets(db, network)[0]
    if ids_page is not None:
        yield from (e for e in db.elements(ids_page) if not e.is_bucket)


def allocations_in(data: bytes, network: str) -> list[Allocation]:
    """Every address of `network` the database holds, and the container holding it."""
    db = _Database(data)
    return [
        Allocation(network, str(ipaddress.ip_address(e.key)), e.value.decode())
        for e in _address_records(db, network)
    ]


def without_holders(data: bytes, network: str, holders: set[str]) -> tuple[bytes, list[Allocation]]:
    """The database with every record of `network` whose container is in `holders` deleted."""
    db = _Database(data)
    released = []
    # One deletion at a time: a deletion moves the index entries after it.
    while element := next((e for e in _address_records(db, network) if e.value.decode() in holders), None):
        released.append(Allocation(network, str(ipaddress.ip_address(element.key)), element.value.decode()))
        db.remove(element)
    while element := next((e for e in _id_records(db, network) if e.key.decode() in holders), None):
        db.remove(element)
    return bytes(db.data), released


def with_address_renamed(data: bytes, network: str, address: str, new_address: str) -> bytes:
    """The database with the record of `address` in `network` made a record of `new_address`, in place.

    This makes podman's leak by hand, for tests: run a container with a spare address, give its
    record the address of a stopped container, and remove the container. podman frees what the
    container was started with (the spare address), and the renamed record stays, held by a
    container that no longer exists. The new address must keep the record's place in the sorted
    subnet bucket, and be of the same family (the key is rewritten in place).
    """
    old_key, new_key = ipaddress.ip_address(address).packed, ipaddress.ip_address(new_address).packed
    if len(old_key) != len(new_key):
        raise IpamError("both addresses must be of one family (the key is rewritten in place)")
    db = _Database(data)
    for page in _network_buckets(db, network)[1]:
        keys = [e.key for e in db.elements(page)]
        if old_key not in keys:
            continue
        renamed = [new_key if k == old_key else k for k in keys]
        if new_key in keys or renamed != sorted(renamed):
            raise IpamError(f"{new_address} is taken, or would move the record in its sorted subnet bucket")
        element = next(e for e in db.elements(page) if e.key == old_key)
        key_at = element.value_at - len(old_key)
        db.data[key_at : element.value_at] = new_key
        return bytes(db.data)
    raise IpamError(f"no container holds {address} in network {network}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The database file, under the exclusive flock bbolt takes for a writable open."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _read(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)


def _write_changes(fd: int, before: bytes, after: bytes) -> None:
    """Write back only the pages that differ, then sync."""
    page_size = _Database(before).page_size
    for at in range(0, len(after), page_size):
        if before[at : at + page_size] != after[at : at + page_size]:
            os.pwrite(fd, after[at : at + page_size], at)
    os.fsync(fd)


def containers_holding_addresses() -> set[str]:
    """Full IDs of the containers that are running (and so hold their addresses)."""
    listed = subprocess.run(
        ["podman", "ps", "--all", "--no-trunc", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return {
        c["Id"] for c in json.loads(listed.stdout or "[]") if c.get("State") in _STATES_THAT_HOLD_ADDRESSES
    }


def release_stale(path: Path, network: str, *, dry_run: bool) -> list[Allocation]:
    """Free the addresses of `network` held by containers that are not running."""
    if not path.exists():
        return []
    with _locked(path) as fd:
        # Listed under the lock: no podman command can start a container (and allocate) meanwhile.
        running = containers_holding_addresses()
        before = _read(fd)
        stale = {a.container for a in allocations_in(before, network) if a.container not in running}
        stale |= {
            e.key.decode() for e in _id_records(_Database(before), network) if e.key.decode() not in running
        }
        after, released = without_holders(before, network, stale)
        if not dry_run and after != before:
            _write_changes(fd, before, after)
    return released


def rename_address(path: Path, network: str, address: str, new_address: str) -> None:
    with _locked(path) as fd:
        before = _read(fd)
        _write_changes(fd, before, with_address_renamed(before, network, address, new_address))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=Path, default=DEFAULT_DATABASE)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the network's allocations")
    listing.add_argument("network")
    release = commands.add_parser(
        "release-stale", help="free the addresses of containers that are not running"
    )
    release.add_argument("network")
    release.add_argument("--dry-run", action="store_true", help="say what would be freed, change nothing")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            found = allocations_in(args.database.read_bytes(), args.network) if args.database.exists() else []
            print(json.dumps({"allocations": [asdict(a) for a in found]}))
        else:
            released = release_stale(args.database, args.network, dry_run=args.dry_run)
            print(json.dumps({"released": [asdict(a) for a in released], "dry_run": args.dry_run}))
    except IpamError as error:
        print(f"{args.database}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
