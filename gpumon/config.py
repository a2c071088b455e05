"""The daemon's configuration: one YAML file, every setting also a command-line flag.

Unknown keys are errors, and every error names the file, line and key (or the flag).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from gpumon.notify.urls import header_problem, redacted, url_problem
from gpumon.yamlfile import After, Before, ConfigError, FieldError, KeyPath, load_yaml, validate

DEFAULT_PORT = 9948  # clear of dcgm-exporter (9400), nvidia_gpu_exporter (9835), node_exporter (9100)
DEFAULT_LISTEN = f":{DEFAULT_PORT}"

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Prometheus-style durations ("500ms", "30s", "1m30s") or plain seconds, as seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 1s, 500ms or 5m")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range
            seconds = float("inf")
    elif isinstance(value, str) and value and _DURATION.sub("", value.strip()) == "":
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(value.strip()))
    else:
        raise ValueError(f"{value!r} is not a duration like 1s, 500ms or 5m")
    if not seconds > 0:  # also NaN
        raise ValueError("must be greater than zero")
    if seconds == float("inf"):
        raise ValueError("is too long")
    return seconds


def parse_duration_or_zero(value: Any) -> float:
    """A duration that may be 0 (e.g. group_wait: 0s, notify at once)."""
    if value in (0, "0", "0s", "0ms"):
        return 0.0
    return parse_duration(value)


Duration = Annotated[float, Before(parse_duration)]
DurationOrZero = Annotated[float, Before(parse_duration_or_zero)]


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(value: Any) -> Listen:
    """HOST:PORT, :PORT (all interfaces) or [IPv6]:PORT."""
    if isinstance(value, Listen):
        return value
    text = str(value)
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):([0-9]{1,5})", text)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (for example :{DEFAULT_PORT} or 127.0.0.1:{DEFAULT_PORT})")
    host = m.group(1) if m.group(1) is not None else m.group(2)
    return Listen(host or "0.0.0.0", int(m.group(3)))


def _check_backend(value: Any) -> str:
    from gpumon.sources.replay import parse_replay_spec  # local: replay imports config types

    text = str(value)
    if text in ("nvml", "auto"):
        return text
    if text.startswith("replay:"):
        parse_replay_spec(text)
        return text
    raise ValueError(f"{text!r} is not nvml, auto or replay:PATH[,loop][,speed=X][,gpus=N]")


def _matchers_parse(matchers: list[str]) -> list[str]:
    from gpumon.notify.routing import parse_matchers

    for m in matchers:
        parse_matchers(m)
    return matchers


ListenAddress = Annotated[Listen, Before(parse_listen)]
Matchers = Annotated[list[str], After(_matchers_parse)]


def _at_least(low: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value
    return check


def _check_url(url: str | None, key: str) -> None:
    if url is not None and (problem := url_problem(url)):
        raise FieldError(key, f"the URL {problem}")


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A section of the file: immutable, unknown keys rejected (validated by gpumon.yamlfile.validate).

    Subclasses repeat `frozen=True`: msgspec inherits it, mypy's dataclass_transform needs it said.
    """


class QueryConfig(_Section, frozen=True):
    """Bounds of the query API (/api/v1/query...), which runs on the loop beside polling."""

    # Points one query may hold at once (per step of a range query; subquery points count): a Python float
    # in a list costs ~40 bytes, so 500,000 bound a query's memory to some 20-40 MB.
    max_samples: Annotated[int, After(_at_least(1000))] = 500_000
    timeout: Duration = 2.0  # evaluation time of one query
    concurrency: Annotated[int, After(_at_least(1))] = 2  # queries evaluated at once


class WebConfig(_Section, frozen=True):
    listen: ListenAddress = parse_listen(DEFAULT_LISTEN)
    config_file: Path | None = None  # exporter-toolkit web-config: TLS and basic auth
    # Endpoints that change state (silences). auto: allowed when basic auth is configured or gpumon
    # listens on loopback only; enabled: allowed to anyone who can connect; disabled: never.
    write_endpoints: Literal["auto", "enabled", "disabled"] = "auto"
    max_connections: Annotated[int, After(_at_least(8))] = 512
    read_header_timeout: Duration = 10.0  # a new connection must send its request headers within this
    idle_timeout: Duration = 75.0  # an idle keep-alive connection is closed after this
    query: QueryConfig = QueryConfig()


