"""`gpumon run`: wires source -> sampler -> store -> exporter -> web, and handles signals.

SIGTERM/SIGINT stop cleanly; SIGHUP re-reads the configuration (and the web-config file, so
rotated certificates are picked up) and keeps the running configuration if the new one is invalid.
"""

from __future__ import annotations

import asyncio
import gc
import math
import resource
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from gpumon import logs
from gpumon.config import Config, WebConfig, load_config
from gpumon.exporter import Exporter
from gpumon.health import Health
from gpumon.model import BackendUnavailable
from gpumon.notify.alertmanager import AlertmanagerPusher
from gpumon.notify.routing import Route
from gpumon.notify.service import NotifyService, NotifySetup
from gpumon.notify.setup import notify_setup, read_secret
from gpumon.notify.silences import Silences
from gpumon.rules.alerting import Alert
from gpumon.rules.rulefile import RuleGroup, longest_ranges
from gpumon.rules.service import RuleService, load_groups
from gpumon.sampler import Intervals, Sampler
from gpumon.sources.infiniband import InfinibandSource
from gpumon.sources.nccl_ras import NcclRasSource
from gpumon.sources.nvml import NvmlSource
from gpumon.sources.replay import DEMO_CAPTURE, ReplaySpec, parse_replay_spec, replay_source
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
RESTART_ONLY = ("backend", "state_dir", "store", "interconnect")  # settings a reload cannot change in place
# Parts of `notify` a reload cannot change in place (receivers, routes and the rest can).
NOTIFY_RESTART_ONLY = ("alertmanagers", "mqtt")
FILES_RESERVED = 128  # open files kept for the daemon itself when capping connections


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
        kw["infiniband"] = InfinibandSource(ib.root, rescan_interval=ib.rescan_interval,
                                            slow_interval=config.sampler.slow_interval)
        # Replayed GPUs are not in this host's PCIe tree: no GPU-NIC affinity for them.
        kw["pci_root"] = None if config.backend.startswith("replay:") else str(ib.pci_root)
    if ras.enabled:
        kw["nccl_ras"] = NcclRasSource(ras.address.host, ras.address.port, timeout=ras.timeout,
                                       timeout_factor=ras.timeout_factor)
        kw["nccl_ras_interval"] = ras.interval
    return kw


def store_capacity(config: Config) -> int:
    return math.ceil(config.store.retention / config.sampler.fast_interval) + 1


def rule_history(config: Config, groups: list[RuleGroup]) -> dict[str, int]:
    """Ring capacity per metric name, so every range a rule reads (plus the 5 m lookback) is kept."""
    return {name: math.ceil((ms / 1000 + 300) / config.sampler.fast_interval) + 2
            for name, ms in longest_ranges(groups).items()}


