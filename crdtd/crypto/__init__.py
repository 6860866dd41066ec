"""Identity: node keys, signature schemes (Ed25519, ML-DSA-65), X.509 CA and TLS helpers,
and the federation directory."""

from crdtd.crypto.keys import NodeKey, verify_ed25519
from crdtd.crypto.schemes import PublicKeys, SignaturePolicy, key_id_of

__all__ = ["NodeKey", "PublicKeys", "SignaturePolicy", "key_id_of", "verify_ed25519"]
