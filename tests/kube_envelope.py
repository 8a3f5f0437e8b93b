"""Values as the kube-apiserver stores them in etcd, made independently of scripts/secrets_scan.py.

The apiserver's transformers (k8s.io/apiserver/pkg/storage/value/encrypt): each value is
`k8s:enc:<provider>:v1:<key name>:` and then, for aescbc, a random 16-byte IV and AES-CBC with
PKCS#7 padding; for aesgcm, a random 12-byte nonce and AES-GCM sealed with the etcd key as the
authenticated data; for secretbox, a random 24-byte nonce and NaCl's secretbox (PyNaCl here, so
that the scanner's own XSalsa20 is checked against another implementation).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def secret_object(name: str, namespace: str = "default", data: str = "hunter2") -> bytes:
    """A Secret as the apiserver serialises it (protobuf, with its magic; the body is a stand-in)."""
    return b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret" + f"\x12{name}/{namespace}:{data}".encode()


def secret_key(namespace: str, name: str) -> str:
    return f"/registry/secrets/{namespace}/{name}"


def encrypt(provider: str, key_name: str, secret: bytes, plain: bytes, etcd_key: str) -> bytes:
    prefix = f"k8s:enc:{provider}:v1:{key_name}:".encode()
    if provider == "aescbc":
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plain) + padder.finalize()
        encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
        return prefix + iv + encryptor.update(padded) + encryptor.finalize()
    if provider == "aesgcm":
        nonce = os.urandom(12)
        return prefix + nonce + AESGCM(secret).encrypt(nonce, plain, etcd_key.encode())
    if provider == "secretbox":
        from nacl.secret import SecretBox

        # PyNaCl's result is the nonce, then Go's secretbox.Seal output (tag, then ciphertext).
        return prefix + bytes(SecretBox(secret).encrypt(plain, os.urandom(24)))
    raise ValueError(provider)