async def open_sampler(config: Config, exporter: Exporter, history: dict[str, int] | None = None,
                       health: Health | None = None) -> tuple[Sampler, Built]:
    """Build the source and open it; `auto` retries with the bundled capture. Raises BackendUnavailable."""
    built = build_source(config)
    sampler = Sampler(built.source, Store(store_capacity(config), history), exporter, intervals_of(config),
                      capture=built.capture, health=health, **interconnect_of(config))
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
                          capture=built.capture, health=health, **interconnect_of(config))
        await sampler.open()
    return sampler, built


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
    def __init__(self, config: Config, config_path: Path | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.exporter = Exporter()
        self.health = Health()
        self.stopping = asyncio.Event()
        self.sampler: Sampler | None = None
        self.web: WebServer | None = None
        self.rules: RuleService | None = None
        self.notify: NotifyService | None = None
        self.alertmanagers: AlertmanagerPusher | None = None
        self.mqtt: MqttPublisher | None = None
        self.silences: Silences | None = None

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
        try:
            self.sampler, built = await open_sampler(self.config, self.exporter, rule_history(self.config, groups),
                                                     self.health)
        except BackendUnavailable as exc:
            log.error(str(exc), backend=self.config.backend)
            return EXIT_BACKEND
        try:
            self._build_services(groups, setup, password)
        except StateError as exc:
            log.error(str(exc))
            await self.sampler.stop()
            return EXIT_CONFIG
        assert self.rules is not None
        if built.capture:
            log.warning("DEMO DATA: " + built.demo_note, capture=built.capture)
        self.web = WebServer(self.sampler, self.exporter, demo_note=built.demo_note, rules=self.rules,
                             silences=self.silences, health=self.health,
                             settings=web_settings(self.config, file_limit))
        self.health.reporters.append(self.web.sample_values)
        try:
            await self.web.start(self.config.web.listen, security)
        except ListenError as exc:
            log.error(str(exc))
            await self.sampler.stop()
            return EXIT_CONFIG
        await self.sampler.start()
        self._start_services()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        # Everything made so far (modules, catalog, config, open devices) lives as long as the daemon.
        # Freezing it keeps the cyclic GC from walking it all again: a full collection over those
        # objects took 12+ ms on the event loop, every so often, which scrapes waited out.
        gc.collect()
        gc.freeze()
        allowed, why = self.web.writes_allowed()
        log.info("gpumon started", backend=built.source.backend, gpus=len(self.sampler.devices),
                 rule_groups=len(groups), rules=sum(len(g.rules) for g in groups),
                 listen=[f"{h}:{p}" for h, p in self.web.bound], tls=security.ssl_context is not None,
                 write_endpoints="enabled" if allowed else why)
        await self.stopping.wait()
        log.info("gpumon stopping")
        await self.web.stop()
        await self.rules.stop()
        self.rules.save()
        for service in (self.notify, self.alertmanagers, self.mqtt):
            if service is not None:
                await service.stop()
        await self.sampler.stop()
        return EXIT_OK

    def _build_services(self, groups: list[RuleGroup], setup: NotifySetup | None, password: str | None) -> None:
        """Rules, silences and notifications; their state files are opened here. Raises StateError."""
        assert self.sampler is not None
        state = self.config.state_dir
        self.rules = RuleService(groups, self.sampler.store, default_interval_s=self.config.rules.evaluation_interval,
                                 state_dir=state, external_labels=self.config.rules.external_labels,
                                 health=self.health, next_round=self.sampler.next_round,
                                 on_evaluated=self._notify)
        self.silences = Silences(state / SILENCES_FILE, self.config.notify.silences, self.health)
        if setup is not None:
            self.notify = self._notify_service(setup)
        mq = self.config.notify.mqtt
        if mq is not None:
            from gpumon.notify.mqtt import MqttPublisher, default_prefix

            self.mqtt = MqttPublisher(mq.broker.host, mq.broker.port, prefix=mq.topic_prefix or default_prefix(),
                                      store=self.sampler.store, telemetry_interval=mq.telemetry_interval,
                                      username=mq.username, password=password, tls=mq.tls, client_id=mq.client_id)
        if self.config.notify.alertmanagers:
            self.alertmanagers = AlertmanagerPusher(self.config.notify.alertmanagers,
                                                    generator_url=self.config.notify.external_url)

    def _notify_service(self, setup: NotifySetup) -> NotifyService:
        return NotifyService(setup.route, setup.receivers, self.config.state_dir, max_age_s=setup.max_age_s,
                             external_url=setup.external_url, inhibit_rules=setup.inhibit_rules,
                             silences=self.silences, health=self.health)

    def _start_services(self) -> None:
        assert self.rules is not None
        if self.notify is not None:
            self.notify.start()
        if self.mqtt is not None:
            self.mqtt.start(self.health)
        if self.alertmanagers is not None:
            self.alertmanagers.start(self.health)
        self.rules.start()

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
        self.sampler.source.configure(new.opt_ins)
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
            self.notify.start()
        else:
            self.notify.reconfigure(setup)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("reload failed; the running configuration may be partly applied",
                  error=f"{type(exc).__name__}: {exc}")


async def run_daemon(config: Config, config_path: Path | None, overrides: dict[str, Any]) -> int:
    return await Daemon(config, config_path, overrides).run()
