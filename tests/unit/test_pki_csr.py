"""A host's certificate request is signed only when it asks for exactly what the inventory says.

Two levels: the judge itself (filter etcd_pki_csr_differences) on requests built here, and the
etcd_pki role on localhost with a node whose Python interpreter is replaced by one that returns a
forged request, as root on a compromised host could: the run must fail before anything is signed.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import REPO, run_playbook
from test_pki_local import STALE

ORGANIZATION = "unit"
SERVER_SPEC: dict[str, Any] = {
    "name": "server",
    "common_name": "etcd-1",
    "extended_key_usage": ["serverAuth", "clientAuth"],
    "subject_alt_name": ["DNS:etcd-1", "DNS:localhost", "IP:192.0.2.1", "IP:127.0.0.1"],
}
CLIENT_SPEC: dict[str, Any] = {
    "name": "apiserver-etcd-client",
    "common_name": "kube-apiserver-etcd-client",
    "extended_key_usage": ["clientAuth"],
    "subject_alt_name": [],
}
USAGES = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}


def request(
    spec: dict[str, Any],
    *,
    common_name: str | None = None,
    sans: list[str] | None = None,
    ca: bool = False,
    usages: list[str] | None = None,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    extra: x509.ExtensionType | None = None,
) -> str:
    """A request as openssl_csr_pipe builds it from the role's arguments, with the given changes."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or spec["common_name"]),
        ]
    )
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(STALE.wanted_extensions(spec)[x509.KeyUsage.oid].value, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([USAGES[u] for u in usages or spec["extended_key_usage"]]), critical=False
        )
    )
    names = spec["subject_alt_name"] if sans is None else sans
    if names:
        builder = builder.add_extension(STALE._subject_alt_name(names), critical=False)
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def differences(csr: str, spec: dict[str, Any], key_type: str = "ECC") -> list[str]:
    result: list[str] = STALE.etcd_pki_csr_differences(
        csr, spec, organization=ORGANIZATION, key_type=key_type, curve="secp256r1", rsa_size=3072
    )
    return result


def test_an_honest_request_has_no_differences() -> None:
    assert differences(request(SERVER_SPEC), SERVER_SPEC) == []
    assert differences(request(CLIENT_SPEC), CLIENT_SPEC) == []


@pytest.mark.parametrize(
    ("spec", "forge", "expected"),
    [
        pytest.param(
            SERVER_SPEC,
            {"common_name": "etcd-2"},
            "subject: asked for 'CN=etcd-2,O=unit', expected 'CN=etcd-1,O=unit'",
            id="another member's CN",
        ),
        pytest.param(
            SERVER_SPEC,
            {"sans": [*SERVER_SPEC["subject_alt_name"], "IP:192.0.2.2"]},
            "subjectAltName: asked for [DNS:etcd-1, DNS:localhost, IP:127.0.0.1, IP:192.0.2.1, IP:192.0.2.2],"
            " expected [DNS:etcd-1, DNS:localhost, IP:127.0.0.1, IP:192.0.2.1]",
            id="an extra SAN",
        ),
        pytest.param(
            CLIENT_SPEC,
            {"ca": True},
            "basicConstraints: asked for [CA:TRUE] (critical), expected [CA:FALSE] (critical)",
            id="CA:TRUE",
        ),
        pytest.param(
            CLIENT_SPEC,
            {"usages": ["serverAuth", "clientAuth"]},
            "extendedKeyUsage: asked for [serverAuth, clientAuth], expected [clientAuth]",
            id="serverAuth on a client certificate",
        ),
        pytest.param(
            CLIENT_SPEC,
            {"common_name": "etcd-peer.unit"},
            "subject: asked for 'CN=etcd-peer.unit,O=unit', expected 'CN=kube-apiserver-etcd-client,O=unit'",
            id="the peer CN from a non-member",
        ),
        pytest.param(
            CLIENT_SPEC,
            {"sans": ["DNS:etcd-1"]},
            "subjectAltName: asked for [DNS:etcd-1], expected none",
            id="a SAN on a certificate that has none",
        ),
        pytest.param(
            CLIENT_SPEC,
            {
                "extra": x509.NameConstraints(
                    permitted_subtrees=[x509.DNSName("example")], excluded_subtrees=None
                )
            },
            "nameConstraints: asked for [present], expected none",
            id="an extension the role never asks for",
        ),
        pytest.param(
            CLIENT_SPEC,
            {"key": rsa.generate_private_key(public_exponent=65537, key_size=2048)},
            "key: asked for ('RSA', 2048), expected ('ECC', 'secp256r1')",
            id="another key type",
        ),
    ],
)
def test_a_forged_request_is_refused_with_the_field_what_it_asked_and_what_was_expected(
    spec: dict[str, Any], forge: dict[str, Any], expected: str
) -> None:
    assert expected in differences(request(spec, **forge), spec)


def test_a_request_not_signed_by_its_own_key_is_refused() -> None:
    der = x509.load_pem_x509_csr(request(CLIENT_SPEC).encode()).public_bytes(serialization.Encoding.DER)
    # The last byte is inside the ECDSA signature's s value: the request still parses, but the
    # signature no longer proves that the host holds the key.
    tampered = x509.load_der_x509_csr(der[:-1] + bytes([der[-1] ^ 1]))
    pem = tampered.public_bytes(serialization.Encoding.PEM).decode()
    assert "signature: the request is not signed by the key it carries" in differences(pem, CLIENT_SPEC)


