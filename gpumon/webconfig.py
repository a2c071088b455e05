"""TLS and basic auth from a web-config file in the Prometheus exporter-toolkit format.

The same file works for node_exporter and gpumon:

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_ca_file: ca.crt                 # optional: verify client certificates
      client_auth_type: RequireAndVerifyClientCert
    basic_auth_users:
      prometheus: $2b$12$...                 # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':')
    http_server_config:
      headers: {X-Frame-Options: deny}

Relative paths are relative to the web-config file, as in exporter-toolkit.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from gpumon.yamlfile import After, ConfigError, load_yaml, validate

# Python's ssl verifies every client certificate it receives against client_ca_file; it cannot accept
# one unverified as Go can. So RequestClientCert (Go: ask, accept anything) does not ask at all, which
# admits the same clients, and RequireAnyClientCert (Go: any certificate) needs client_ca_file and
# verifies against it.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_NEEDS_CA = ("RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_AUTH_CACHE_SIZE = 64
# $2a$, $2b$ or $2y$, a cost of 04-31, then 22 characters of salt and 31 of hash in bcrypt's base64.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


@functools.cache
def _dummy_hash() -> bytes:
    """Checked against unknown users so a wrong user name costs as long as a wrong password. Made on
    first use, with bcrypt imported then: most daemons configure no users and need neither."""
    import bcrypt

    return bcrypt.hashpw(b"gpumon-dummy", bcrypt.gensalt(rounds=10))


def _bcrypt_only(hashed: str) -> str:
    if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
        raise ValueError("password must be a bcrypt hash ($2b$...), not plain text")
    if not _BCRYPT_HASH.fullmatch(hashed):
        raise ValueError("not a valid bcrypt hash: expected $2b$CC$ and 53 characters (htpasswd -nBC 12)")
    return hashed


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class TlsServerConfig(_Strict, frozen=True):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: Literal[tuple(CLIENT_AUTH)] | None = None  # type: ignore[valid-type]
    min_version: Literal["TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS12", "TLS13"] | None = None


class HttpServerConfig(_Strict, frozen=True):
    headers: dict[str, str] = {}


class WebConfigFile(_Strict, frozen=True):
    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, Annotated[str, After(_bcrypt_only)]] = {}
    http_server_config: HttpServerConfig = HttpServerConfig()


@dataclass
class WebSecurity:
    """What the web server enforces: an SSL context (or None), basic-auth users, extra headers."""

    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    tls: TlsServerConfig | None = None  # the settings the context was made from (paths relative to base)
    base: Path = Path()
    _verified: dict[bytes, bool] = field(default_factory=dict)

    def check_authorization(self, header: str | None) -> bool:
        """True when no users are configured, or the Basic credentials match a bcrypt hash.

        bcrypt is slow by design (tens of ms); successful checks are cached by a digest of the
        credentials so a scrape every second does not pay it each time. Callers on an event loop
        should try `is_cached()` first and run this in a thread otherwise.
        """
        if not self.users:
            return True
        credentials = _credentials(header)
        if credentials is None:
            return False
        digest = hashlib.sha256(credentials).digest()
        if self._verified.get(digest):
            return True
        try:
            user, _, password = credentials.decode().partition(":")
        except UnicodeDecodeError:
            return False
        hashed = self.users.get(user)
        import bcrypt

        try:
            ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _dummy_hash())
        except ValueError:  # bcrypt 5 refuses passwords over 72 bytes; such a password is wrong
            ok = False
        ok = ok and hashed is not None
        if ok:
            if len(self._verified) >= _AUTH_CACHE_SIZE:
                self._verified.clear()
            self._verified[digest] = True
        return ok

    def is_cached(self, header: str | None) -> bool:
        """True when no users are configured or these credentials were verified before (no bcrypt)."""
        if not self.users:
            return True
        credentials = _credentials(header)
        return credentials is not None and self._verified.get(hashlib.sha256(credentials).digest(), False)


def _credentials(header: str | None) -> bytes | None:
    """The decoded `user:password` of a Basic Authorization header (the scheme is case-insensitive)."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        credentials = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return credentials if b":" in credentials else None


def load_web_config(path: Path) -> WebSecurity:
    """Read and validate a web-config file, build the SSL context. Raises ConfigError."""
    data, lines = load_yaml(path)
    if isinstance(data, dict):  # `basic_auth_users:` with every user commented out means none
        data = {k: v for k, v in data.items() if v is not None}
    cfg = validate(WebConfigFile, data or {}, path, lines)
    security = WebSecurity(users={u: h.encode() for u, h in cfg.basic_auth_users.items()},
                           headers=dict(cfg.http_server_config.headers), tls=cfg.tls_server_config,
                           base=path.parent)
    tls = cfg.tls_server_config
    if tls is not None:
        security.ssl_context = _ssl_context(tls, path, lines)
    return security


def _ssl_context(tls: TlsServerConfig, path: Path, lines: dict[tuple[str | int, ...], int]) -> ssl.SSLContext:
    def where(key: str) -> str:
        line = lines.get(("tls_server_config", key))
        return f"{path}:{line}" if line else str(path)

    base = path.parent
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    if tls.max_version:
        if TLS_VERSIONS[tls.max_version] < TLS_VERSIONS[tls.min_version]:
            raise ConfigError(f"{where('max_version')}: tls_server_config.max_version: {tls.max_version} is "
                              f"below min_version {tls.min_version}")
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    cert, key = base / tls.cert_file, base / tls.key_file
    for name, file in (("cert_file", cert), ("key_file", key)):
        if not file.is_file():
            raise ConfigError(f"{where(name)}: tls_server_config.{name}: {file}: file not found")
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where('cert_file')}: tls_server_config.cert_file/key_file: cannot load "
                          f"{cert} and {key}: {exc.strerror or exc}") from None
    auth = tls.client_auth_type or ("RequireAndVerifyClientCert" if tls.client_ca_file else "NoClientCert")
    ctx.verify_mode = CLIENT_AUTH[auth]
    if tls.client_ca_file is not None:
        ca = base / tls.client_ca_file
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where('client_ca_file')}: tls_server_config.client_ca_file: cannot load "
                              f"{ca}: {exc.strerror or exc}") from None
    elif auth in _NEEDS_CA:
        raise ConfigError(f"{where('client_auth_type')}: tls_server_config.client_auth_type: "
                          f"{auth} needs client_ca_file")
    return ctx
