"""Delivery to a webhook: Alertmanager's JSON, Standard Webhooks headers and signature, no redirects,
TLS verified, 10 s timeout. The outcome decides what the outbox does next."""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import time
from dataclasses import dataclass

import aiohttp

from gpumon.notify.urls import redacted

TIMEOUT_S = 10.0
RETRYABLE_STATUS = {408, 429}


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # 5xx, 408, 429, network errors, timeouts
    PERMANENT = "permanent"  # other 4xx: retrying cannot help
    GONE = "gone"  # 410: the receiver asked us to stop


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str
    retry_after: float | None = None


@dataclass(frozen=True)
class WebhookTarget:
    name: str
    url: str
    signing_secret: bytes | None = None  # Standard Webhooks key (decoded from whsec_...)
    headers: tuple[tuple[str, str], ...] = ()
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None
    timeout_s: float = TIMEOUT_S

    def redacted_url(self) -> str:
        """The URL without path, query or credentials: webhook URLs often embed a secret token."""
        return redacted(self.url)


def decode_secret(secret: str) -> bytes:
    """A Standard Webhooks signing secret: `whsec_` + base64, or raw text."""
    if secret.startswith("whsec_"):
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        if not key:
            raise ValueError("empty signing secret")
        return key
    return secret.encode()


def signature_headers(msg_id: str, body: bytes, secret: bytes, now: float | None = None) -> dict[str, str]:
    """webhook-id, webhook-timestamp and webhook-signature (v1, HMAC-SHA256 of id.timestamp.body)."""
    ts = str(int(time.time() if now is None else now))
    mac = hmac.new(secret, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}


async def deliver(session: aiohttp.ClientSession, target: WebhookTarget, msg_id: str, body: bytes) -> Result:
    headers = {"Content-Type": "application/json", "User-Agent": "gpumon", **dict(target.headers)}
    headers.update(signature_headers(msg_id, body, target.signing_secret) if target.signing_secret
                   else {"webhook-id": msg_id})
    if target.bearer_token:
        headers["Authorization"] = f"Bearer {target.bearer_token}"
    auth = aiohttp.BasicAuth(*target.basic_auth) if target.basic_auth else None
    try:
        async with session.post(target.url, data=body, headers=headers, auth=auth, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=target.timeout_s)) as response:
            await response.read()
            status = response.status
            retry_after = _retry_after(response.headers.get("Retry-After"))
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Result(Outcome.RETRY, f"{type(exc).__name__}: {_without_url(str(exc), target)}")
    if 200 <= status < 300:
        return Result(Outcome.DELIVERED, str(status))
    if status == 410:
        return Result(Outcome.GONE, "410 Gone")
    if status >= 500 or status in RETRYABLE_STATUS:
        return Result(Outcome.RETRY, f"HTTP {status}", retry_after)
    return Result(Outcome.PERMANENT, f"HTTP {status}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _without_url(text: str, target: WebhookTarget) -> str:
    return text.replace(target.url, target.redacted_url())
