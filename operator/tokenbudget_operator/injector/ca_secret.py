"""TLS source `CASecret`: the chart's default, no cert-manager needed.

The CA set lives in one Secret of the operator's namespace (rules in ca_store.py); each replica issues its own
server certificate from it, keeps the MutatingWebhookConfiguration's caBundle equal to the Secret's CAs (when
the install owns the configuration: only that field is patched), and re-reads both every `interval` seconds,
so a CA another replica added, a configuration re-created by the install, or an expiring certificate are
all noticed without a watch. The Secret is made (empty) by the chart: the operator needs no right to create
Secrets, only get and patch of this one by name.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from tokenbudget_operator.injector import ca_store, metrics
from tokenbudget_operator.injector.certs import CertificateAuthority, CertMaterial, issue

logger = logging.getLogger(__name__)

ReadSecret = Callable[[], Awaitable[tuple[dict[str, bytes], str] | None]]
WriteSecret = Callable[[dict[str, bytes], str], Awaitable[bool]]
Bundles = Callable[[bytes], Awaitable[dict[str, bytes] | None]]  # bundle wanted → bundles in the configuration


@dataclass(frozen=True)
class CATiming:
    """How long CAs and server certificates live, and when they are replaced (see ca_store's three steps)."""

    ca_valid_for: datetime.timedelta
    ca_renew_before: datetime.timedelta
    cert_valid_for: datetime.timedelta
    cert_renew_before: datetime.timedelta
    propagation: datetime.timedelta


class CASecretSource:
    """A CertSource backed by the CA Secret; `refresh()` once before serving, then wait_for_change() loops."""

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        read_secret: ReadSecret,
        write_secret: WriteSecret,
        bundles: Bundles,
        timing: CATiming,
        interval: float,
        secret_name: str,
    ) -> None:
        self._hosts = list(hosts)
        self._read_secret = read_secret
        self._write_secret = write_secret
        self._bundles = bundles
        self._timing = timing
        self._interval = interval
        self._secret_name = secret_name
        self._trusted_since: dict[bytes, datetime.datetime] = {}
        self._material: CertMaterial | None = None
        self._signed_by: bytes = b""

    def current(self) -> CertMaterial:
        if self._material is None:
            raise RuntimeError("CASecretSource.refresh() has not succeeded yet")
        return self._material

    async def start(self) -> None:
        """Refresh until it succeeds: a missing Secret or configuration, or an API outage, is retried."""
        while True:
            try:
                await self.refresh()
                return
            except Exception as exc:
                logger.error("webhook CA not ready (retrying in %.0f s): %s", self._interval, exc)
                await asyncio.sleep(self._interval)

    async def wait_for_change(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if await self.refresh():
                    return
            except Exception as exc:  # keep serving what we have; the next round retries
                logger.warning("webhook CA refresh failed, serving the current certificate: %s", exc)

    async def refresh(self, now: datetime.datetime | None = None) -> bool:
        """One round: renew the CA set if due, publish its bundle, (re)issue our certificate; True if it changed."""
        now = now or datetime.datetime.now(datetime.UTC)
        cas = await self._stored_cas(now)
        bundle = ca_store.bundle_pem(cas)
        published = await self._bundles(bundle)
        trusted = ca_store.trusted(list(published.values())) if published else set()
        self._trusted_since = {fp: self._trusted_since.get(fp, now) for fp in trusted}
        signer = ca_store.signer(cas, self._trusted_since, now=now, propagation=self._timing.propagation)
        signer_fp = ca_store.fingerprint(signer.cert)
        old = self._material
        due = old is None or old.not_after - self._timing.cert_renew_before <= now
        if due or signer_fp != self._signed_by:
            fresh = issue(signer, self._hosts, not_after=now + self._timing.cert_valid_for, now=now)
            self._material = CertMaterial(fresh.cert_pem, fresh.key_pem, bundle, fresh.not_after)
            self._signed_by = signer_fp
            logger.info(
                "webhook certificate issued by CA %s, valid until %s", signer_fp.hex()[:12], fresh.not_after.isoformat()
            )
        elif old is not None and old.ca_pem != bundle:
            self._material = CertMaterial(old.cert_pem, old.key_pem, bundle, old.not_after)
        return self._material != old

    async def _stored_cas(self, now: datetime.datetime) -> list[CertificateAuthority]:
        """The CA set in the Secret, renewed there first if due (optimistic: a lost race reads the winner's)."""
        for _ in range(5):
            found = await self._read_secret()
            if found is None:
                raise LookupError(f"Secret {self._secret_name} does not exist (the chart makes it, empty)")
            data, version = found
            try:
                cas = ca_store.load(data)
            except ValueError as exc:
                logger.error("Secret %s holds no usable CA (%s): replacing it with a new CA", self._secret_name, exc)
                cas = []
            t = self._timing
            renewed = ca_store.renew(cas, now=now, valid_for=t.ca_valid_for, renew_before=t.ca_renew_before)
            if renewed is None:
                return cas
            if await self._write_secret(ca_store.dump(renewed), version):
                metrics.CA_ROTATIONS.inc()
                logger.info(
                    "webhook CA set in Secret %s: %d CA(s), newest valid until %s",
                    self._secret_name,
                    len(renewed),
                    renewed[-1].cert.not_valid_after_utc.isoformat(),
                )
                return renewed
        raise RuntimeError(f"Secret {self._secret_name}: still conflicting after 5 attempts")
