"""The controller's expectation of a host's PKI, and two filters that judge what a host sends back.

Filter etcd_pki_stale: which of a host's keys, certificates and CA files a run would change.

The role reads a host's PKI in one remote task (module etcd_pki_read) and this filter decides on the
controller what is stale. Only stale certificates go through the role's full tasks (key, request,
signature, install), so a run that changes nothing costs one remote task instead of five per
certificate.

The filter must never call current what those full tasks would change: it checks at least what
community.crypto's openssl_privatekey, x509_certificate_pipe (provider ownca) and the copy module
check, and anything it cannot read counts as stale. Calling a current certificate stale only costs
time: the full tasks then find nothing to do.

Filter etcd_pki_csr_differences: how a certificate request returned by a host differs from what
the inventory says that host's certificate must be. The ownca provider copies a request's subject
and every extension into the certificate, so the controller signs a request only when this list is
empty: from the host it takes the public key, and the rest must be exactly the expectation.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_EXTENDED_KEY_USAGES = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
}
# What the role's certificate requests ask for besides the names (see tasks/certificate.yml).
_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_IGNORED_EXTENSIONS = (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier)


def _subject_alt_name(entries: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for entry in entries:
        kind, _, value = entry.partition(":")
        if kind == "DNS":
            names.append(x509.DNSName(value))
        elif kind == "IP":
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            raise ValueError(f"unsupported subject alternative name {entry!r}")
    return x509.SubjectAlternativeName(names)


def wanted_extensions(spec: dict[str, Any]) -> dict[x509.ObjectIdentifier, x509.Extension[Any]]:
    """The extensions the role's certificate request asks for, keyed by OID (SKI and AKI aside)."""
    values: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_KEY_USAGE, True),
        (x509.ExtendedKeyUsage([_EXTENDED_KEY_USAGES[u] for u in spec["extended_key_usage"]]), False),
    ]
    if spec.get("subject_alt_name"):
        values.append((_subject_alt_name(spec["subject_alt_name"]), False))
    return {value.oid: x509.Extension(value.oid, critical, value) for value, critical in values}


def _attributes_differ(entry: dict[str, Any], kind: str, mode: str, owner: str) -> bool:
    return (
        not entry.get("exists")
        or entry.get("type") != kind
        or entry.get("mode") != mode
        or entry.get("owner") != owner
        or entry.get("group") != owner
    )


def _der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_reason(
    entry: dict[str, Any], spec: dict[str, Any], *, key_type: str, curve: str, rsa_size: int
) -> str:
    """Why openssl_privatekey would change the key file, or "" when it would not."""
    if _attributes_differ(entry, "file", "0600", spec["owner"]):
        return "key missing or with other mode or owner"
    if "public_key" not in entry:
        return "key unreadable"
    wanted = (key_type, curve if key_type == "ECC" else rsa_size)
    found = (entry.get("key_type"), entry.get("curve") if key_type == "ECC" else entry.get("size"))
    return "" if found == wanted else f"key is {found}, wanted {wanted}"


def wanted_subject(spec: dict[str, Any], organization: str) -> x509.Name:
    """The subject the role's certificate request asks for."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, spec["common_name"]),
        ]
    )


def _names_reason(cert: x509.Certificate, spec: dict[str, Any], organization: str) -> str:
    """What the certificate request would change: subject, names, usages (x509_certificate_pipe)."""
    if cert.subject != wanted_subject(spec, organization):
        return "another subject"
    extensions = {e.oid: e for e in cert.extensions if not isinstance(e.value, _IGNORED_EXTENSIONS)}
    if extensions != wanted_extensions(spec):
        return "other extensions (names or usages)"
    return ""


def _issuer_reason(cert: x509.Certificate, ca: x509.Certificate) -> str:
    """Whether the current CA signed it, with key identifiers as the ownca provider writes them."""
    try:
        cert.verify_directly_issued_by(ca)
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return "not signed by the current CA, or without key identifiers"
    if ski.digest != x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest:
        return "subject key identifier does not match the key"
    if aki != x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski):
        return "authority key identifier does not match the CA"
    return ""


def certificate_reason(
    cert_entry: dict[str, Any],
    key_entry: dict[str, Any],
    spec: dict[str, Any],
    *,
    ca_pem: str,
    organization: str,
    renewal_at: datetime.datetime,
) -> str:
    """Why the role would re-issue or re-install the certificate, or "" when it would not."""
    if _attributes_differ(cert_entry, "file", "0644", "root"):
        return "certificate missing or with other mode or owner"
    try:
        cert = x509.load_pem_x509_certificate(cert_entry.get("content", "").encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
        public_key = serialization.load_pem_public_key(key_entry["public_key"].encode("ascii"))
    except (ValueError, KeyError, UnicodeEncodeError):
        return "certificate, CA or key unreadable"
    if _der(cert.public_key()) != _der(public_key):
        return "certificate does not match the key"
    reason = _issuer_reason(cert, ca) or _names_reason(cert, spec, organization)
    if not reason and not cert.not_valid_before_utc <= renewal_at <= cert.not_valid_after_utc:
        reason = f"due for renewal (expires {cert.not_valid_after_utc:%Y-%m-%d})"
    return reason


# --- a host's certificate request, judged against the expectation ---------------------------------

_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
_USAGE_NAMES = {oid: name for name, oid in _EXTENDED_KEY_USAGES.items()}


def _describe_general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    return f"{type(name).__name__}:{name.value}"


def _describe_extension(extension: x509.Extension[Any] | None) -> str:
    """An extension as an operator reads it in a refusal: "none", "CA:TRUE (critical)", ..."""
    if extension is None:
        return "none"
    value = extension.value
    if isinstance(value, x509.BasicConstraints):
        text = f"CA:{str(value.ca).upper()}" + (
            f", pathlen:{value.path_length}" if value.path_length is not None else ""
        )
    elif isinstance(value, x509.KeyUsage):
        text = ", ".join(flag for flag in _KEY_USAGE_FLAGS if getattr(value, flag))
    elif isinstance(value, x509.ExtendedKeyUsage):
        text = ", ".join(_USAGE_NAMES.get(oid, oid.dotted_string) for oid in value)
    elif isinstance(value, x509.SubjectAlternativeName):
        text = ", ".join(sorted(_describe_general_name(name) for name in value))
    else:
        text = "present"
    return f"[{text}]" + (" (critical)" if extension.critical else "")


def _extension_name(oid: x509.ObjectIdentifier) -> str:
    return oid._name if oid._name != "Unknown OID" else oid.dotted_string


def _request_key(public_key: PublicKeyTypes) -> tuple[str, str | int]:
    """Key type and curve (ECC) or size (RSA) of a request's public key, as the inventory names them."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ECC", public_key.curve.name
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", public_key.key_size
    return type(public_key).__name__, ""


