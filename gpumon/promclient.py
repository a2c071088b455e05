"""A client of a Prometheus server's HTTP API for gpumon's fleet commands (`gpumon report
--prometheus`, `gpumon doctor --fleet`): instant queries, reached as promtool's `--http.config.file`
says — a YAML file with `basic_auth` (username, password or password_file), `authorization` (type,
credentials or credentials_file), or `bearer_token_file`, and `tls_config` (ca_file, cert_file,
key_file, insecure_skip_verify; server_name is refused: urllib cannot set it). Redirects are refused,
so credentials never follow one to another host. Secrets are read from files and never printed; a URL's
userinfo is removed from every message.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumon.notify.urls import redacted
from gpumon.yamlfile import ConfigError, load_yaml

TIMEOUT_S = 120.0


@dataclass
class HttpSettings:
    headers: dict[str, str]
    context: ssl.SSLContext | None


def http_settings(path: Path | None) -> HttpSettings:
    """promtool's --http.config.file, the parts a client needs. Raises ConfigError naming the key."""
    headers: dict[str, str] = {}
    context: ssl.SSLContext | None = None
    if path is None:
        return HttpSettings(headers, context)
    data, _ = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: an HTTP client configuration must be a mapping")
    unknown = set(data) - {"basic_auth", "authorization", "bearer_token_file", "tls_config"}
    if unknown:
        raise ConfigError(f"{path}: {sorted(unknown)[0]}: unknown key")

    def secret(section: dict[str, Any], value_key: str, file_key: str, where: str) -> str:
        if section.get(file_key):
            try:
                return Path(section[file_key]).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{path}: {where}.{file_key}: cannot read {section[file_key]}: "
                                  f"{exc.strerror}") from None
        return str(section.get(value_key) or "")

    if isinstance(auth := data.get("basic_auth"), dict):
        user = str(auth.get("username", ""))
        password = secret(auth, "password", "password_file", "basic_auth")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    if isinstance(auth := data.get("authorization"), dict):
        credentials = secret(auth, "credentials", "credentials_file", "authorization")
        headers["Authorization"] = f"{auth.get('type', 'Bearer')} {credentials}"
    if data.get("bearer_token_file"):
        headers["Authorization"] = "Bearer " + secret(data, "", "bearer_token_file", "")
    if isinstance(tls := data.get("tls_config"), dict):
        if tls.get("server_name"):  # urllib cannot set the SNI name apart from the URL's host
            raise ConfigError(f"{path}: tls_config.server_name: not supported; put that name in the URL")
        try:
            context = ssl.create_default_context(cafile=tls.get("ca_file"))
            if tls.get("cert_file"):
                context.load_cert_chain(tls["cert_file"], tls.get("key_file"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{path}: tls_config: {exc}") from None
        if tls.get("insecure_skip_verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return HttpSettings(headers, context)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would send the Authorization header on to wherever a redirect points (another host, or
    http): a redirect is answered as the error it then is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def query(url: str, expr: str, at: float, http: HttpSettings) -> list[dict[str, Any]]:
    """An instant query; raises ConfigError (a sentence, the URL without secrets) when it fails."""
    params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    base = url.rstrip("/")
    request = urllib.request.Request(f"{base}/api/v1/query?{params}", headers=http.headers)
    try:
        opener = urllib.request.build_opener(_NoRedirects, urllib.request.HTTPSHandler(context=http.context))
        with opener.open(request, timeout=TIMEOUT_S) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        why = _error_text(exc)
        raise ConfigError(f"Prometheus at {redacted(base)} answered {exc.code} {exc.reason}"
                          + (f": {why}" if why else "")) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot query Prometheus at {redacted(base)}: {reason}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), dict):
        raise ConfigError(f"Prometheus at {redacted(base)}: the answer is not Prometheus's query JSON")
    if answer.get("status") != "success":
        raise ConfigError(f"Prometheus at {redacted(base)}: {answer.get('error', 'query failed')}")
    result = answer["data"].get("result")
    if not isinstance(result, list) or not all(_is_sample(s) for s in result):
        raise ConfigError(f"Prometheus at {redacted(base)}: the answer is not an instant vector")
    return result


def _is_sample(s: Any) -> bool:
    """One element of an instant vector: {"metric": {...}, "value": [time, "number"]}."""
    if not (isinstance(s, dict) and isinstance(s.get("metric"), dict) and isinstance(s.get("value"), list)
            and len(s["value"]) == 2):
        return False
    try:
        float(s["value"][1])
    except (TypeError, ValueError):
        return False
    return True


MAX_ERROR_CHARS = 300


def _error_text(exc: urllib.error.HTTPError) -> str:
    """Prometheus's own words for a refused query (a 400 or 422 with `{"status": "error", "error": ...}`:
    a bad expression, many-to-many matching), which say what to fix where the status line cannot; ""
    when the body is not that (a proxy's page). The words are about the query, never the request's
    headers; one line, cut at MAX_ERROR_CHARS."""
    try:
        body = json.loads(exc.read(64 * 1024))
    except (OSError, ValueError):
        return ""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return ""
    return " ".join(body["error"].split())[:MAX_ERROR_CHARS]
