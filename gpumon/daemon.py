"""`gpumon run`: reads the configuration, builds the services and wires them, and handles signals.

sources -> sampler -> store, and each round announced on `Rounds` to the rules and the exposition
(web serves it); rules -> notifications. Every service is an async context manager entered on one
AsyncExitStack, so they stop in the reverse order, whichever way the daemon ends. SIGTERM/SIGINT
stop cleanly; SIGHUP re-reads the configuration (and the web-config file, so rotated certificates are
picked up) and keeps the running configuration if the new one is invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import resource
import signal
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from gpumon import logs
from gpumon.accounting.service import AccountingService
from gpumon.backend import intervals_of, open_sampler
from gpumon.config import Config, WebConfig, load_config
from gpumon.doctor.service import DoctorService
from gpumon.exporter import Exporter
from gpumon.health import Health
from gpumon.lifecycle import Service
from gpumon.model import BackendUnavailable
from gpumon.notify.alertmanager import AlertmanagerPusher
from gpumon.notify.routing import Route
from gpumon.notify.service import NotifyService, NotifySetup
from gpumon.notify.setup import notify_setup, read_secret
from gpumon.notify.silences import Silences
from gpumon.query_api import QueryApi
from gpumon.rounds import Rounds
from gpumon.rules.alerting import Alert
from gpumon.rules.rulefile import RuleGroup, longest_ranges
from gpumon.rules.service import RuleService, load_groups
from gpumon.sampler import Sampler
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.processes import ProcessSource
from gpumon.statefile import StateError
from gpumon.store import Store
from gpumon.web import ListenError, WebServer
from gpumon.webconfig import WebSecurity, load_web_config
from gpumon.yamlfile import ConfigError

if TYPE_CHECKING:  # imported when MQTT is configured: aiomqtt and paho cost ~1 MiB of RSS otherwise
    from gpumon.notify.mqtt import MqttPublisher

log = structlog.get_logger("gpumon")

EXIT_OK, EXIT_CONFIG, EXIT_BACKEND = 0, 1, 2
SILENCES_FILE = "silences.sqlite"
# Settings a reload cannot change in place.
RESTART_ONLY = ("backend", "state_dir", "store", "interconnect", "attribution", "accounting")
# Parts of `notify` a reload cannot change in place (receivers, routes and the rest can).
NOTIFY_RESTART_ONLY = ("alertmanagers", "mqtt")
FILES_RESERVED = 128  # open files kept for the daemon itself when capping connections


def store_capacity(config: Config) -> int:
    return math.ceil(config.store.retention / config.sampler.fast_interval) + 1


def rule_history(config: Config, groups: list[RuleGroup]) -> dict[str, int]:
    """Ring capacity per metric name, so every range a rule reads (plus the 5 m lookback) is kept."""
    return {name: math.ceil((ms / 1000 + 300) / config.sampler.fast_interval) + 2
            for name, ms in longest_ranges(groups).items()}


def mqtt_password(config: Config) -> str | None:
    mq = config.notify.mqtt
    return read_secret(mq.password_file, "notify.mqtt.password_file") if mq and mq.password_file else None


def check_config(config: Config) -> list[str]:
    """Build everything `run` would build from the configuration, short of opening the backend and
    binding the port; lines describing it. Raises ConfigError with what `run` would refuse."""
    load_security(config)
    groups = load_groups(config.rules.files)
    setup = notify_setup(config)
    mqtt_password(config)
    lines = [f"{sum(len(g.rules) for g in groups)} rules in {len(groups)} groups"]
    if setup is not None:
        for route in _routes(setup.route):
            grouping = ("all alerts in one group" if not route.group_by else
                        "one group per alert" if "..." in route.group_by else
                        "grouped by " + ", ".join(route.group_by))
            lines.append(f"route {route.id} -> {route.receiver}: {grouping}")
    return lines


def _routes(route: Route) -> list[Route]:
    return [route, *(r for child in route.routes for r in _routes(child))]


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one, as Go programs do; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def web_settings(config: Config, file_limit: int) -> WebConfig:
    """The web settings with the connection cap kept below the file limit: the daemon's own files
    (state, NVML, sockets to receivers) must never be starved by scrapers."""
    room = max(8, file_limit - FILES_RESERVED)
    if config.web.max_connections <= room:
        return config.web
    log.warning("web.max_connections lowered to fit the open-file limit", configured=config.web.max_connections,
                used=room, file_limit=file_limit)
    return msgspec.structs.replace(config.web, max_connections=room)


def load_security(config: Config) -> WebSecurity:
    return load_web_config(config.web.config_file) if config.web.config_file else WebSecurity()


class Daemon:
    """Reads the configuration, builds the services and wires them; everything else is theirs."""

    def __init__(self, config: Config, config_path: Path | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.health = Health()
        self.rounds = Rounds(self.health)
        self.exporter = Exporter()
        self.stopping = asyncio.Event()
        self.sampler: Sampler | None = None
        self.web: WebServer | None = None
        self.rules: RuleService | None = None
        self.notify: NotifyService | None = None
        self.alertmanagers: AlertmanagerPusher | None = None
        self.mqtt: MqttPublisher | None = None
        self.silences: Silences | None = None
        self.accounting: AccountingService | None = None
        self._stack = contextlib.AsyncExitStack()  # the running services; replaced by run()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(logs.loop_exception_handler)
        file_limit = raise_file_limit()
        try:
            security = load_security(self.config)
            groups = load_groups(self.config.rules.files)
            setup = notify_setup(self.config)
            password = mqtt_password(self.config)
        except ConfigError as exc:
            log.error("invalid configuration", problem=str(exc))
            return EXIT_CONFIG
        store = Store(store_capacity(self.config), rule_history(self.config, groups))
        try:
            self.sampler, backend = await open_sampler(self.config, store, self.rounds, self.health)
        except BackendUnavailable as exc:
            log.error(str(exc), backend=self.config.backend)
            return EXIT_BACKEND
        async with contextlib.AsyncExitStack() as stack:
            self._stack = stack
            stack.push_async_callback(self.sampler.stop)  # the sources are open: closed however this ends
            try:
                services = self._build_services(store, groups, setup, password)
            except StateError as exc:
                log.error(str(exc))
                return EXIT_CONFIG
            if backend.capture:
                log.warning("DEMO DATA: " + backend.demo_note, capture=backend.capture)
            # After each round: accounting and the doctor's checks, then the rules (which read their series),
            # so the series they make are in the exposition rendered right after them.
            assert self.rules is not None
            if self.accounting is not None:
                self.rounds.subscribe("accounting", self.accounting.on_round)
            processes = next((s for s in backend.sources if isinstance(s, ProcessSource)), None)
            doctor = DoctorService(store, lambda: backend.devices, replayed=bool(backend.capture),
                                   fresh=self.sampler.fresh,
                                   procfs=lambda: processes.procfs if processes and processes.host_pids else None)
            self.rounds.subscribe("doctor", doctor.on_round)
            self.rounds.subscribe("rules", self.rules.on_round)
            self.exporter.follow(self.rounds, self.sampler.fresh)
            for service in services:
                await stack.enter_async_context(service)
            await stack.enter_async_context(self.sampler)
            settings = web_settings(self.config, file_limit)
            self.web = WebServer(self.sampler, self.exporter, backend, rules=self.rules, silences=self.silences,
                                 health=self.health, settings=settings,
                                 query=QueryApi(store, self.config.store.retention, settings.query))
            self.health.reporters.append(self.web.sample_values)
            try:
                await stack.enter_async_context(self.web.serving(self.config.web.listen, security))
            except ListenError as exc:
                log.error(str(exc))
                return EXIT_CONFIG
            loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
            loop.add_signal_handler(signal.SIGINT, self.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            # Everything made so far (modules, catalog, config, open devices) lives as long as the
            # daemon. Freezing it keeps the cyclic GC from walking it all again: a full collection
            # over those objects took 12+ ms on the event loop, every so often, which scrapes waited out.
            gc.collect()
            gc.freeze()
            allowed, why = self.web.writes_allowed()
            log.info("gpumon started", backend=backend.name, gpus=len(backend.devices), rule_groups=len(groups),
                     rules=sum(len(g.rules) for g in groups), listen=[f"{h}:{p}" for h, p in self.web.bound],
                     tls=security.ssl_context is not None, write_endpoints="enabled" if allowed else why)
            await self.stopping.wait()
            log.info("gpumon stopping")
        return EXIT_OK

    def _build_services(self, store: Store, groups: list[RuleGroup], setup: NotifySetup | None,
                        password: str | None) -> list[Service]:
        """Rules, silences and notifications; their state files are opened here. Raises StateError."""
        state = self.config.state_dir
        if self.config.accounting.enabled:
            self.accounting = AccountingService(store, self.config.accounting, state,
                                                fast_interval_s=self.config.sampler.fast_interval,
                                                slow_interval_s=self.config.sampler.slow_interval, health=self.health)
        self.rules = RuleService(groups, store, default_interval_s=self.config.rules.evaluation_interval,
                                 state_dir=state, external_labels=self.config.rules.external_labels,
                                 health=self.health, on_evaluated=self._notify)
        self.silences = Silences(state / SILENCES_FILE, self.config.notify.silences, self.health)
        if setup is not None:
            self.notify = self._notify_service(setup)
        mq = self.config.notify.mqtt
        if mq is not None:
            from gpumon.notify.mqtt import MqttPublisher, default_prefix

            self.mqtt = MqttPublisher(mq.broker.host, mq.broker.port, prefix=mq.topic_prefix or default_prefix(),
                                      store=store, telemetry_interval=mq.telemetry_interval,
                                      username=mq.username, password=password, tls=mq.tls, client_id=mq.client_id,
                                      health=self.health)
        if self.config.notify.alertmanagers:
            self.alertmanagers = AlertmanagerPusher(self.config.notify.alertmanagers,
                                                    generator_url=self.config.notify.external_url, health=self.health)
        # Started in this order, stopped in the reverse one: the rules and accounting (their last saves) last.
        return [s for s in (self.accounting, self.rules, self.notify, self.mqtt, self.alertmanagers) if s is not None]

    def _notify_service(self, setup: NotifySetup) -> NotifyService:
        return NotifyService(setup.route, setup.receivers, self.config.state_dir, max_age_s=setup.max_age_s,
                             external_url=setup.external_url, inhibit_rules=setup.inhibit_rules,
                             silences=self.silences, health=self.health)

    def _on_sighup(self) -> None:
        task = asyncio.ensure_future(self.reload())
        task.add_done_callback(_log_failure)

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
        new = await self._reload_web(old, new, security)
        self.sampler.intervals = intervals_of(new)
        self.sampler.store.capacity_by_name.update(rule_history(new, groups))  # for series created from now
        self.rules.default_interval_s = new.rules.evaluation_interval
        self.rules.external_labels = new.rules.external_labels
        await self.rules.reload(groups)
        await self._reload_notify(notify)
        if self.silences is not None:
            self.silences.limits = new.notify.silences
        for source in self.sampler.sources:
            if isinstance(source, NvmlSource):
                source.configure(new.opt_ins)
        logs.configure(new.log.level, new.log.format)
        self.config = new
        log.info("configuration reloaded", config=str(self.config_path))

    async def _reload_web(self, old: Config, new: Config, security: WebSecurity) -> Config:
        """Keep the listener when only users, headers, the write policy or the certificate changed
        (re-binding drops connections and fails scrapes); otherwise bind anew, falling back to the
        old address if the new one fails. Returns the configuration as applied."""
        assert self.web is not None
        settings = web_settings(new, raise_file_limit())
        if self.web.can_keep_listener(new.web.listen, settings, security):
            try:
                self.web.keep_listener(settings, security)
            except (OSError, ssl.SSLError) as exc:
                log.error("reload: cannot load the new certificate; keeping the old one", problem=str(exc))
            return new
        old_security, old_settings = self.web.security, self.web.settings
        await self.web.stop()
        self.web.settings = settings
        try:
            await self.web.start(new.web.listen, security)
            return new
        except ListenError as exc:
            log.error("reload: new listen address failed; keeping the old one", problem=str(exc))
        self.web.settings = old_settings
        try:
            await self.web.start(old.web.listen, old_security)
        except ListenError as again:  # the old address was taken meanwhile: a fault, not a crash
            log.error("reload: the old listen address cannot be bound either; /metrics is down "
                      "until the next successful reload", problem=str(again))
        return msgspec.structs.replace(new, web=old.web)

    async def _reload_notify(self, setup: NotifySetup | None) -> None:
        """Receivers, routes, inhibition and the rest of `notify` in place: queued notifications and
        the state of groups whose route is unchanged carry over (see NotifyService.reconfigure)."""
        if setup is None:
            if self.notify is not None:
                await self.notify.stop()
                self.notify = None
        elif self.notify is None:
            try:
                self.notify = self._notify_service(setup)
            except StateError as exc:
                log.error("reload: notifications cannot start", problem=str(exc))
                return
            await self._stack.enter_async_context(self.notify)  # stopped with the others
        else:
            self.notify.reconfigure(setup)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("reload failed; the running configuration may be partly applied",
                  error=f"{type(exc).__name__}: {exc}")


async def run_daemon(config: Config, config_path: Path | None, overrides: dict[str, Any]) -> int:
    return await Daemon(config, config_path, overrides).run()
