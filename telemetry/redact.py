"""URLs as messages and logs may show them: credentials, token parameters and (where asked) secret paths masked.

Every message or log line that names a URL a person configured (a store, a webhook, a BMC) passes it through
`redact_url`, and an error text that may quote it (an exception's message) through `redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
_SECRET_PARAM = re.compile(r"token|passw|secret|key|sig|auth|cred", re.IGNORECASE)
"""Query parameters whose value is a secret (`token=`, `api_key=`, `password=`, `X-Amz-Signature=`, ...)."""


def redact_url(url: str, keep_path: bool = True) -> str:
    """`url` with its user info replaced by `***@`, secret query values by `***` and the fragment dropped.

    `keep_path=False` also hides the path (`https://hooks.example.org/…`): for URLs whose path is the secret, as a
    Slack-style webhook's `/services/T000/B000/XXXX` is. Text that is not `scheme://...` is returned as it is.
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    _, at, hostport = parts.netloc.rpartition("@")
    out = f"{parts.scheme}://{MASK + '@' if at else ''}{hostport}"
    if not keep_path:
        return out + ("/…" if parts.path.strip("/") or parts.query else "")
    out += parts.path
    if parts.query:
        out += "?" + "&".join(f"{k}={MASK if _SECRET_PARAM.search(k) else v}" for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return out


def secrets_of(url: str, keep_path: bool = True) -> list[str]:
    """The pieces of `url` that `redact_url` hides (user info, secret query values, the path where not kept)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return []
    userinfo = parts.netloc.rpartition("@")[0]
    found = [userinfo, userinfo.partition(":")[2]]  # also the password quoted alone, without its user name
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_PARAM.search(k)]
    if not keep_path:
        found += [parts.path, parts.query]
    return [s for s in found if len(s) >= 3 and s.strip("/")]


def redact_text(text: str, url: str, keep_path: bool = True) -> str:
    """`text` (an error message that may quote `url` or parts of it) with `url` redacted and its secrets masked."""
    text = text.replace(url, redact_url(url, keep_path))
    for secret in sorted(secrets_of(url, keep_path), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