def test_garbage_is_refused() -> None:
    assert differences("not a request", CLIENT_SPEC)[0].startswith("request: unreadable or malformed")


# --- the role, with a node that returns forged requests -------------------------------------------

# The node's "Python": runs the real interpreter, then swaps any certificate request in the module's
# answer for one the attacker built with the node's own key (its private key is on the node).
FORGING_INTERPRETER = """#!{python}
import json, os, subprocess, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

done = subprocess.run([{python!r}, *sys.argv[1:]], stdin=sys.stdin, capture_output=True, text=True)
sys.stderr.write(done.stderr)
try:
    answer = json.loads(done.stdout)
except ValueError:
    answer = None
if "FORGE" in os.environ and isinstance(answer, dict) and "csr" in answer and not answer.get("failed"):
    forge = json.loads(os.environ["FORGE"])
    key = serialization.load_pem_private_key(open(os.environ["FORGE_KEY"], "rb").read(), None)
    usages = [getattr(ExtendedKeyUsageOID, u) for u in forge.get("usages", ["CLIENT_AUTH"])]
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "unit"),
            x509.NameAttribute(NameOID.COMMON_NAME, forge.get("cn", "kube-apiserver-etcd-client")),
        ]))
        .add_extension(x509.BasicConstraints(ca=forge.get("ca", False), path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if forge.get("sans"):
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in forge["sans"]]), critical=False
        )
    answer["csr"] = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    sys.stdout.write(json.dumps(answer))
else:
    sys.stdout.write(done.stdout)
sys.exit(done.returncode)
"""

FORGERIES: dict[str, tuple[dict[str, Any], str]] = {
    "another member's CN": ({"cn": "never-etcd-1"}, "subject: asked for 'CN=never-etcd-1,O=unit'"),
    "an extra SAN": ({"sans": ["never-etcd-1"]}, "subjectAltName: asked for [DNS:never-etcd-1]"),
    "CA:TRUE": ({"ca": True}, "basicConstraints: asked for [CA:TRUE] (critical)"),
    "serverAuth on a client certificate": (
        {"usages": ["SERVER_AUTH", "CLIENT_AUTH"]},
        "extendedKeyUsage: asked for [serverAuth, clientAuth], expected [clientAuth]",
    ),
    "the peer CN from a non-member": (
        {"cn": "etcd-peer.unit"},
        "subject: asked for 'CN=etcd-peer.unit,O=unit'",
    ),
}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture
def forging_node(
    tmp_path: Path, write_inventory: Callable[[dict[str, Any], dict[str, Any]], Path]
) -> Callable[[dict[str, Any] | None], tuple[str, int, Path, Path]]:
    """An apiserver host on localhost whose interpreter forges requests when FORGE is set."""
    controller, node = tmp_path / "controller-pki", tmp_path / "node"
    interpreter = tmp_path / "forging-python"
    interpreter.write_text(FORGING_INTERPRETER.format(python=sys.executable))
    interpreter.chmod(interpreter.stat().st_mode | stat.S_IXUSR)
    inventory = write_inventory(
        {
            "children": {
                "etcd": {"hosts": {"never-etcd-1": {"etcd_address": "192.0.2.1"}}},
                "kube_control_plane": {
                    "hosts": {
                        # Not "localhost": the controller's own tasks (delegated to localhost) keep
                        # the real interpreter, as they would on a real controller.
                        "node-1": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": str(interpreter),
                        }
                    }
                },
            }
        },
        {
            "etcd_cluster_name": "unit",
            "etcd_pki_controller_dir": str(controller),
            "etcd_pki_client_dir": str(node / "pki"),
            "etcd_pki_client_ca_path": str(node / "pki/etcd/ca.crt"),
        },
    )

    def run(forge: dict[str, Any] | None) -> tuple[str, int, Path, Path]:
        env = {"FORGE_KEY": str(node / "pki/apiserver-etcd-client.key")}
        if forge is not None:
            env["FORGE"] = json.dumps(forge)
        result = run_playbook(
            REPO / "tests/unit/playbooks/pki_client.yml",
            inventory,
            env={**{k: v for k, v in os.environ.items() if k != "FORGE"}, **env},
        )
        return result.stdout + result.stderr, result.returncode, controller, node

    return run


def test_a_node_that_forges_its_request_gets_nothing_signed(
    forging_node: Callable[[dict[str, Any] | None], tuple[str, int, Path, Path]],
) -> None:
    output, code, controller, node = forging_node(None)
    assert code == 0, output
    certificate = node / "pki/apiserver-etcd-client.crt"
    failures = {}
    for case, (forge, expected) in FORGERIES.items():
        certificate.unlink(missing_ok=True)
        before = snapshot(controller)
        output, code, _, _ = forging_node(forge)
        text = " ".join(output.split())
        refused = (
            code != 0
            and "Refusing to sign apiserver-etcd-client for node-1" in text
            and expected in text
            and "Nothing was signed" in text
        )
        if not refused or snapshot(controller) != before or certificate.exists():
            failures[case] = text[-3000:]
    assert not failures, json.dumps(failures, indent=1)