class SamplerConfig(_Section, frozen=True):
    fast_interval: Duration = 1.0
    slow_interval: Duration = 30.0  # checked against fast_interval, also when left at its default
    deadline: Duration | None = None  # per poll; default 80% of the tier's interval (max 10 s)

    def __post_init__(self) -> None:
        # A FieldError so the problem names sampler.slow_interval and its line or flag; reported when
        # both intervals are valid, so an invalid fast_interval is not reported as a comparison too.
        if self.slow_interval < self.fast_interval:
            raise FieldError("slow_interval",
                             f"must not be shorter than sampler.fast_interval ({self.fast_interval:g}s)",
                             uses=("fast_interval",))


class MetricsConfig(_Section, frozen=True):
    process_pids: bool = False  # per-process memory series with a pid label (high cardinality)


class StoreConfig(_Section, frozen=True):
    retention: Duration = 600.0


class RulesConfig(_Section, frozen=True):
    files: list[str] = []  # globs; empty: the bundled rules
    evaluation_interval: Duration = 10.0  # for groups without their own `interval`
    external_labels: dict[str, str] = {}  # $externalLabels in templates


class WebhookConfig(_Section, frozen=True):
    url: str | None = None
    url_file: Path | None = None  # the URL often embeds a token: keep it out of the config
    signing_secret_file: Path | None = None  # Standard Webhooks secret (whsec_...)
    bearer_token_file: Path | None = None
    headers: dict[str, str] = {}
    send_resolved: bool = True

    def __post_init__(self) -> None:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("a webhook needs exactly one of url or url_file")
        _check_url(self.url, "url")
        for name, value in self.headers.items():
            if problem := header_problem(name, value):
                raise FieldError("headers", problem)


class SlackConfig(_Section, frozen=True):
    url: str | None = None
    url_file: Path | None = None  # Slack webhook URLs are secrets
    channel: str | None = None
    username: str | None = None
    send_resolved: bool = True

    def __post_init__(self) -> None:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("a slack receiver needs exactly one of url or url_file")
        _check_url(self.url, "url")


class ReceiverConfig(_Section, frozen=True):
    name: str
    webhook: WebhookConfig | None = None
    slack: SlackConfig | None = None

    def __post_init__(self) -> None:
        if (self.webhook is None) == (self.slack is None):
            raise ValueError(f"receiver {self.name!r} needs exactly one of webhook or slack")


class RouteConfig(_Section, frozen=True):
    receiver: str | None = None
    matchers: Matchers = []
    group_by: list[str] | None = None
    group_wait: DurationOrZero | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    continue_: bool = msgspec.field(default=False, name="continue")
    routes: list[RouteConfig] = []


class InhibitRuleConfig(_Section, frozen=True):
    source_matchers: Matchers
    target_matchers: Matchers
    equal: list[str] = []


class SilencesConfig(_Section, frozen=True):
    max_duration: Duration = 7 * 86400.0
    max_silences: Annotated[int, After(_at_least(1))] = 1000  # active or pending at once
    max_size_bytes: Annotated[int, After(_at_least(64))] = 4096  # matchers, comment and author together
    retention: Duration = 5 * 86400.0  # expired silences are purged after this


class MqttConfig(_Section, frozen=True):
    broker: ListenAddress  # HOST:PORT, e.g. localhost:1883
    topic_prefix: str | None = None  # default gpumon/<hostname>
    telemetry_interval: Duration = 10.0
    username: str | None = None
    password_file: Path | None = None
    tls: bool = False
    client_id: str | None = None


class NotifyConfig(_Section, frozen=True):
    receivers: list[ReceiverConfig] = []
    route: RouteConfig | None = None
    # Default: a lost GPU does not also page for everything else about it.
    inhibit_rules: list[InhibitRuleConfig] = msgspec.field(default_factory=lambda: [InhibitRuleConfig(
        source_matchers=['alertname="GpuLost"'], target_matchers=['alertname!="GpuLost"'], equal=["uuid"])])
    max_age: Duration = 86400.0  # undelivered notifications older than this are dead-lettered
    alertmanagers: list[str] = []  # base URLs; alerts are pushed to /api/v2/alerts of each
    mqtt: MqttConfig | None = None
    external_url: str = ""  # externalURL in webhook payloads (a link to this host's gpumon)
    silences: SilencesConfig = SilencesConfig()

    def __post_init__(self) -> None:
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError("receiver names must be unique")
        for url in self.alertmanagers:
            if problem := url_problem(url):
                raise FieldError("alertmanagers", f"{redacted(url, keep_path=True)} {problem}")
        if self.receivers and (self.route is None or self.route.receiver is None):
            raise ValueError("route.receiver is required when receivers are configured")

        def check(route: RouteConfig) -> None:
            if route.receiver is not None and route.receiver not in names:
                raise ValueError(f"route receiver {route.receiver!r} is not a configured receiver")
            for child in route.routes:
                check(child)
        if self.route is not None:
            check(self.route)


