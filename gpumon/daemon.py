"""`gpumon run`: wires source -> sampler -> store -> exporter -> web, and handles signals.

SIGTERM/SIGINT stop cleanly; SIGHUP re-reads the configuration (and the web-config file, so
rotated certificates are picked up) and keeps the running configuration if the new one is invalid.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from gpumon import logs
from gpumon.config import Config, load_config
from gpumon.exporter import Exporter
from gpumon.model import BackendUnavailable
from gpumon.notify.alertmanager import AlertmanagerPusher
from gpumon.notify.routing import build_inhibit_rules, build_route
from gpumon.notify.service import NotifyService, NotifySetup, Receiver, SlackStyle
from gpumon.notify.silences import Silences
from gpumon.notify.webhook import WebhookTarget, decode_secret
from gpumon.rules.alerting import Alert
from gpumon.rules.rulefile import RuleGroup, longest_ranges
from gpumon.rules.service import RuleService, load_groups
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.infiniband import InfinibandSource
from gpumon.sources.nccl_ras import NcclRasSource
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.replay import DEMO_CAPTURE, ReplaySpec, parse_replay_spec, replay_source
from gpumon.store import Store
from gpumon.web import ListenError, WebServer
from gpumon.webconfig import WebSecurity, load_web_config
from gpumon.yamlfile import ConfigError

if TYPE_CHECKING:  # imported when MQTT is configured: aiomqtt and paho cost ~1 MiB of RSS otherwise
    from gpumon.notify.mqtt import MqttPublisher

log = structlog.get_logger("gpumon")

EXIT_OK, EXIT_CONFIG, EXIT_BACKEND = 0, 1, 2
SILENCES_FILE = "silences.sqlite"
RESTART_ONLY = ("backend", "state_dir", "store", "interconnect")  # settings a reload cannot change in place
# Parts of `notify` a reload cannot change in place (receivers, routes and the rest can).
NOTIFY_RESTART_ONLY = ("alertmanagers", "mqtt")


@dataclass
class Built:
    source: NvmlSource
    capture: str = ""  # the replayed capture's path, "" for real NVML

    @property
    def demo_note(self) -> str:
        if not self.capture:
            return ""
        return (f"gpumon is replaying a recorded capture ({self.capture}), not reading real GPUs. "
                "Every value here is from that recording.")


def build_source(config: Config) -> Built:
    """The source for config.backend; `auto` falls back to the bundled capture without NVML."""
    if config.backend.startswith("replay:"):
        spec = parse_replay_spec(config.backend)
        return Built(replay_source(spec, config.opt_ins), _capture_name(spec))
    import pynvml

    return Built(NvmlSource(pynvml, backend="nvml", opt_ins=config.opt_ins))


def _capture_name(spec: ReplaySpec) -> str:
    return "bundled H200 demo capture" if spec.is_demo else str(spec.path)


def intervals_of(config: Config) -> Intervals:
    return Intervals(config.sampler.fast_interval, config.sampler.slow_interval, config.sampler.deadline)


def interconnect_of(config: Config) -> dict[str, Any]:
    """Sampler keyword arguments for the InfiniBand and NCCL RAS sources the configuration enables."""
    ib, ras = config.interconnect.infiniband, config.interconnect.nccl_ras
    kw: dict[str, Any] = {}
    if ib.enabled:
        kw["infiniband"] = InfinibandSource(ib.root, rescan_interval=ib.rescan_interval)
        # Replayed GPUs are not in this host's PCIe tree: no GPU-NIC affinity for them.
        kw["pci_root"] = None if config.backend.startswith("replay:") else str(ib.pci_root)
    if ras.enabled:
        kw["nccl_ras"] = NcclRasSource(ras.address.host, ras.address.port, timeout=ras.timeout)
        kw["nccl_ras_interval"] = ras.interval
    return kw


def store_capacity(config: Config) -> int:
    return math.ceil(config.store.retention / config.sampler.fast_interval) + 1


def rule_history(config: Config, groups: list[RuleGroup]) -> dict[str, int]:
    """Ring capacity per metric name, so every range a rule reads (plus the 5 m lookback) is kept."""
    return {name: math.ceil((ms / 1000 + 300) / config.sampler.fast_interval) + 2
            for name, ms in longest_ranges(groups).items()}


async def open_sampler(config: Config, exporter: Exporter,
                       history: dict[str, int] | None = None) -> tuple[Sampler, Built]:
    """Build the source and open it; `auto` retries with the bundled capture. Raises BackendUnavailable."""
    built = build_source(config)
    sampler = Sampler(built.source, Store(store_capacity(config), history), exporter, intervals_of(config),
                      capture=built.capture, **interconnect_of(config))
    try:
        await sampler.open()
    except BackendUnavailable as exc:
        if config.backend != "auto":
            raise
        log.warning("NVML unavailable; backend auto falls back to the bundled H200 capture (DEMO DATA)",
                    reason=str(exc))
        spec = ReplaySpec(DEMO_CAPTURE, loop=True)
        built = Built(replay_source(spec, config.opt_ins), _capture_name(spec))
        sampler = Sampler(built.source, Store(store_capacity(config), history), exporter, intervals_of(config),
                          capture=built.capture, **interconnect_of(config))
        await sampler.open()
    return sampler, built


def build_notify(config: Config, silences: Silences) -> NotifyService | None:
    """The notification service for config.notify, secrets read from their files. Raises ConfigError."""
    setup = notify_setup(config)
    if setup is None:
        return None
    return NotifyService(setup.route, setup.receivers, config.state_dir, max_age_s=setup.max_age_s,
                         external_url=setup.external_url, inhibit_rules=setup.inhibit_rules, silences=silences)


def notify_setup(config: Config) -> NotifySetup | None:
    """Routes, receivers (secrets read from their files) and policies of config.notify, or None when
    no receiver is configured. Raises ConfigError."""
    if not config.notify.receivers or config.notify.route is None:
        return None
    receivers = {}
    for r in config.notify.receivers:
        if r.slack is not None:
            sl = r.slack
            url = sl.url if sl.url is not None else _secret(sl.url_file, r.name, "slack.url_file")
            receivers[r.name] = Receiver(WebhookTarget(r.name, url), sl.send_resolved,
                                         SlackStyle(sl.channel, sl.username))
            continue
        w = r.webhook
        assert w is not None
        url = w.url if w.url is not None else _secret(w.url_file, r.name, "webhook.url_file")
        secret = decode_secret(_secret(w.signing_secret_file, r.name, "webhook.signing_secret_file")) \
            if w.signing_secret_file else None
        token = _secret(w.bearer_token_file, r.name, "webhook.bearer_token_file") if w.bearer_token_file else None
        receivers[r.name] = Receiver(WebhookTarget(r.name, url, secret, tuple(w.headers.items()), token),
                                     w.send_resolved)
    return NotifySetup(build_route(config.notify.route), receivers, config.notify.max_age,
                       config.notify.external_url, build_inhibit_rules(config.notify.inhibit_rules))


def _secret(path: Path | None, receiver: str, key: str) -> str:
    """A secret from a file, or from an environment variable when written `env:NAME`."""
    assert path is not None
    text = str(path)
    if text.startswith("env:"):
        value = os.environ.get(text[4:])
        if not value:
            raise ConfigError(f"notify.receivers[{receiver}].{key}: environment variable {text[4:]} is not set")
        return value.strip()
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:  # the message names the file, never its content
        raise ConfigError(f"notify.receivers[{receiver}].{key}: cannot read {path}: "
                          f"{exc.strerror or exc}") from None


def load_security(config: Config) -> WebSecurity:
    return load_web_config(config.web.config_file) if config.web.config_file else WebSecurity()


class Daemon:
    def __init__(self, config: Config, config_path: Path | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.exporter = Exporter()
        self.stopping = asyncio.Event()
        self.sampler: Sampler | None = None
        self.web: WebServer | None = None
        self.rules: RuleService | None = None
        self.notify: NotifyService | None = None
        self.alertmanagers: AlertmanagerPusher | None = None
        self.mqtt: MqttPublisher | None = None
        self.silences: Silences | None = None

    async def run(self) -> int:
        try:
            security = load_security(self.config)
            groups = load_groups(self.config.rules.files)
        except ConfigError as exc:
            log.error("invalid configuration", problem=str(exc))
            return EXIT_CONFIG
        try:
            self.sampler, built = await open_sampler(self.config, self.exporter, rule_history(self.config, groups))
        except BackendUnavailable as exc:
            log.error(str(exc), backend=self.config.backend)
            return EXIT_BACKEND
        try:
            self.rules = RuleService(groups, self.sampler.store,
                                     default_interval_s=self.config.rules.evaluation_interval,
                                     state_dir=self.config.state_dir,
                                     external_labels=self.config.rules.external_labels)
            self.rules.next_round = self.sampler.next_round
            self.silences = Silences(self.config.state_dir / SILENCES_FILE)
            self.notify = build_notify(self.config, self.silences)
            mq = self.config.notify.mqtt
            if mq is not None:
                from gpumon.notify.mqtt import MqttPublisher, default_prefix

                password = _secret(mq.password_file, "mqtt", "password_file") if mq.password_file else None
                self.mqtt = MqttPublisher(mq.broker.host, mq.broker.port, prefix=mq.topic_prefix or default_prefix(),
                                          store=self.sampler.store, telemetry_interval=mq.telemetry_interval,
                                          username=mq.username, password=password, tls=mq.tls,
                                          client_id=mq.client_id)
            if self.config.notify.alertmanagers:
                self.alertmanagers = AlertmanagerPusher(self.config.notify.alertmanagers,
                                                        generator_url=self.config.notify.external_url)
        except ConfigError as exc:
            log.error("invalid configuration", problem=str(exc))
            await self.sampler.stop()
            return EXIT_CONFIG
        except (OSError, sqlite3.Error) as exc:  # the state directory cannot be created or written
            log.error(f"cannot keep state in {self.config.state_dir}: {getattr(exc, 'strerror', None) or exc}")
            await self.sampler.stop()
            return EXIT_CONFIG
        if built.capture:
            log.warning("DEMO DATA: " + built.demo_note, capture=built.capture)
        self.web = WebServer(self.sampler, self.exporter, demo_note=built.demo_note, rules=self.rules,
                             silences=self.silences)
        try:
            await self.web.start(self.config.web.listen, security)
        except ListenError as exc:
            log.error(str(exc))
            await self.sampler.stop()
            return EXIT_CONFIG
        await self.sampler.start()
        if self.notify is not None or self.alertmanagers is not None or self.mqtt is not None:
            self.rules.on_evaluated = self._notify
        if self.notify is not None:
            self.notify.start()
        if self.mqtt is not None:
            self.mqtt.start()
        self.rules.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        # Everything made so far (modules, catalog, config, open devices) lives as long as the daemon.
        # Freezing it keeps the cyclic GC from walking it all again: a full collection over those
        # objects took 12+ ms on the event loop, every so often, which scrapes waited out.
        gc.collect()
        gc.freeze()
        log.info("gpumon started", backend=built.source.backend, gpus=len(self.sampler.devices),
                 rule_groups=len(groups), rules=sum(len(g.rules) for g in groups),
                 listen=[f"{h}:{p}" for h, p in self.web.bound], tls=security.ssl_context is not None)
        await self.stopping.wait()
        log.info("gpumon stopping")
        await self.web.stop()
        await self.rules.stop()
        self.rules.save()
        if self.notify is not None:
            await self.notify.stop()
        if self.alertmanagers is not None:
            await self.alertmanagers.stop()
        if self.mqtt is not None:
            await self.mqtt.stop()
        await self.sampler.stop()
        return EXIT_OK

    def _notify(self, alerts: list[Alert]) -> None:
        """After each rule evaluation: hand the alerts to notifications, refresh their metrics."""
        assert self.sampler is not None
        if self.notify is not None:
            self.notify.update(alerts)
            self.sampler.store.put(self.notify.sample())
        if self.alertmanagers is not None:
            self.alertmanagers.update(alerts)
            self.sampler.store.put(self.alertmanagers.sample())
        if self.mqtt is not None:
            self.mqtt.update(alerts)

    async def reload(self) -> None:
        """Apply a new configuration, or keep the running one if anything in it is invalid."""
        assert self.sampler is not None and self.web is not None and self.rules is not None
        try:
            new = load_config(self.config_path, self.overrides)
            security = load_security(new)
            groups = load_groups(new.rules.files)
            notify = notify_setup(new)  # reads the secret files: a missing one fails the whole reload
        except ConfigError as exc:
            log.error("reload failed; keeping the running configuration and rules", problem=str(exc))
            return
        old = self.config
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                log.warning("setting changed but needs a restart; keeping the running value", key=key)
        for key in NOTIFY_RESTART_ONLY:
            if getattr(new.notify, key) != getattr(old.notify, key):
                log.warning("setting changed but needs a restart; keeping the running value", key=f"notify.{key}")
        kept_notify = msgspec.structs.replace(new.notify, **{k: getattr(old.notify, k) for k in NOTIFY_RESTART_ONLY})
        new = msgspec.structs.replace(new, notify=kept_notify, **{k: getattr(old, k) for k in RESTART_ONLY})
        if new.web.listen != old.web.listen or new.web.config_file or old.web.config_file:
            await self.web.stop()
            try:
                await self.web.start(new.web.listen, security)
            except ListenError as exc:
                log.error("reload: new listen address failed; keeping the old one", problem=str(exc))
                new = msgspec.structs.replace(new, web=old.web)
                try:
                    await self.web.start(old.web.listen, self.web.security)
                except ListenError as again:  # the old address was taken meanwhile: a fault, not a crash
                    log.error("reload: the old listen address cannot be bound either; /metrics is down "
                              "until the next successful reload", problem=str(again))
        self.sampler.intervals = intervals_of(new)
        self.sampler.store.capacity_by_name.update(rule_history(new, groups))  # for series created from now
        self.rules.default_interval_s = new.rules.evaluation_interval
        self.rules.external_labels = new.rules.external_labels
        await self.rules.reload(groups)
        await self._reload_notify(notify)
        self.sampler.source.configure(new.opt_ins)
        logs.configure(new.log.level, new.log.format)
        self.config = new
        log.info("configuration reloaded", config=str(self.config_path))


    async def _reload_notify(self, setup: NotifySetup | None) -> None:
        """Receivers, routes, inhibition and the rest of `notify` in place: queued notifications and
        the state of groups whose route is unchanged carry over (see NotifyService.reconfigure)."""
        assert self.rules is not None and self.silences is not None
        if setup is None:
            if self.notify is not None:
                await self.notify.stop()
                self.notify = None
        elif self.notify is None:
            self.notify = NotifyService(setup.route, setup.receivers, self.config.state_dir,
                                        max_age_s=setup.max_age_s, external_url=setup.external_url,
                                        inhibit_rules=setup.inhibit_rules, silences=self.silences)
            self.notify.start()
        else:
            self.notify.reconfigure(setup)
        active = self.notify is not None or self.alertmanagers is not None or self.mqtt is not None
        self.rules.on_evaluated = self._notify if active else None


async def run_daemon(config: Config, config_path: Path | None, overrides: dict[str, Any]) -> int:
    return await Daemon(config, config_path, overrides).run()
