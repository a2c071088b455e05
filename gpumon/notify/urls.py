"""Receiver URLs and headers: checked when the configuration loads (so `--check-config` and a reload
refuse what would fail at the first send), and shown without their secrets.

Webhook URLs are secrets as a whole (Slack's and many others' embed a token in the path), so they are
shown as `scheme://host:port/...`. Alertmanager URLs keep their path but lose userinfo and query.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be posted to, in words that do not repeat it; None when it can."""
    if any(c in url for c in "\r\n\t\0 "):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    if port == 0:
        return "has port 0"
    return None


def header_problem(name: str, value: str) -> str | None:
    if not _TOKEN.fullmatch(name):
        return f"header name {name!r} is not a valid HTTP header name"
    if any(c in value for c in "\r\n\0"):
        return f"header {name} has a line break or NUL in its value"
    return None


def redacted(url: str, keep_path: bool = False) -> str:
    """The URL without credentials or query (and without its path unless `keep_path`)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    host = f"[{host}]" if ":" in host else host
    path = parts.path if keep_path else "/..."
    return f"{parts.scheme}://{host}{port}{path}"
