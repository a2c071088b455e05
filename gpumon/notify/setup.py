"""The `notify` configuration turned into routes and receivers, secrets read from their files.

Run by `gpumon run`, by a reload and by `--check-config` alike, so whatever would fail at start or at
the first send (a missing secret file, a URL file holding no URL, a signing secret that is not
base64) is refused in all three, naming the key and never the secret.
"""

from __future__ import annotations

import binascii
import os
from pathlib import Path

from gpumon.config import Config
from gpumon.notify.routing import build_inhibit_rules, build_route
from gpumon.notify.service import NotifySetup, Receiver, SlackStyle
from gpumon.notify.urls import url_problem
from gpumon.notify.webhook import WebhookTarget, decode_secret
from gpumon.yamlfile import ConfigError


def notify_setup(config: Config) -> NotifySetup | None:
    """Routes, receivers and policies of config.notify, or None when no receiver is configured.
    Raises ConfigError."""
    if not config.notify.receivers or config.notify.route is None:
        return None
    receivers = {}
    for r in config.notify.receivers:
        key = f"notify.receivers[{r.name}]"
        if r.slack is not None:
            sl = r.slack
            url = sl.url if sl.url is not None else _url(sl.url_file, f"{key}.slack.url_file")
            receivers[r.name] = Receiver(WebhookTarget(r.name, url), sl.send_resolved,
                                         SlackStyle(sl.channel, sl.username))
            continue
        w = r.webhook
        assert w is not None
        url = w.url if w.url is not None else _url(w.url_file, f"{key}.webhook.url_file")
        secret = None
        if w.signing_secret_file:
            try:
                secret = decode_secret(read_secret(w.signing_secret_file, f"{key}.webhook.signing_secret_file"))
            except (binascii.Error, ValueError):
                raise ConfigError(f"{key}.webhook.signing_secret_file: a whsec_ secret must be base64 after "
                                  "the prefix") from None
        token = read_secret(w.bearer_token_file, f"{key}.webhook.bearer_token_file") if w.bearer_token_file else None
        receivers[r.name] = Receiver(WebhookTarget(r.name, url, secret, tuple(w.headers.items()), token),
                                     w.send_resolved)
    return NotifySetup(build_route(config.notify.route), receivers, config.notify.max_age,
                       config.notify.external_url, build_inhibit_rules(config.notify.inhibit_rules))


def _url(path: Path | None, key: str) -> str:
    url = read_secret(path, key)
    if problem := url_problem(url):
        raise ConfigError(f"{key}: the URL in it {problem}")
    return url


def read_secret(path: Path | None, key: str) -> str:
    """A secret from a file, or from an environment variable when written `env:NAME`. Only regular
    files are read (a FIFO would block the daemon)."""
    assert path is not None
    text = str(path)
    if text.startswith("env:"):
        value = os.environ.get(text[4:])
        if not value:
            raise ConfigError(f"{key}: environment variable {text[4:]} is not set")
        return value.strip()
    try:
        if not path.is_file():
            raise ConfigError(f"{key}: {path} is not a regular file" if path.exists() else
                              f"{key}: cannot read {path}: No such file or directory")
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:  # the message names the file, never its content
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
