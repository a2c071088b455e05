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
import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bcrypt
import pydantic
from pydantic import BaseModel, ConfigDict

from gpumon.yamlfile import ConfigError, load_yaml, validate

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Checked against unknown users so a wrong user name costs as long as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"gpumon-dummy", bcrypt.gensalt(rounds=10))
_AUTH_CACHE_SIZE = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: Literal[tuple(CLIENT_AUTH)] | None = None  # type: ignore[valid-type]
    min_version: Literal["TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS12", "TLS13"] | None = None


class HttpServerConfig(_Strict):
    headers: dict[str, str] = {}


class WebConfigFile(_Strict):
    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, str] = {}
    http_server_config: HttpServerConfig = HttpServerConfig()

    @pydantic.field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_only(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise ValueError(f"user {user!r}: password must be a bcrypt hash ($2b$...), not plain text")
        return users


@dataclass
class WebSecurity:
    """What the web server enforces: an SSL context (or None), basic-auth users, extra headers."""

    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    _verified: dict[bytes, bool] = field(default_factory=dict)

    def check_authorization(self, header: str | None) -> bool:
        """True when no users are configured, or the Basic credentials match a bcrypt hash.

        bcrypt is slow by design (tens of ms); successful checks are cached by a digest of the
        credentials so a scrape every second does not pay it each time.
        """
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        digest = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if self._verified.get(digest):
            return True
        hashed = self.users.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH)
        ok = ok and hashed is not None
        if ok:
            if len(self._verified) >= _AUTH_CACHE_SIZE:
                self._verified.clear()
            self._verified[digest] = True
        return ok


def load_web_config(path: Path) -> WebSecurity:
    """Read and validate a web-config file, build the SSL context. Raises ConfigError."""
    data, lines = load_yaml(path)
    cfg = validate(WebConfigFile, data or {}, path, lines)
    security = WebSecurity(users={u: h.encode() for u, h in cfg.basic_auth_users.items()},
                           headers=dict(cfg.http_server_config.headers))
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
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    cert, key = base / tls.cert_file, base / tls.key_file
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
    elif auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise ConfigError(f"{where('client_auth_type')}: tls_server_config.client_auth_type: "
                          f"{auth} needs client_ca_file")
    return ctx
