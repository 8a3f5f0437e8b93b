"""The etcd_pki role run for real on localhost: key custody, idempotence, check mode, renewal, logs.

Runs in seconds without containers; the molecule scenario covers the same role on members.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
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
    key = serialization.load_pem_private_key((node / "pki/apiserver-etcd-client.key").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )


# --- the one-pass read and the controller's staleness check -------------------------------------
# The role reads a host's PKI once (library/etcd_pki_read.py) and decides on the controller
# (filter_plugins/etcd_pki_stale.py) which certificates go through the full tasks. The files
# community.crypto wrote in a real run are the reference: the filter must call them current, and
# must call stale whatever those full tasks would change.


def load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


READ = load("roles/etcd_pki/library/etcd_pki_read.py", "etcd_pki_read")
STALE = load("roles/etcd_pki/filter_plugins/etcd_pki_stale.py", "etcd_pki_stale")
CLIENT_SPEC = {
    "name": "apiserver-etcd-client",
    "ca": "client",
    "common_name": "kube-apiserver-etcd-client",
    "extended_key_usage": ["clientAuth"],
    "subject_alt_name": [],
    "owner": "root",
}


@pytest.fixture
def issued(pki_run: Callable[..., tuple[str, Path]], tmp_path: Path) -> dict[str, Any]:
    """A real run's files as etcd_pki_read returns them, and the filter's other arguments."""
    _, node = pki_run()
    spec = {**CLIENT_SPEC, "dir": str(node / "pki")}
    trusted = [{"ca": "client", "path": str(node / "pki/etcd/ca.crt")}]
    base = f"{spec['dir']}/{spec['name']}"
    files = {
        **{d: READ.describe_path(d) for d in (spec["dir"], str(node / "pki/etcd"))},
        f"{base}.crt": READ.read_public_file(f"{base}.crt"),
        trusted[0]["path"]: READ.read_public_file(trusted[0]["path"]),
        f"{base}.key": READ.read_private_key(f"{base}.key"),
    }
    return {
        "files": files,
        "certificates": [spec],
        "trusted_cas": trusted,
        "ca_directory": str(tmp_path / "controller-pki"),
        "ca_files": {"client": "etcd-ca", "peer": "etcd-peer-ca"},
        "organization": "unit",
        "key_type": "ECC",
        "curve": "secp256r1",
        "rsa_size": 3072,
        "renewal_days": 30,
    }


def stale(arguments: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = STALE.etcd_pki_stale(
        arguments["files"], **{k: v for k, v in arguments.items() if k != "files"}
    )
    return result


def test_the_read_returns_the_public_key_and_never_the_private_key(issued: dict[str, Any]) -> None:
    spec = issued["certificates"][0]
    key_path = f"{spec['dir']}/{spec['name']}.key"
    entry = issued["files"][key_path]
    text = json.dumps(issued["files"])
    assert "PRIVATE KEY" not in text
    body = "".join(Path(key_path).read_text().splitlines()[1:-1])
    assert body[:40] not in text
    cert = x509.load_pem_x509_certificate(Path(f"{spec['dir']}/{spec['name']}.crt").read_bytes())
    public = serialization.load_pem_public_key(entry["public_key"].encode())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert public.public_bytes(serialization.Encoding.DER, spki) == cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
    assert (entry["key_type"], entry["curve"], entry["mode"]) == ("ECC", "secp256r1", "0600")


def test_what_the_role_wrote_is_current(issued: dict[str, Any]) -> None:
    assert stale(issued) == {"certificates": [], "trust": False, "reasons": {}}


def test_a_no_op_run_skips_the_per_certificate_tasks(pki_run: Callable[..., tuple[str, Path]]) -> None:
    pki_run()
    output, _ = pki_run()
    assert "Certs | " not in output, output
    assert "Trust | " not in output, output
    assert changed_count(output) == 0, output


def other_ca(tmp_path: Path) -> Path:
    """A CA with the same name as the lab's but another key: what a replaced CA looks like."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "etcd-ca (unit)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path / "other-ca"
    directory.mkdir(parents=True)
    (directory / "etcd-ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory


def drift_key_mode(a: dict[str, Any], _: Path) -> set[str]:
    next(v for k, v in a["files"].items() if k.endswith(".key"))["mode"] = "0644"
    return {"apiserver-etcd-client"}


def drift_key_type(a: dict[str, Any], _: Path) -> set[str]:
    a["key_type"] = "RSA"
    return {"apiserver-etcd-client"}


def drift_organization(a: dict[str, Any], _: Path) -> set[str]:
    a["organization"] = "another-cluster"
    return {"apiserver-etcd-client"}


def drift_names(a: dict[str, Any], _: Path) -> set[str]:
    a["certificates"][0]["subject_alt_name"] = ["DNS:apiserver.example", "IP:192.0.2.10"]
    return {"apiserver-etcd-client"}


def drift_usage(a: dict[str, Any], _: Path) -> set[str]:
    a["certificates"][0]["extended_key_usage"] = ["serverAuth", "clientAuth"]
    return {"apiserver-etcd-client"}


def drift_renewal(a: dict[str, Any], _: Path) -> set[str]:
    a["renewal_days"] = 366
    return {"apiserver-etcd-client"}


def drift_certificate_of_another_key(a: dict[str, Any], _: Path) -> set[str]:
    key = ec.generate_private_key(ec.SECP256R1())
    entry = next(v for k, v in a["files"].items() if k.endswith(".key"))
    entry["public_key"] = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return {"apiserver-etcd-client"}


def drift_ca_replaced(a: dict[str, Any], tmp_path: Path) -> set[str]:
    a["ca_directory"] = str(other_ca(tmp_path))
    return {"apiserver-etcd-client", "trust"}


def drift_trusted_ca_edited(a: dict[str, Any], _: Path) -> set[str]:
    a["files"][a["trusted_cas"][0]["path"]]["content"] += "\n"
    return {"trust"}


def drift_certificate_owner(a: dict[str, Any], _: Path) -> set[str]:
    next(v for k, v in a["files"].items() if k.endswith(".crt"))["owner"] = "nobody"
    return {"apiserver-etcd-client"}


def drift_directory_missing(a: dict[str, Any], _: Path) -> set[str]:
    a["files"][a["certificates"][0]["dir"]] = {"exists": False}
    return {"trust"}


def drift_no_ca_on_the_controller(a: dict[str, Any], tmp_path: Path) -> set[str]:
    a["ca_directory"] = str(tmp_path / "missing")
    return {"apiserver-etcd-client", "trust"}


DRIFTS = [
    drift_key_mode,
    drift_key_type,
    drift_organization,
    drift_names,
    drift_usage,
    drift_renewal,
    drift_certificate_of_another_key,
    drift_ca_replaced,
    drift_trusted_ca_edited,
    drift_certificate_owner,
    drift_directory_missing,
    drift_no_ca_on_the_controller,
]


def test_whatever_the_full_tasks_would_change_is_stale(issued: dict[str, Any], tmp_path: Path) -> None:
    # One real run for every drift (each drift changes a copy): a run costs seconds, a drift nothing.
    wrong = {}
    for number, drift in enumerate(DRIFTS):
        arguments = copy.deepcopy(issued)
        expected = drift(arguments, tmp_path / str(number))
        result = stale(arguments)
        found = set(result["certificates"]) | ({"trust"} if result["trust"] else set())
        if found != expected or len(result["reasons"]) < len(expected):
            wrong[drift.__name__] = result
    assert not wrong, wrong


def test_a_drifted_file_is_repaired_by_the_next_run(pki_run: Callable[..., tuple[str, Path]]) -> None:
    _, node = pki_run()
    key, ca = node / "pki/apiserver-etcd-client.key", node / "pki/etcd/ca.crt"
    key.chmod(0o644)
    ca.write_text(ca.read_text() + "\n")
    output, _ = pki_run()
    assert key.stat().st_mode & 0o777 == 0o600
    assert ca.read_text().endswith("-----END CERTIFICATE-----\n")
    assert changed_count(output) == 2, output


def test_each_run_checks_the_settings_and_the_cas_once_unless_a_play_changes_them(
    tmp_path: Path, pki_run: Callable[..., tuple[str, Path]]
) -> None:
    pki_run()  # the CAs exist, as on every run after the first
    inventory = next(tmp_path.rglob("hosts.yml"))
    result = run_playbook(REPO / "tests/unit/playbooks/pki_three_plays.yml", inventory)
    output = result.stdout + result.stderr
    per_play = output.split("PLAY [")[1:]
    assert len(per_play) == 3, output

    def ran(play: str, task: str) -> bool:
        return f"TASK [etcd_pki : {task}]" in play

    once = ("Preflight | Look at the existing CAs on the controller", "CA | Self-sign the CA certificates")
    for task in once:
        assert ran(per_play[0], task) and not ran(per_play[1], task), (task, output)
    # The third play's own key size is checked, and refused, before anything is written.
    assert result.returncode != 0, output
    assert ran(per_play[2], "Preflight | Check the PKI settings"), output
    assert "etcd_pki_rsa_key_size 2048 is too small" in " ".join(output.split()), output
    assert not ran(per_play[2], "CA | Create CA private keys on the controller"), output
