"""certs: the webhook's certificate kept in a Secret is reused while good, replaced when not."""

import base64
import datetime

from edgeproxy import tls
from edgeproxy.companion import certs

SANS = certs.service_names("edgeproxy-companion", "edgeproxy-system")


def secret(bundle):
    return {"data": {k: base64.b64encode(v).decode() for k, v in
                     (("ca.crt", bundle.ca_pem), ("tls.crt", bundle.cert_pem), ("tls.key", bundle.key_pem))}}


def test_a_good_secret_is_reused():
    made = certs.make(SANS)
    assert certs.usable(secret(made), SANS) == made


def test_other_names_missing_keys_garbage_and_old_certificates_are_replaced():
    made = certs.make(SANS)
    assert certs.usable(secret(made), [*SANS, "127.0.0.1"]) is None
    assert certs.usable(None, SANS) is None
    assert certs.usable({"data": {"tls.crt": "eA=="}}, SANS) is None
    broken = secret(made)
    broken["data"]["tls.crt"] = base64.b64encode(b"not a certificate").decode()
    assert certs.usable(broken, SANS) is None
    ca = tls.make_ca("old")
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=300)
    old = tls.issue(ca, "edgeproxy-companion", sans=SANS, days=365, not_before=start)
    assert certs.usable(secret(certs.Bundle(ca.cert_pem, old.cert_pem, old.key_pem)), SANS) is None  # < 1/3 left
