"""A fleet's usage rows from a Prometheus server that scrapes gpumon: the accounting counters'
increase over the period, at its end, per GPU and per owner (instant queries of `increase(...[R])`,
which Prometheus extrapolates to the period's edges, as a dashboard would read them).

How to reach the server is promtool's `--http.config.file`: a YAML file with `basic_auth` (username,
password or password_file), `authorization` (type, credentials or credentials_file), or
`bearer_token_file`, and `tls_config` (ca_file, cert_file, key_file, server_name,
insecure_skip_verify). Secrets are read from files and never printed; a URL's userinfo is removed
from every message.
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumon.accounting.db import Row
from gpumon.accounting.ledger import OWNER_LABELS, Owner
from gpumon.notify.urls import redacted
from gpumon.yamlfile import ConfigError, load_yaml

OWNER_BY = "instance, gpu, uuid, owner_namespace, owner_pod, owner_container, job_id, user, process"
QUERIES = {
    "gpu_seconds": "sum by (instance, gpu, uuid, state, signal) (increase(gpumon_gpu_seconds_total[{r}]))",
    "gpu_sm": "sum by (instance, gpu, uuid, state, signal) (increase(gpumon_gpu_sm_active_seconds_total[{r}]))",
    "gpu_joules": "sum by (instance, gpu, uuid) (increase(gpumon_energy_joules_total[{r}]))",
    "owner_seconds": f"sum by ({OWNER_BY}, state) (increase(gpumon_owner_gpu_seconds_total[{{r}}]))",
    "owner_sm": f"sum by ({OWNER_BY}) (increase(gpumon_owner_sm_active_seconds_total[{{r}}]))",
    "owner_joules": f"sum by ({OWNER_BY}) (increase(gpumon_owner_energy_joules_total[{{r}}]))",
}
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
        context = ssl.create_default_context(cafile=tls.get("ca_file"))
        if tls.get("cert_file"):
            context.load_cert_chain(tls["cert_file"], tls.get("key_file"))
        if tls.get("insecure_skip_verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.get("server_name"):
            headers["Host"] = str(tls["server_name"])
    return HttpSettings(headers, context)


def query(url: str, expr: str, at: float, http: HttpSettings) -> list[dict[str, Any]]:
    """An instant query; raises ConfigError (a sentence, the URL without secrets) when it fails."""
    params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    base = url.rstrip("/")
    request = urllib.request.Request(f"{base}/api/v1/query?{params}", headers=http.headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=http.context) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"Prometheus at {redacted(base)} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot query Prometheus at {redacted(base)}: {reason}") from None
    if answer.get("status") != "success":
        raise ConfigError(f"Prometheus at {redacted(base)}: {answer.get('error', 'query failed')}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def rows(url: str, start: float, end: float, http: HttpSettings, *, progress: bool = True) -> list[tuple[Row, str]]:
    """(row, instance) pairs for the period, from the counters' increase over it."""
    r = f"{max(1, round(end - start))}s"
    results: dict[str, list[dict[str, Any]]] = {}
    began = time.monotonic()
    for i, (name, template) in enumerate(QUERIES.items(), 1):
        if progress and time.monotonic() - began > 1.0:
            print(f"gpumon report: querying Prometheus ({i}/{len(QUERIES)})...", file=sys.stderr)
        results[name] = query(url, template.format(r=r), end, http)

    def value(s: dict[str, Any]) -> float:
        return float(s["value"][1])

    out: list[tuple[Row, str]] = []
    sm = {(*_gpu_key(s["metric"]), s["metric"].get("state", "")): value(s) for s in results["gpu_sm"]}
    # The GPU's energy is its counter's increase: carried by its first row, as it is not per state.
    joules = {(s["metric"].get("instance", ""), s["metric"].get("uuid", "")): value(s) for s in results["gpu_joules"]}
    for s in sorted(results["gpu_seconds"], key=lambda s: s["metric"].get("state", "")):
        m = s["metric"]
        energy = joules.pop((m.get("instance", ""), m.get("uuid", "")), 0.0)
        out.append((Row(m.get("uuid", ""), int(m.get("gpu", "0") or 0), None, m.get("state", ""),
                        m.get("signal", ""), value(s), sm.get((*_gpu_key(m), m.get("state", "")), 0.0), energy),
                    m.get("instance", "")))
    owner_sm = {_owner_key(s["metric"]): value(s) for s in results["owner_sm"]}
    owner_joules = {_owner_key(s["metric"]): value(s) for s in results["owner_joules"]}
    # An owner's SM seconds and joules are per owner, not per state: the first state's row carries them.
    carried: set[tuple[str, ...]] = set()
    for s in sorted(results["owner_seconds"], key=lambda s: s["metric"].get("state", "")):
        m = s["metric"]
        key = _owner_key(m)
        first = key not in carried
        carried.add(key)
        owner = Owner(*(m.get(label, "") for label in OWNER_LABELS))
        out.append((Row(m.get("uuid", ""), int(m.get("gpu", "0") or 0), owner, m.get("state", ""), "", value(s),
                        owner_sm.get(key, 0.0) if first else 0.0, owner_joules.get(key, 0.0) if first else 0.0),
                    m.get("instance", "")))
    return out


def _gpu_key(m: dict[str, str]) -> tuple[str, ...]:
    return (m.get("instance", ""), m.get("uuid", ""), m.get("signal", ""))


def _owner_key(m: dict[str, str]) -> tuple[str, ...]:
    return (m.get("instance", ""), m.get("uuid", ""), *(m.get(label, "") for label in OWNER_LABELS))
