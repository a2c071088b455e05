"""Alertmanager's webhook payload (version 4), built from gpumon's alerts, so any existing
Alertmanager webhook receiver works unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FNV_OFFSET = 14695981039346656037
FNV_PRIME = 1099511628211
SEPARATOR = 0xFF
ZERO_TIME = "0001-01-01T00:00:00Z"


def fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's alert fingerprint: FNV-1a 64 over sorted name/value pairs, 0xff-separated."""
    h = FNV_OFFSET
    for name in sorted(labels):
        for part in (name.encode(), labels[name].encode()):
            for byte in part:
                h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ SEPARATOR) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def label_set(labels: dict[str, str]) -> str:
    """A label set as Alertmanager prints it in group keys: {a="1", b="2"}."""
    return "{" + ", ".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def rfc3339(seconds: float | None) -> str:
    if not seconds:
        return ZERO_TIME
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class AlertEvent:
    """One alert as a notification sees it: firing, or resolved at `ends_at`."""

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None  # None while firing
    generator_url: str = ""

    @property
    def status(self) -> str:
        return "resolved" if self.ends_at is not None else "firing"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "labels": self.labels, "annotations": self.annotations,
                "startsAt": rfc3339(self.starts_at), "endsAt": rfc3339(self.ends_at),
                "generatorURL": self.generator_url, "fingerprint": self.fingerprint}


def webhook_payload(receiver: str, group_key: str, group_labels: dict[str, str], alerts: list[AlertEvent],
                    external_url: str) -> dict[str, Any]:
    """The body Alertmanager posts to a webhook receiver."""
    common_labels = _common([a.labels for a in alerts])
    common_annotations = _common([a.annotations for a in alerts])
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing" if any(a.status == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "externalURL": external_url,
        "alerts": [a.to_json() for a in alerts],
    }


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}
