"""library/etcd_member_read.py: each question answered on its own, against real processes and mTLS."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from test_etcd_probe import Pki, pki, server  # noqa: F401  # the mTLS server fixtures

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "etcd_member_read", REPO / "roles/etcd/library/etcd_member_read.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


READ = _load()


def test_health_is_read_over_mtls(pki: Pki, server: str) -> None:  # noqa: F811
    answer = READ.health(f"{server}/health", str(pki.ca), str(pki.client_cert), str(pki.client_key), 5)
    assert answer == {"content": '{"health":"true"}', "error": ""}


def test_a_server_the_ca_did_not_sign_is_not_asked(pki: Pki, server: str, tmp_path: Path) -> None:  # noqa: F811
    # The server's own certificate as the CA: the chain does not verify, so no answer is taken.
    answer = READ.health(
        f"{server}/health", str(pki.server_cert), str(pki.client_cert), str(pki.client_key), 5
    )
    assert answer["content"] == ""
    assert "CERTIFICATE_VERIFY_FAILED" in answer["error"], answer


def test_a_member_that_does_not_listen_gives_an_error_and_no_content(pki: Pki) -> None:  # noqa: F811
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    answer = READ.health(
        f"https://127.0.0.1:{port}/health", str(pki.ca), str(pki.client_cert), str(pki.client_key), 5
    )
    assert answer["content"] == "" and answer["error"], answer


def test_a_process_command_line_is_read_argument_by_argument() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "--an argument with spaces"]
    with subprocess.Popen(argv) as sleeping:
        try:
            # Until the child has exec'd, /proc shows the forking Python's (or no) arguments.
            for _ in range(100):
                if READ.command_line(sleeping.pid) == argv:
                    break
                time.sleep(0.02)
            assert READ.command_line(sleeping.pid) == argv
        finally:
            sleeping.kill()
    assert READ.command_line(0) == []


def test_no_pid_means_no_listener_and_no_label() -> None:
    assert READ.listeners(0) == []
    assert READ.apparmor_label(0) is None


def test_the_listening_sockets_of_this_process_are_found() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert f"127.0.0.1:{port}" in READ.listeners(os.getpid())
    assert f"127.0.0.1:{port}" not in READ.listeners(os.getpid())


def test_storage_names_the_filesystem_and_its_source(tmp_path: Path) -> None:
    fstype, source, device_type = READ.storage(str(tmp_path))
    assert fstype not in ("", "-") and source not in ("", "-"), (fstype, source)
    assert device_type


def test_a_missing_program_is_rc_127_not_an_exception() -> None:
    assert READ.run(["/nonexistent/etcdctl", "member", "list"]).returncode == 127
