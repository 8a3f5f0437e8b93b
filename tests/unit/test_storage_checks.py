"""The data-directory checks refuse a RAM disk beside swap that is not encrypted, and say why.

They run on the controller itself (they only read), with /proc/swaps replaced by a test file: a
swap partition that is not a crypt device must be refused, no swap at all must pass.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
from functools import partial
from pathlib import Path

from conftest import REPO, run_playbook

PLAYBOOK = REPO / "tests/unit/playbooks/storage_checks.yml"
HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


def run_checks(tmp_path: Path, swaps: str, *extra: str) -> tuple[int, str]:
    swaps_file = tmp_path / "swaps"
    swaps_file.write_text(HEADER + swaps)
    result = run_playbook(
        PLAYBOOK,
        Path("localhost,"),
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"__etcd_storage_swaps_file={swaps_file}",
        "-e",
        "etcd_storage_mode=tmpfs",
        *extra,
    )
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_unencrypted_swap_is_refused_for_a_ram_disk(tmp_path: Path) -> None:
    rc, output = run_checks(tmp_path, "/dev/nonexistent-swap1\tpartition\t1048572\t0\t-2\n")
    assert rc != 0, output
    assert "has swap that is not encrypted: /dev/nonexistent-swap1. Nothing was changed." in output, output


def test_unencrypted_swap_can_be_accepted_explicitly(tmp_path: Path) -> None:
    rc, output = run_checks(
        tmp_path,
        "/dev/nonexistent-swap1\tpartition\t1048572\t0\t-2\n",
        "-e",
        "etcd_storage_allow_unencrypted_swap=true",
    )
    assert rc == 0, output


def test_no_swap_passes(tmp_path: Path) -> None:
    rc, output = run_checks(tmp_path, "")
    assert rc == 0, output


def run_luks_checks(tmp_path: Path, *extra: str, device: str | None = None) -> tuple[int, str]:
    # A stand-in for the device-mapper control node, so the checks get past that one.
    dm_control = tmp_path / "control"
    dm_control.write_text("")
    return run_checks(
        tmp_path,
        "",
        "-e",
        "etcd_storage_mode=luks",
        "-e",
        f"etcd_storage_luks_device={tmp_path / 'no-such-device' if device is None else device}",
        "-e",
        f"etcd_storage_luks_key_dir={tmp_path / 'keys'}",
        "-e",
        f"__etcd_storage_dm_control_path={dm_control}",
        *extra,
    )


PIPELINING_REFUSAL = (
    "Refusing to hand the LUKS key to modules on localhost: Ansible would write them to a file on a disk"
)


def test_luks_key_is_not_handed_over_a_connection_without_pipelining(tmp_path: Path) -> None:
    rc, output = run_luks_checks(tmp_path, "-e", "ansible_pipelining=false")
    assert rc != 0, output
    assert PIPELINING_REFUSAL in output and "Nothing was changed." in output, output


def test_luks_key_may_travel_over_a_pipelining_connection(tmp_path: Path) -> None:
    _rc, output = run_luks_checks(tmp_path, "-e", "ansible_pipelining=true")
    # Later checks may stop it (there is no such device); this one must not.
    assert "Refuse to hand the LUKS key over a connection" in output, output
    assert PIPELINING_REFUSAL not in output, output


def fake_luks_file(path: Path) -> Path:
    """A file that blkid takes for a LUKS2 volume: the magic, the version, a header size and a UUID."""
    header = bytearray(16384)
    header[0:8] = b"LUKS\xba\xbe\x00\x02"
    header[8:16] = len(header).to_bytes(8, "big")
    header[168:204] = b"12345678-1234-1234-1234-123456789abc"
    path.write_bytes(bytes(header) + bytes(1 << 20))
    return path


def run_luks_file_checks(tmp_path: Path, volume_file: Path, *extra: str) -> tuple[int, str]:
    return run_luks_checks(
        tmp_path,
        "-e",
        "ansible_pipelining=true",
        "-e",
        f"etcd_storage_luks_file={volume_file}",
        *extra,
        device="",
    )


def test_luks_on_a_block_device_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    rc, output = run_luks_checks(tmp_path, "-e", "ansible_pipelining=true")
    assert rc != 0, output
    assert "no-such-device is not a block device on localhost. Nothing was changed." in output, output


def test_luks_takes_a_device_or_a_file_not_both(tmp_path: Path) -> None:
    rc, output = run_luks_checks(
        tmp_path, "-e", "ansible_pipelining=true", "-e", f"etcd_storage_luks_file={tmp_path / 'volume.luks'}"
    )
    assert rc != 0, output
    assert "needs exactly one of etcd_storage_luks_device" in output and "Nothing was changed." in output, (
        output
    )


def test_a_volume_file_inside_the_data_directory_is_refused(tmp_path: Path) -> None:
    rc, output = run_luks_file_checks(tmp_path, Path("/nonexistent/etcd-data/volume.luks"))
    assert rc != 0, output
    assert "must be an absolute path outside the data directory /nonexistent/etcd-data" in output, output


def test_a_missing_volume_file_passes_the_checks(tmp_path: Path) -> None:
    # The play creates it; nothing about it can be wrong yet.
    rc, output = run_luks_file_checks(tmp_path, tmp_path / "volume.luks")
    assert rc == 0, output


def keyfile_checks_on_a_luks_file(tmp_path: Path) -> tuple[int, str, Path]:
    """The checks with key source keyfile, on a file that is a LUKS volume, its key file in tmp_path."""
    volume = fake_luks_file(tmp_path / "volume.luks")
    rc, output = run_luks_file_checks(
        tmp_path,
        volume,
        "-e",
        "etcd_storage_luks_key_source=keyfile",
        "-e",
        f"__etcd_storage_keyfile={tmp_path / 'etcd-data.key'}",
    )
    return rc, output, volume


def test_a_luks_file_whose_host_key_file_is_gone_is_never_given_a_new_key(tmp_path: Path) -> None:
    rc, output, volume = keyfile_checks_on_a_luks_file(tmp_path)
    assert rc != 0, output
    assert f"{volume} on localhost already holds a LUKS volume, but there is no key for it at" in output, (
        output
    )
    assert f"{tmp_path / 'etcd-data.key'} on the host. Nothing was changed." in output, output


def test_a_luks_file_with_its_host_key_file_passes(tmp_path: Path) -> None:
    (tmp_path / "etcd-data.key").write_bytes(b"x" * 64)
    rc, output, _volume = keyfile_checks_on_a_luks_file(tmp_path)
    assert rc == 0, output


def test_a_key_file_source_needs_no_pipelining(tmp_path: Path) -> None:
    # The key never passes through Ansible: only its path does.
    rc, output = run_luks_file_checks(
        tmp_path,
        tmp_path / "volume.luks",
        "-e",
        "etcd_storage_luks_key_source=keyfile",
        "-e",
        "ansible_pipelining=false",
    )
    assert rc == 0, output


def test_tang_needs_the_servers_url_and_thumbprint(tmp_path: Path) -> None:
    rc, output = run_luks_file_checks(
        tmp_path, tmp_path / "volume.luks", "-e", "etcd_storage_luks_key_source=tang"
    )
    assert rc != 0, output
    assert "etcd_storage_luks_key_source: tang needs etcd_storage_luks_tang_url" in output, output


def test_a_boot_unlock_timeout_that_is_no_time_span_is_refused(tmp_path: Path) -> None:
    rc, output = run_luks_file_checks(
        tmp_path,
        tmp_path / "volume.luks",
        "-e",
        "etcd_storage_luks_key_source=keyfile",
        "-e",
        "etcd_storage_luks_boot_unlock_timeout=soon",
    )
    assert rc != 0, output
    assert (
        "etcd_storage_luks_boot_unlock_timeout must be a systemd time span such as 90s or 5min; localhost "
        "has 'soon'. Nothing was changed." in output
    ), output


def tang_checks(tmp_path: Path, url: str) -> tuple[int, str]:
    return run_luks_file_checks(
        tmp_path,
        tmp_path / "volume.luks",
        "-e",
        "etcd_storage_luks_key_source=tang",
        "-e",
        f"etcd_storage_luks_tang_url={url}",
        "-e",
        "etcd_storage_luks_tang_thumbprint=some-thumbprint",
    )


def test_a_new_volume_is_not_bound_to_a_tang_server_that_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    rc, output = tang_checks(tmp_path, f"http://127.0.0.1:{port}")
    assert rc != 0, output
    assert (
        f"localhost cannot fetch http://127.0.0.1:{port}/adv" in output and "Nothing was changed." in output
    )


def test_a_new_volume_may_be_bound_to_a_tang_server_that_answers(tmp_path: Path) -> None:
    served = tmp_path / "tang"
    served.mkdir()
    (served / "adv").write_text('{"payload": "", "signatures": []}')
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        rc, output = tang_checks(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/")
        server.shutdown()
    assert rc == 0, output
