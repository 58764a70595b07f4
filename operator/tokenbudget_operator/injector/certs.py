"""The webhook server's TLS material: self-signed with `cryptography`, or files from a mounted Secret.

Not kopf's own generator: it goes through certbuilder/oscrypto, which fails on OpenSSL 3 here. Both sources
give the same thing, `CertMaterial` (PEM bytes), and tell when it changed, so the server can swap in a new
SSL context without dropping its listening socket (see server.py).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

CERT_FILE = "tls.crt"  # kubernetes.io/tls Secret keys, as cert-manager writes them
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"  # optional: without it the caBundle is tls.crt itself
CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates start this much in the past: the apiserver's clock may lag


@dataclass(frozen=True)
class CertMaterial:
    """A server certificate (chain), its key and the CA bundle clients (the apiserver) should trust; PEM."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    not_after: datetime.datetime  # of the server certificate, UTC


class CertSource(Protocol):
    """Where the server's certificate comes from, and when it changes."""

    def current(self) -> CertMaterial:
        """The material to serve now (may raise OSError/ValueError while files are half-written)."""
        ...

    async def wait_for_change(self) -> None:
        """Return once current() has something new to say."""
        ...


def generate(hosts: Sequence[str], *, valid_for: datetime.timedelta = datetime.timedelta(days=365)) -> CertMaterial:
    """A fresh CA and a server certificate it signs, for `hosts` (IP addresses become IP SANs, others DNS SANs).

    Two certificates rather than one self-signed leaf: the apiserver (Go) wants a CA in caBundle, and the
    leaf could then be renewed under the same CA. EC P-256 keys: fast to make, accepted everywhere.
    """
    ca = new_ca(valid_for=valid_for)
    return issue(ca, hosts, not_after=ca.cert.not_valid_after_utc)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate and its private key (the key signs the webhook server's certificates)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def new_ca(*, valid_for: datetime.timedelta, now: datetime.datetime | None = None) -> CertificateAuthority:
    """A self-signed CA certificate valid for `valid_for` from now (and 5 minutes before, for clock skew)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokenbudget-webhook-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def issue(
    ca: CertificateAuthority,
    hosts: Sequence[str],
    *,
    not_after: datetime.datetime,
    now: datetime.datetime | None = None,
) -> CertMaterial:
    """A server certificate for `hosts` signed by `ca`, valid until `not_after` (never past the CA's own end)."""
    if not hosts:
        raise ValueError("a certificate needs at least one host name or IP address")
    now = now or datetime.datetime.now(datetime.UTC)
    not_after = min(not_after, ca.cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # de-duplicated, order kept
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    common_name = next((h for h in hosts if not _is_ip(h)), hosts[0])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, ca.cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertMaterial(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        ca_pem=ca.cert_pem,
        not_after=not_after,
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_context(material: CertMaterial) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context holding the material (raises ssl.SSLError if cert and key do not match).

    `ssl` loads keys only from files: they go to a private temporary directory for the instant of loading.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="tokenbudget-tls-") as tmp:  # mode 0700
        cert_file, key_file = Path(tmp, CERT_FILE), Path(tmp, KEY_FILE)
        cert_file.write_bytes(material.cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(material.key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


class SelfSignedSource:
    """Made in memory at startup; made again `renew_before` ahead of expiry (the caBundle follows)."""

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        valid_for: datetime.timedelta = datetime.timedelta(days=365),
        renew_before: datetime.timedelta = datetime.timedelta(days=30),
    ) -> None:
        self._hosts = list(hosts)
        self._valid_for = valid_for
        self._renew_before = renew_before
        self._material = generate(self._hosts, valid_for=valid_for)

    def current(self) -> CertMaterial:
        return self._material

    async def wait_for_change(self) -> None:
        renew_at = self._material.not_after - self._renew_before
        left = (renew_at - datetime.datetime.now(datetime.UTC)).total_seconds()
        while left > 0:
            await asyncio.sleep(min(left, 3600.0))  # re-check hourly: a suspended host's clock jumps
            left = (renew_at - datetime.datetime.now(datetime.UTC)).total_seconds()
        self._material = generate(self._hosts, valid_for=self._valid_for)


class SecretDirSource:
    """tls.crt, tls.key and (optionally) ca.crt in a directory, typically a mounted Secret.

    Rotation (cert-manager renewing the Secret, the kubelet swapping the mounted files) is noticed by polling
    the files' mtime, inode and size every `interval` seconds: Secret volumes are updated by an atomic symlink
    swap that sends no useful filesystem events, and the check costs three stat() calls.
    """

    def __init__(self, directory: Path, *, interval: float = 10.0) -> None:
        self._dir = Path(directory)
        self._interval = interval
        self._seen = self._fingerprint()

    def _paths(self) -> list[Path]:
        return [self._dir / CERT_FILE, self._dir / KEY_FILE, self._dir / CA_FILE]

    def _fingerprint(self) -> tuple[tuple[int, int, int] | None, ...]:
        marks: list[tuple[int, int, int] | None] = []
        for path in self._paths():
            try:
                stat = os.stat(path)  # follows the ..data symlink of a Secret volume
            except FileNotFoundError:
                marks.append(None)
            else:
                marks.append((stat.st_mtime_ns, stat.st_ino, stat.st_size))
        return tuple(marks)

    def current(self) -> CertMaterial:
        cert_pem = (self._dir / CERT_FILE).read_bytes()
        key_pem = (self._dir / KEY_FILE).read_bytes()
        ca_path = self._dir / CA_FILE
        ca_pem = ca_path.read_bytes() if ca_path.is_file() else cert_pem
        leaf = x509.load_pem_x509_certificate(cert_pem)
        return CertMaterial(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem, not_after=leaf.not_valid_after_utc)

    async def wait_for_change(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            mark = self._fingerprint()
            if mark != self._seen:
                self._seen = mark
                logger.info("webhook TLS files changed in %s", self._dir)
                return


def write_material(material: CertMaterial, directory: Path) -> None:
    """Write material in the Secret layout (tls.crt, tls.key, ca.crt); for tests and local runs."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CERT_FILE).write_bytes(material.cert_pem)
    key_file = directory / KEY_FILE
    key_file.touch(mode=0o600)
    key_file.write_bytes(material.key_pem)
    (directory / CA_FILE).write_bytes(material.ca_pem)