class InfinibandConfig(_Section, frozen=True):
    enabled: bool = True  # reads nothing on a host without /sys/class/infiniband
    root: Path = Path("/sys/class/infiniband")
    pci_root: Path = Path("/sys/bus/pci/devices")  # GPU PCI functions, for gpumon_ib_gpu_affinity_info
    rescan_interval: Duration = 60.0


class NcclRasConfig(_Section, frozen=True):
    enabled: bool = False  # opt-in: each query is a collective over the job's RAS network
    address: ListenAddress = parse_listen("localhost:28028")  # NCCL_RAS_ADDR
    timeout: Duration = 5.0  # how long NCCL waits for the job's peers (its TIMEOUT command)
    timeout_factor: Annotated[int, After(_at_least(1))] = 1  # the job's NCCL_RAS_TIMEOUT_FACTOR
    interval: Duration | None = None  # default: sampler.slow_interval


class InterconnectConfig(_Section, frozen=True):
    infiniband: InfinibandConfig = InfinibandConfig()
    nccl_ras: NcclRasConfig = NcclRasConfig()


class ProcessesConfig(_Section, frozen=True):
    enabled: bool = True
    proc_root: Path = Path("/proc")  # must show the host's PID namespace (hostPID: true in a pod)
    max_per_gpu: Annotated[int, After(_at_least(1))] = 64  # process series per GPU; the rest are counted
    utilization: bool = False  # per-process utilisation, read in the slow tier (~2 ms per GPU per read)


class KubernetesConfig(_Section, frozen=True):
    enabled: bool = False  # needs the kubelet's socket mounted (deploy/kubernetes/overlays/attribution)
    socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    resources: list[str] = msgspec.field(  # device plugin resources to follow (globs)
        default_factory=lambda: ["nvidia.com/gpu", "nvidia.com/mig-*"])
    refresh_interval: Duration = 10.0
    timeout: Duration = 5.0
    # The kubelet's answer on a large node exceeds gRPC's default 4 MiB limit.
    max_message_bytes: Annotated[int, After(_at_least(4 * 1024 * 1024))] = 64 * 1024 * 1024
    pod_logs_dir: Path = Path("/var/log/pods")  # <namespace>_<pod>_<uid>/: pod UIDs to names
    container_logs_dir: Path = Path("/var/log/containers")  # <pod>_<namespace>_<container>-<id>.log


class JobsConfig(_Section, frozen=True):
    # One file per GPU index (or <gpu>.<gpu instance>) listing its job ids, as dcgm-exporter's
    # --hpc-job-mapping-dir reads them; Slurm prolog/epilog scripts write them.
    mapping_dir: Path | None = None


class AttributionConfig(_Section, frozen=True):
    processes: ProcessesConfig = ProcessesConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    jobs: JobsConfig = JobsConfig()


