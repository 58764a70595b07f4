"""The webhook's own CA set, as kept in one Secret: pure rules for renewing it and picking the signing CA.

Why a Secret and not memory: every replica, and every restart, must present a certificate the apiserver trusts,
and the apiserver trusts what the MutatingWebhookConfiguration's caBundle says. One CA shared through a Secret
means one caBundle for all replicas; each replica issues its own short-lived server certificate from it
(the private key of that certificate never leaves the process).

Rotation without a failed admission, in three steps that each replica takes from what it reads:
1. before the newest CA is within `renew_before` of its end, a new CA is added to the Secret (the old one
   stays until it expires), and the caBundle becomes both;
2. a replica signs with the new CA only after it has seen the new CA in the configuration's caBundle for
   `propagation` (the apiserver reads webhook configurations through an informer: a moment, not an instant);
3. an expired CA is dropped from the Secret and from the caBundle; no certificate outlives its CA.

The Secret's layout: `ca.crt` is the PEM bundle of every CA (oldest first: it is the caBundle), `ca.key` their
keys in the same order. Pure functions of (CAs, times): no I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tokenbudget_operator.injector.certs import CertificateAuthority, new_ca

CA_CERTS_KEY = "ca.crt"
CA_KEYS_KEY = "ca.key"


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def load(data: Mapping[str, bytes]) -> list[CertificateAuthority]:
    """The CAs in a Secret's (decoded) data, oldest first; [] for an empty Secret; ValueError if inconsistent."""
    certs_pem, keys_pem = data.get(CA_CERTS_KEY, b""), data.get(CA_KEYS_KEY, b"")
    if not certs_pem.strip() and not keys_pem.strip():
        return []
    cert_list = x509.load_pem_x509_certificates(certs_pem)
    key_list = [serialization.load_pem_private_key(block, password=None) for block in _pem_blocks(keys_pem)]
    if len(cert_list) != len(key_list):
        raise ValueError(f"{CA_CERTS_KEY} holds {len(cert_list)} certificates but {CA_KEYS_KEY} {len(key_list)} keys")
    found: list[CertificateAuthority] = []
    for cert, key in zip(cert_list, key_list, strict=True):
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise ValueError(f"a key in {CA_KEYS_KEY} does not match the certificate at its place in {CA_CERTS_KEY}")
        found.append(CertificateAuthority(cert=cert, key=key))
    return sorted(found, key=lambda ca: ca.cert.not_valid_before_utc)


def _pem_blocks(pem: bytes) -> list[bytes]:
    end = b"-----END "
    blocks, rest = [], pem
    while (stop := rest.find(end)) >= 0:
        line_end = rest.find(b"\n", stop)
        line_end = len(rest) if line_end < 0 else line_end + 1
        blocks.append(rest[:line_end].strip() + b"\n")
        rest = rest[line_end:]
    return blocks


def dump(cas: Sequence[CertificateAuthority]) -> dict[str, bytes]:
    """The Secret's data for `cas` (not yet base64)."""
    return {CA_CERTS_KEY: bundle_pem(cas), CA_KEYS_KEY: b"".join(ca.key_pem for ca in cas)}


def bundle_pem(cas: Sequence[CertificateAuthority]) -> bytes:
    """The caBundle: every CA, oldest first."""
    return b"".join(ca.cert_pem for ca in cas)


def renew(
    cas: Sequence[CertificateAuthority],
    *,
    now: datetime.datetime,
    valid_for: datetime.timedelta,
    renew_before: datetime.timedelta,
) -> list[CertificateAuthority] | None:
    """The CA set to store now, or None when `cas` needs no change.

    Expired CAs are dropped; a new CA is added when there is none or the newest ends within `renew_before`.
    """
    live = [ca for ca in cas if ca.cert.not_valid_after_utc > now]
    if not live or live[-1].cert.not_valid_after_utc - renew_before <= now:
        live.append(new_ca(valid_for=valid_for, now=now))
    return None if [fingerprint(ca.cert) for ca in live] == [fingerprint(ca.cert) for ca in cas] else live


def trusted(bundles: Sequence[bytes]) -> set[bytes]:
    """Fingerprints of the CAs every one of `bundles` (each webhook's caBundle, PEM) contains."""
    if not bundles:
        return set()
    sets = []
    for pem in bundles:
        try:
            sets.append({fingerprint(cert) for cert in x509.load_pem_x509_certificates(pem)})
        except ValueError:  # empty or not PEM: trusts nothing
            return set()
    return set.intersection(*sets)


def signer(
    cas: Sequence[CertificateAuthority],
    trusted_since: Mapping[bytes, datetime.datetime],
    *,
    now: datetime.datetime,
    propagation: datetime.timedelta,
) -> CertificateAuthority:
    """The newest CA seen in the caBundle for at least `propagation`; else the oldest (the only one at install).

    The fallback is what the apiserver most likely trusts already: during a rotation that a fresh replica
    joins, the old CA; on a first install, the one CA there is.
    """
    live = [ca for ca in cas if ca.cert.not_valid_after_utc > now]
    if not live:
        raise ValueError("no CA that is still valid")
    settled = [ca for ca in live if (seen := trusted_since.get(fingerprint(ca.cert))) and seen + propagation <= now]
    return settled[-1] if settled else live[0]
