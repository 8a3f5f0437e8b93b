"""Lookup kube_apiserver_etcd_new_key: a new data-encryption key for the kube-apiserver, base64.

    lookup('kube_apiserver_etcd_new_key', 'secretbox')  -> 32 random bytes, base64-encoded

Made with `cryptography`'s key generators (the operating system's random source), at the length
each provider requires: 32 bytes for secretbox (XSalsa20-Poly1305) and aescbc, and 32 for aesgcm
(AES-256; the apiserver also accepts 16 or 24). The key only ever lives in the controller's
vault-encrypted key file and, on the hosts, in the root-only EncryptionConfiguration.
"""

from __future__ import annotations

import base64
from typing import Any

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

_GENERATORS = {
    "aescbc": lambda: AESGCM.generate_key(bit_length=256),  # an AES-256 key, whatever the mode
    "aesgcm": lambda: AESGCM.generate_key(bit_length=256),
    "secretbox": ChaCha20Poly1305.generate_key,  # 32 random bytes, as XSalsa20 takes
}


class LookupModule(LookupBase):  # type: ignore[misc]  # ansible ships no type hints
    def run(
        self, terms: list[Any], variables: dict[str, object] | None = None, **kwargs: object
    ) -> list[str]:
        keys = []
        for provider in terms:
            if provider not in _GENERATORS:
                raise AnsibleLookupError(
                    f"no local key for provider {provider!r}: one of {sorted(_GENERATORS)}"
                )
            keys.append(base64.b64encode(_GENERATORS[provider]()).decode())
        return keys