def _ratio(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


Ratio = Annotated[float, After(_ratio)]


class AccountingConfig(_Section, frozen=True):
    enabled: bool = True
    # SM activity (GPM; util.gpu without GPM) at or above which a GPU's second counts as active.
    active_threshold: Ratio = 0.05
    bucket: Duration = 60.0  # the resolution of `gpumon report` over this host's own accounting
    retention: Duration = 14 * 86400.0  # buckets, and owners not seen since, are dropped after this
    owner_series_retention: Duration = 3600.0  # an owner's counters stay in /metrics this long after it leaves
    idle_alert_after: Duration = 3600.0  # GpuHeldIdle: a GPU held and idle without a break this long
    waste_target: Ratio = 0.3  # GpuWasteShareHigh: the share of held GPU time spent idle


class LogConfig(_Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section, frozen=True):
    backend: Annotated[str, Before(_check_backend)] = "nvml"
    state_dir: Path = Path("/var/lib/gpumon")
    web: WebConfig = WebConfig()
    sampler: SamplerConfig = SamplerConfig()
    metrics: MetricsConfig = MetricsConfig()
    store: StoreConfig = StoreConfig()
    rules: RulesConfig = RulesConfig()
    notify: NotifyConfig = NotifyConfig()
    interconnect: InterconnectConfig = InterconnectConfig()
    attribution: AttributionConfig = AttributionConfig()
    accounting: AccountingConfig = AccountingConfig()
    log: LogConfig = LogConfig()

    @property
    def opt_ins(self) -> frozenset[str]:
        return frozenset(k for k, v in msgspec.structs.asdict(self.metrics).items() if v is True)


SECTIONS = frozenset(f.encode_name for f in msgspec.structs.fields(Config)
                     if isinstance(f.type, type) and issubclass(f.type, _Section))
# Paths in the file that are relative to the file's directory (flags stay relative to the cwd).
FILE_RELATIVE: tuple[KeyPath, ...] = (("state_dir",), ("web", "config_file"), ("rules", "files"),
                                      ("notify", "mqtt", "password_file"),
                                      ("interconnect", "infiniband", "root"),
                                      ("interconnect", "infiniband", "pci_root"),
                                      ("attribution", "processes", "proc_root"),
                                      ("attribution", "kubernetes", "socket"),
                                      ("attribution", "kubernetes", "pod_logs_dir"),
                                      ("attribution", "kubernetes", "container_logs_dir"),
                                      ("attribution", "jobs", "mapping_dir"))

# Command-line flag -> key path in the file. Flags win over the file.
FLAGS: dict[str, KeyPath] = {
    "backend": ("backend",),
    "state_dir": ("state_dir",),
    "listen": ("web", "listen"),
    "web_config": ("web", "config_file"),
    "fast_interval": ("sampler", "fast_interval"),
    "slow_interval": ("sampler", "slow_interval"),
    "poll_deadline": ("sampler", "deadline"),
    "process_pids": ("metrics", "process_pids"),
    "retention": ("store", "retention"),
    "rules": ("rules", "files"),
    "rule_evaluation_interval": ("rules", "evaluation_interval"),
    "infiniband_root": ("interconnect", "infiniband", "root"),
    "nccl_ras": ("interconnect", "nccl_ras", "enabled"),
    "nccl_ras_address": ("interconnect", "nccl_ras", "address"),
    "proc_root": ("attribution", "processes", "proc_root"),
    "kubernetes": ("attribution", "kubernetes", "enabled"),
    "hpc_job_mapping_dir": ("attribution", "jobs", "mapping_dir"),
    "log_level": ("log", "level"),
    "log_format": ("log", "format"),
}


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the config file (if any), apply flag overrides, validate. Raises ConfigError."""
    data: Any = {}
    lines: dict[KeyPath, int] = {}
    if path is not None:
        data, lines = load_yaml(path)
        if data is None:  # a document with nothing in it ("---")
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}:1: the configuration must be a mapping of keys")
        for key in SECTIONS:
            if key in data and data[key] is None:  # `sampler:` with every setting commented out
                data[key] = {}
        for keys in FILE_RELATIVE:
            _relative_to(data, keys, path.parent)
        notify = data.get("notify")
        receivers = notify.get("receivers") if isinstance(notify, dict) else None
        for receiver in receivers if isinstance(receivers, list) else []:
            for kind in ("webhook", "slack"):
                settings = receiver.get(kind) if isinstance(receiver, dict) else None
                if isinstance(settings, dict):  # secret files: url_file, signing_secret_file, ...
                    for key in [k for k in settings if k.endswith("_file")]:
                        _relative_to(settings, (key,), path.parent)
    origins: dict[KeyPath, str] = {}
    for flag, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = keys = FLAGS[flag]
        node = data
        for k in parents:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):  # `web: 5` in the file: reported by validation
                break
        else:
            node[leaf] = value
            origins[keys] = f"--{flag.replace('_', '-')}"
    return validate(Config, data, path or "(command line)", lines, origins)


def _relative_to(data: dict[str, Any], keys: KeyPath, base: Path) -> None:
    *parents, leaf = keys
    node: Any = data
    for k in parents:
        node = node.get(k) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return

    def resolve(text: str) -> str:
        if text.startswith("env:"):  # a secret from the environment, not a path
            return text
        value = Path(text).expanduser()
        return str(value if value.is_absolute() else base / value)
    if isinstance(node.get(leaf), str) and node[leaf]:
        node[leaf] = resolve(node[leaf])
    elif isinstance(node.get(leaf), list):  # rule file globs
        node[leaf] = [resolve(v) if isinstance(v, str) and v else v for v in node[leaf]]


__all__ = ["Config", "ConfigError", "Listen", "load_config", "parse_duration", "parse_listen"]
