"""The etcd_pki role run for real on localhost: key custody, idempotence, check mode, renewal, logs.

Runs in seconds without containers; the molecule scenario covers the same role on members.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import REPO, run_playbook

PLAYBOOK = REPO / "tests/unit/playbooks/pki_client.yml"
PASSPHRASE = "unit-test-ca-passphrase-5f2c9e"


@pytest.fixture
def pki_run(
    tmp_path: Path, write_inventory: Callable[[dict[str, Any], dict[str, Any]], Path]
) -> Callable[..., tuple[str, Path]]:
    controller = tmp_path / "controller-pki"
    node = tmp_path / "node"
    inventory = write_inventory(
        {
            "children": {
                # A member that is never contacted: the PKI only needs the group to exist.
                "etcd": {"hosts": {"never-etcd-1": {"etcd_address": "192.0.2.1"}}},
                "kube_control_plane": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                        }
                    }
                },
            }
        },
        {
            "etcd_cluster_name": "unit",
            "etcd_pki_controller_dir": str(controller),
            "etcd_pki_ca_passphrase": PASSPHRASE,
            "etcd_pki_client_dir": str(node / "pki"),
            "etcd_pki_client_ca_path": str(node / "pki/etcd/ca.crt"),
        },
    )

    def run(*args: str) -> tuple[str, Path]:
        result = run_playbook(PLAYBOOK, inventory, *args)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        return output, node

    return run


def changed_count(output: str) -> int:
    match = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", output)
    assert match, output
    return int(match.group(1))


def test_first_run_at_vvv_logs_no_private_key_and_no_passphrase(
    pki_run: Callable[..., tuple[str, Path]],
) -> None:
    output, node = pki_run("-vvv")
    assert changed_count(output) > 0
    assert "PRIVATE KEY" not in output
    assert PASSPHRASE not in output
    key_text = (node / "pki/apiserver-etcd-client.key").read_text()
    body = "".join(key_text.splitlines()[1:-1])
    assert body[:40] not in output


def test_client_certificate_is_client_only_signed_by_the_etcd_ca(
    pki_run: Callable[..., tuple[str, Path]],
) -> None:
    _, node = pki_run()
    cert = x509.load_pem_x509_certificate((node / "pki/apiserver-etcd-client.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((node / "pki/etcd/ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert "etcd-ca" in ca.subject.rfc4514_string()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=364) < lifetime < datetime.timedelta(days=366)
    key = node / "pki/apiserver-etcd-client.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_second_run_and_check_mode_change_nothing(pki_run: Callable[..., tuple[str, Path]]) -> None:
    pki_run()
    before = (Path(pki_run()[1]) / "pki/apiserver-etcd-client.crt").read_bytes()
    output, node = pki_run()
    assert changed_count(output) == 0, output
    assert (node / "pki/apiserver-etcd-client.crt").read_bytes() == before
    output, _ = pki_run("--check", "--diff")
    assert changed_count(output) == 0, output


def test_certificate_inside_the_renewal_window_is_reissued_with_the_same_key(
    pki_run: Callable[..., tuple[str, Path]],
) -> None:
    _, node = pki_run("-e", "etcd_pki_leaf_lifetime_days=2", "-e", "etcd_pki_renewal_days=0")
    cert_path, key_path = node / "pki/apiserver-etcd-client.crt", node / "pki/apiserver-etcd-client.key"
    before, key_before = cert_path.read_bytes(), key_path.read_bytes()
    # The 2-day certificate now expires inside a 2-day renewal window.
    output, _ = pki_run("-e", "etcd_pki_leaf_lifetime_days=3", "-e", "etcd_pki_renewal_days=2")
    assert changed_count(output) > 0
    assert cert_path.read_bytes() != before
    assert key_path.read_bytes() == key_before


def test_a_lost_key_gets_a_new_key_and_a_matching_certificate(
    pki_run: Callable[..., tuple[str, Path]],
) -> None:
    _, node = pki_run()
    (node / "pki/apiserver-etcd-client.key").unlink()
    pki_run()
    cert = x509.load_pem_x509_certificate((node / "pki/apiserver-etcd-client.crt").read_bytes())
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((node / "pki/apiserver-etcd-client.key").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
