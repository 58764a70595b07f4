"""The webhook CA set's rules (ca_store.py) on a virtual clock: when a CA is added, dropped, and signs."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from tokenbudget_operator.config import OperatorSettings
from tokenbudget_operator.injector import ca_store
from tokenbudget_operator.injector.certs import issue, new_ca

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
YEAR, RENEW = dt.timedelta(days=365), dt.timedelta(days=60)
MINUTE = dt.timedelta(minutes=1)


def fp(ca: ca_store.CertificateAuthority) -> bytes:
    return ca_store.fingerprint(ca.cert)


def test_an_empty_secret_gets_one_ca_and_its_bundle_round_trips() -> None:
    assert ca_store.load({}) == []
    made = ca_store.renew([], now=T0, valid_for=YEAR, renew_before=RENEW)
    assert made is not None
    assert len(made) == 1
    assert made[0].cert.not_valid_after_utc == T0 + YEAR
    data = ca_store.dump(made)
    assert [fp(ca) for ca in ca_store.load(data)] == [fp(made[0])]
    assert data["ca.crt"] == ca_store.bundle_pem(made)
    assert ca_store.renew(made, now=T0 + YEAR - RENEW - MINUTE, valid_for=YEAR, renew_before=RENEW) is None


def test_a_new_ca_joins_before_the_old_one_ends_and_the_old_one_leaves_only_once_expired() -> None:
    (old,) = ca_store.renew([], now=T0, valid_for=YEAR, renew_before=RENEW) or []
    due = T0 + YEAR - RENEW
    both = ca_store.renew([old], now=due, valid_for=YEAR, renew_before=RENEW)
    assert both is not None
    assert fp(both[0]) == fp(old)
    assert len(both) == 2
    assert ca_store.renew(both, now=T0 + YEAR - MINUTE, valid_for=YEAR, renew_before=RENEW) is None
    after = ca_store.renew(both, now=T0 + YEAR + MINUTE, valid_for=YEAR, renew_before=RENEW)
    assert after is not None
    assert [fp(ca) for ca in after] == [fp(both[1])]


def test_a_new_ca_signs_only_after_it_was_seen_in_the_ca_bundle_for_the_propagation_time() -> None:
    old = new_ca(valid_for=YEAR, now=T0)
    new = new_ca(valid_for=YEAR, now=T0 + dt.timedelta(days=300))
    cas, now = [old, new], T0 + dt.timedelta(days=300)
    assert ca_store.signer(cas, {}, now=now, propagation=MINUTE) is old  # not published yet
    seen = {fp(old): T0, fp(new): now}
    assert ca_store.signer(cas, seen, now=now + MINUTE / 2, propagation=MINUTE) is old
    assert ca_store.signer(cas, seen, now=now + MINUTE, propagation=MINUTE) is new
    assert ca_store.signer([new], {}, now=now, propagation=MINUTE) is new  # a first install: the one CA


def test_trusted_means_in_every_webhooks_bundle() -> None:
    a, b = new_ca(valid_for=YEAR), new_ca(valid_for=YEAR)
    both = ca_store.bundle_pem([a, b])
    assert ca_store.trusted([both, both]) == {fp(a), fp(b)}
    assert ca_store.trusted([both, a.cert_pem]) == {fp(a)}
    assert ca_store.trusted([both, b""]) == set()
    assert ca_store.trusted([]) == set()


def test_a_certificate_never_outlives_its_ca_and_chains_to_it() -> None:
    ca = new_ca(valid_for=dt.timedelta(days=10), now=T0)
    leaf = issue(ca, ["tokenbudget-webhook.ns.svc"], not_after=T0 + dt.timedelta(days=30), now=T0)
    assert leaf.not_after == T0 + dt.timedelta(days=10)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.not_valid_after_utc == leaf.not_after


def test_a_secret_whose_keys_do_not_match_its_certificates_is_refused() -> None:
    a, b = new_ca(valid_for=YEAR), new_ca(valid_for=YEAR)
    with pytest.raises(ValueError, match="does not match the certificate"):
        ca_store.load({"ca.crt": a.cert_pem, "ca.key": b.key_pem})
    with pytest.raises(ValueError, match=r"ca\.crt holds 2 certificates but ca\.key 1 keys"):
        ca_store.load({"ca.crt": a.cert_pem + b.cert_pem, "ca.key": a.key_pem})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ca_renew_before_s": 400 * 86400.0}, "ca_renew_before_s must be below ca_validity_s"),
        ({"cert_renew_before_s": 40 * 86400.0}, "cert_renew_before_s must be below cert_validity_s"),
        ({"ca_renew_before_s": 50.0, "ca_propagation_s": 40.0}, "must exceed ca_propagation_s"),
        ({"cert_renew_before_s": 15.0}, "cert_renew_before_s must exceed 2 x tls_reload_interval_s"),
    ],
)
def test_rotation_settings_that_would_leave_a_gap_are_refused(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorSettings(tls_source="CASecret", **settings)  # type: ignore[arg-type]
    OperatorSettings(tls_source="SecretDir", **settings)  # type: ignore[arg-type]  # not checked: not used
