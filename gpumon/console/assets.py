"""The console's static files, read once from the package and served from memory under /static/: a
fixed table, so no request path ever reaches the file system."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json", "": "text/plain"}
# No inline script or style, nothing from elsewhere: the page and its scripts talk only to gpumon.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def load() -> dict[str, tuple[bytes, str]]:
    """Path under /static/ -> (body, content type)."""
    return {str(p.relative_to(STATIC)): (p.read_bytes(), TYPES.get(p.suffix, "application/octet-stream"))
            for p in sorted(STATIC.rglob("*")) if p.is_file()}
