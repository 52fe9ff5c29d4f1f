"""Who may use the service: an API token when bound off loopback, and CSRF tokens for forms.

* **Token.** Bound to a loopback address, the server is only reachable from this machine and asks
  for nothing. Bound to anything else, every request needs the token: ``Authorization: Bearer
  TOKEN`` for the API, or the session cookie that the login form sets for browsers. The token is
  given (``--token`` / ``$MADHATTER_TOKEN``) or generated on first start and printed once; the
  store keeps only its SHA-256, so neither the store nor the logs hold the secret, and it is never
  accepted in a URL (URLs end up in access logs). Comparisons use :func:`hmac.compare_digest`.
* **CSRF.** Form posts (run, cancel, re-run, log in) carry a random token that must equal the one
  in the ``madhatter_csrf`` cookie (double submit; the cookie is ``SameSite=Strict``). Another
  site can make a browser post a form, but cannot read or set this cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from ._store import Store

TOKEN_META = "token_sha256"
SESSION_COOKIE = "madhatter_session"
CSRF_COOKIE = "madhatter_csrf"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def setup_token(store: Store, host: str, given: str | None) -> tuple[str | None, str | None]:
    """``(digest to check, new token to print once)`` for a server bound to ``host``.

    No digest on loopback (no token needed). A given token replaces the stored one; without one,
    the stored digest is used, or a new token is generated, stored (as its digest) and returned.
    """
    if given:
        store.set_meta(TOKEN_META, digest(given))
        return digest(given), None
    if is_loopback(host):
        return None, None
    stored = store.get_meta(TOKEN_META)
    if stored:
        return stored, None
    token = secrets.token_urlsafe(24)
    store.set_meta(TOKEN_META, digest(token))
    return digest(token), token


def token_matches(expected_digest: str, given: str | None) -> bool:
    """Constant-time check of a presented token against the stored digest."""
    return given is not None and hmac.compare_digest(digest(given), expected_digest)


def new_csrf() -> str:
    return secrets.token_urlsafe(18)


def csrf_matches(cookie: str | None, field: str | None) -> bool:
    return bool(cookie) and bool(field) and hmac.compare_digest(str(cookie), str(field))
