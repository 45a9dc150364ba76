"""API keys: checking them in constant time, HTTP Basic auth and the UI's login cookie. Plain functions of strings.

``ADMIN_API_KEY`` may hold several keys (rotation): every configured key is compared, always all
of them, so the time taken does not reveal which one (or how much of one) matched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from heatmap_pipeline.orchestration import API_KEY_HEADER

UI_COOKIE = "heatmap_pipeline_ui"
UNAUTHORIZED = "Unauthorized: invalid API key"
NO_KEY_CONFIGURED = (
    "The admin API is disabled: no API key is configured. Set ADMIN_API_KEY to one key "
    "(or a comma-separated list, for rotation) and restart `heatmap-pipeline dev` or `heatmap-pipeline admin`."
)
UI_NO_KEY_CONFIGURED = (
    "The Dagster UI is locked: no API key is configured. Set ADMIN_API_KEY (one key or a comma-separated list) "
    "and restart `heatmap-pipeline dev`; log in with any user name and a key as password. "
    "DAGSTER_UI_ANONYMOUS_READ_ONLY=true opens the UI read-only without a key."
)
_COOKIE_PURPOSE = b"heatmap_pipeline dagster-ui session v1"


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def matching_key(provided: str | None, keys: tuple[str, ...]) -> str | None:
    """The configured key equal to ``provided``, or None. Compares against every key, in constant time."""
    if not provided:
        return None
    found = None
    for key in keys:
        if hmac.compare_digest(_bytes(provided), _bytes(key)) and found is None:
            found = key
    return found


def key_matches(provided: str | None, keys: tuple[str, ...]) -> bool:
    return matching_key(provided, keys) is not None


def basic_auth_password(authorization: str | None) -> str | None:
    """The password of an ``Authorization: Basic ...`` header (any user name), or None."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


def session_token(key: str) -> str:
    """The UI cookie for a key: derived from it (HMAC), so the cookie never holds the key itself,
    and it stops working as soon as that key is removed from ADMIN_API_KEY."""
    return hmac.new(key.encode("utf-8", "surrogateescape"), _COOKIE_PURPOSE, hashlib.sha256).hexdigest()


def key_for_session_token(token: str | None, keys: tuple[str, ...]) -> str | None:
    """The configured key whose UI cookie is ``token``, or None (constant time, every key compared)."""
    if not token:
        return None
    found = None
    for key in keys:
        if hmac.compare_digest(_bytes(token), _bytes(session_token(key))) and found is None:
            found = key
    return found


def authenticated_key(headers, keys: tuple[str, ...], cookies: dict[str, str] | None = None) -> str | None:
    """Which configured key authenticates a request: its x-api-key header, its Basic auth password
    or its UI cookie. ``headers`` is any case-insensitive mapping (Starlette's Headers)."""
    return (
        matching_key(headers.get(API_KEY_HEADER), keys)
        or matching_key(basic_auth_password(headers.get("authorization")), keys)
        or key_for_session_token((cookies or {}).get(UI_COOKIE), keys)
    )