def etcd_pki_csr_differences(
    csr_pem: str,
    spec: dict[str, Any],
    *,
    organization: str,
    key_type: str,
    curve: str,
    rsa_size: int | str,
) -> list[str]:
    """Each way the host's request differs from the expectation: "<field>: asked for X, expected Y".

    An empty list is the only answer under which the controller signs. Every field the ownca
    provider copies into a certificate is compared (subject, every extension and its criticality),
    and the request must be signed by the key it carries.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        asked = {extension.oid: extension for extension in csr.extensions}
        public_key = csr.public_key()
    except (
        ValueError,
        UnicodeEncodeError,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as error:
        return [f"request: unreadable or malformed ({error})"]
    differences = []
    if not csr.is_signature_valid:
        differences.append("signature: the request is not signed by the key it carries")
    subject = wanted_subject(spec, organization)
    if csr.subject != subject:
        differences.append(
            f"subject: asked for {csr.subject.rfc4514_string()!r}, expected {subject.rfc4514_string()!r}"
        )
    wanted = wanted_extensions(spec)
    for oid in sorted(set(wanted) | set(asked), key=lambda o: o.dotted_string):
        found, expected = asked.get(oid), wanted.get(oid)
        if found != expected:
            differences.append(
                f"{_extension_name(oid)}: asked for {_describe_extension(found)},"
                f" expected {_describe_extension(expected)}"
            )
    key_wanted = (key_type, curve if key_type == "ECC" else int(rsa_size))
    if _request_key(public_key) != key_wanted:
        differences.append(f"key: asked for {_request_key(public_key)}, expected {key_wanted}")
    return differences


def read_ca_certificates(ca_directory: str, ca_files: dict[str, str]) -> dict[str, str]:
    """The controller's CA certificates by role, byte for byte as the copy module would install them."""
    texts = {}
    for role, name in ca_files.items():
        path = Path(ca_directory) / f"{name}.crt"
        if path.is_file():
            texts[role] = path.read_text(encoding="ascii")
    return texts


def etcd_pki_stale(
    files: dict[str, dict[str, Any]],
    *,
    certificates: list[dict[str, Any]],
    trusted_cas: list[dict[str, Any]],
    ca_directory: str,
    ca_files: dict[str, str],
    organization: str,
    key_type: str,
    curve: str,
    rsa_size: int | str,
    renewal_days: int | str,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """What a run would change: stale certificate names, whether the CA files are stale, and why.

    `files` is etcd_pki_read's result; `ca_files` maps a CA's role (client, peer) to its file name
    in `ca_directory` on the controller, where it may not exist yet (check mode on a new controller).
    """
    now = now or datetime.datetime.now(datetime.UTC)
    ca_certificates = read_ca_certificates(ca_directory, ca_files)
    reasons: dict[str, str] = {}
    directories = {s["dir"] for s in certificates} | {t["path"].rsplit("/", 1)[0] for t in trusted_cas}
    for directory in sorted(directories):
        if _attributes_differ(files.get(directory, {}), "directory", "0755", "root"):
            reasons[directory] = "directory missing or with other mode or owner"
    for trusted in trusted_cas:
        entry = files.get(trusted["path"], {})
        if _attributes_differ(entry, "file", "0644", "root"):
            reasons[trusted["path"]] = "CA certificate missing or with other mode or owner"
        elif entry.get("content") != ca_certificates.get(trusted["ca"]):
            reasons[trusted["path"]] = "CA certificate differs from the controller's"
    stale_certificates = []
    for spec in certificates:
        base = f"{spec['dir']}/{spec['name']}"
        key_entry = files.get(f"{base}.key", {})
        reason = key_reason(key_entry, spec, key_type=key_type, curve=curve, rsa_size=int(rsa_size))
        if not reason and spec["ca"] not in ca_certificates:
            reason = "no CA certificate on the controller"
        if not reason:
            reason = certificate_reason(
                files.get(f"{base}.crt", {}),
                key_entry,
                spec,
                ca_pem=ca_certificates[spec["ca"]],
                organization=organization,
                renewal_at=now + datetime.timedelta(days=int(renewal_days)),
            )
        if reason:
            stale_certificates.append(spec["name"])
            reasons[spec["name"]] = reason
    trust_stale = any(r in reasons for r in directories | {t["path"] for t in trusted_cas})
    return {"certificates": stale_certificates, "trust": trust_stale, "reasons": reasons}


class FilterModule:
    """The role's filters."""

    def filters(self) -> dict[str, Any]:
        return {"etcd_pki_stale": etcd_pki_stale, "etcd_pki_csr_differences": etcd_pki_csr_differences}
