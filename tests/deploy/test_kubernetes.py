"""deploy/kubernetes and the Dockerfile: every rendered manifest validates against the Kubernetes schemas
offline, the Prometheus Operator resources are consistent and current, the image builds what it should."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.deploy import DEPLOY, ROOT, gpumon, run

K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = [BASE, *OVERLAYS]
OPERATOR = K8S / "overlays" / "prometheus-operator"
# The oldest Kubernetes we claim (the restricted Pod Security labels need 1.25; 1.28 is the oldest release
# the major clouds still run), one in the middle and the newest the validator knows.
K8S_VERSIONS = ["1.28.0", "1.32.0", "1.37.0"]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
PORT = 9948
BUNDLED_RULES = sorted((ROOT / "rules").glob("*.rules.yml"))
EXPORT_CMD = ["rules", "export", "--format", "prometheusrule", "--name", "gpumon", "--namespace", "gpumon"]

Doc = dict[str, Any]


@cache
def render(kustomization: Path) -> tuple[Doc, ...]:
    result = run("kubectl", "kustomize", str(kustomization))
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def by_kind(docs: tuple[Doc, ...], kind: str) -> Doc:
    (doc,) = (d for d in docs if d["kind"] == kind)
    return doc


def pod_spec(docs: tuple[Doc, ...]) -> Doc:
    spec: Doc = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def container(docs: tuple[Doc, ...]) -> Doc:
    (c,) = pod_spec(docs)["containers"]
    return dict(c)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_every_manifest_validates_offline(kustomization: Path) -> None:
    docs = render(kustomization)
    assert {d["kind"] for d in docs} >= {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Service",
                                         "NetworkPolicy"}
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # no schema bundled: checked structurally below
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_bad_manifest() -> None:
    daemonset = copy.deepcopy(by_kind(render(BASE), "DaemonSet"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, K8S_VERSIONS[-1], strict=True)


def test_overlays_render_only_what_they_add() -> None:
    assert {d["kind"] for d in render(OPERATOR)} - {d["kind"] for d in render(BASE)} == CRD_KINDS
    runtime = K8S / "overlays" / "nvidia-runtime-class"
    assert pod_spec(render(runtime))["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in pod_spec(render(BASE))


def test_daemonset_is_locked_down() -> None:
    docs = render(BASE)
    pod, c = pod_spec(docs), container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "privileged": False, "capabilities": {"drop": ["ALL"]}}
    # Restricted Pod Security Standard: no hostPath anywhere.
    assert all("hostPath" not in v for v in pod["volumes"])
    namespace = by_kind(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_daemonset_runs_on_gpu_nodes_without_taking_a_gpu() -> None:
    docs = render(BASE)
    pod, c = pod_spec(docs), container(docs)
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in [
        e for t in terms for e in t["matchExpressions"]]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    for kind in ("requests", "limits"):
        assert "nvidia.com/gpu" not in c["resources"][kind]
    assert c["resources"] == {"requests": {"cpu": "50m", "memory": "80Mi"},
                              "limits": {"cpu": "200m", "memory": "128Mi"}}


def test_probes_and_ports_match_gpumon() -> None:
    docs = render(BASE)
    c = container(docs)
    assert c["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    service = by_kind(docs, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": PORT, "targetPort": "metrics", "protocol": "TCP"}]
    selector = service["spec"]["selector"]
    pod_labels = by_kind(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


def test_config_map_mounts_where_the_config_says(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = render(BASE)
    c, pod = container(docs), pod_spec(docs)
    config_map = by_kind(docs, "ConfigMap")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert c["args"] == ["--config", f"{mounts['config']}/gpumon.yaml"]
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    # Lay the ConfigMap out as the kubelet would, then check the configuration and the rules it names.
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    config = yaml.safe_load(config_map["data"]["gpumon.yaml"])
    assert mounts["state"] == config["state_dir"]
    code, _, err = gpumon(capsys, "run", "--config", str(tmp_path / "gpumon.yaml"), "--check-config")
    assert code == 0, err
    rule_files = sorted(p for g in config["rules"]["files"] for p in tmp_path.glob(g))
    assert [p.name for p in rule_files] == [p.name for p in BUNDLED_RULES]
    code, out, err = gpumon(capsys, "rules", "check", *map(str, rule_files))
    assert code == 0, out + err


def test_config_map_rules_are_the_bundled_rules() -> None:
    fix = "cp rules/*.rules.yml deploy/kubernetes/base/ and list them in its kustomization.yaml"
    assert [p.name for p in sorted(BASE.glob("*.rules.yml"))] == [p.name for p in BUNDLED_RULES], fix
    for bundled in BUNDLED_RULES:
        assert (BASE / bundled.name).read_text() == bundled.read_text(), f"{bundled.name} is stale: {fix}"
    data = by_kind(render(BASE), "ConfigMap")["data"]
    assert sorted(name for name in data if name.endswith(".rules.yml")) == [p.name for p in BUNDLED_RULES], fix


def test_committed_prometheusrule_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = gpumon(capsys, *EXPORT_CMD)
    assert code == 0, err
    stale = f"overlays/prometheus-operator/prometheusrule.yaml is stale: gpumon {' '.join(EXPORT_CMD)} > it"
    assert (OPERATOR / "prometheusrule.yaml").read_text() == out, stale


def test_prometheusrule_passes_promtool(tmp_path: Path) -> None:
    rule = by_kind(render(OPERATOR), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "gpumon"
    assert set(rule["spec"]) == {"groups"}
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    check = run("promtool", "check", "rules", str(rules))
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len(alerts) == len(set(alerts)) > 0
    # gpumon's own extension annotations must not reach Prometheus.
    assert not [k for g in rule["spec"]["groups"] for r in g["rules"] for k in r.get("annotations", {})
                if k.startswith("gpumon_")]


def test_servicemonitor_selects_the_service() -> None:
    docs = render(OPERATOR)
    monitor, service = by_kind(docs, "ServiceMonitor"), by_kind(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
    for relabel in endpoint["relabelings"]:
        assert relabel["action"] == "replace" and relabel["sourceLabels"] and relabel["targetLabel"]


# --- Dockerfile ------------------------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_is_the_image_the_daemonset_runs() -> None:
    ins = _instructions()
    stages = [arg for op, arg in ins if op == "FROM"]
    assert stages == ["python:3.11-slim AS build", "python:3.11-slim"]
    (user,) = (arg for op, arg in ins if op == "USER")
    uid, _, gid = user.partition(":")
    pod = pod_spec(render(BASE))
    assert (int(uid), int(gid)) == (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"])
    assert ("ENTRYPOINT", '["gpumon", "run"]') in ins
    assert container(render(BASE))["image"] == f"ghcr.io/gpumon/gpumon:{_version()}"


def _version() -> str:
    match = re.search(r'__version__ = "([^"]+)"', (ROOT / "gpumon" / "__init__.py").read_text())
    assert match
    return match.group(1)


def test_build_context_holds_the_whole_package(tmp_path: Path) -> None:
    """Lay out the build stage's COPY sources (minus .dockerignore's exclusions) and build the package from
    them: the bundled rules arrive through a symlink into rules/, so forgetting that COPY loses them."""
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*", "the context is an allow list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    build_stage = _instructions()[: [op for op, _ in _instructions()].index("FROM", 1)]
    src = tmp_path / "src"
    for op, arg in build_stage:
        if op != "COPY" or arg.startswith("--from"):
            continue
        *sources, dest = arg.split()
        for source in sources:
            assert source in allowed, f"COPY {source}: excluded by .dockerignore"
            target = src / dest / (Path(source).name if dest.endswith("/") else "")
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    build = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                            "--build-lib", str(tmp_path / "lib")], cwd=src, capture_output=True, text=True,
                           timeout=60, check=False)
    assert build.returncode == 0, build.stderr
    lib = tmp_path / "lib" / "gpumon"
    assert (lib / "rules" / "bundled" / "gpumon.rules.yml").is_file()
    assert (lib / "demo" / "h200" / "trace.jsonl").is_file()


def test_hadolint() -> None:
    result = run("hadolint", "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_monitoring_namespace_may_connect() -> None:
    """gpumon's port serves silences, which write: the base admits Prometheus's namespace only."""
    docs = render(BASE)
    policy = by_kind(docs, "NetworkPolicy")["spec"]
    pod_labels = by_kind(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    port_names = {p["name"] for p in by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert [p["port"] for p in rule["ports"]] == ["metrics"] and "metrics" in port_names


# --- overlays/nccl-ras-host-network ------------------------------------------------------------------------

HOST_NETWORK = K8S / "overlays" / "nccl-ras-host-network"


def test_nccl_ras_overlay_puts_gpumon_on_the_host_network_and_nothing_else(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NCCL's RAS port is on the job's localhost: for host-network jobs the node's, which only a host-network
    pod reaches. The overlay changes the pod's network, the Pod Security level that admits it, and the
    configuration's nccl_ras section; the pod stays as locked down as the base's in every other way."""
    from gpumon.config import load_config

    base, docs = render(BASE), render(HOST_NETWORK)
    pod, base_pod = pod_spec(docs), pod_spec(base)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"  # cluster DNS still, not the node's resolv.conf
    config_map, base_config_map = by_kind(docs, "ConfigMap"), by_kind(base, "ConfigMap")
    # The ConfigMap's name carries its content hash: a new name, so the DaemonSet rolls out.
    assert config_map["metadata"]["name"] != base_config_map["metadata"]["name"]
    unchanged = copy.deepcopy(pod)
    del unchanged["hostNetwork"], unchanged["dnsPolicy"]
    (config_volume,) = (v for v in unchanged["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    config_volume["configMap"]["name"] = base_config_map["metadata"]["name"]
    assert unchanged == base_pod

    # Host namespaces are beyond "baseline" and "restricted": the namespace must admit "privileged".
    labels = by_kind(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "privileged"

    # The configuration is the base's plus the RAS source, and the rule files are all still there.
    config = yaml.safe_load(config_map["data"]["gpumon.yaml"])
    want = yaml.safe_load(base_config_map["data"]["gpumon.yaml"])
    want.setdefault("interconnect", {})["nccl_ras"] = {"enabled": True, "address": "localhost:28028"}
    assert config == want, "overlays/nccl-ras-host-network/gpumon.yaml must be the base's plus nccl_ras"
    assert {k: v for k, v in config_map["data"].items() if k != "gpumon.yaml"} == \
        {k: v for k, v in base_config_map["data"].items() if k != "gpumon.yaml"}
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    code, _, err = gpumon(capsys, "run", "--config", str(tmp_path / "gpumon.yaml"), "--check-config")
    assert code == 0, err
    ras = load_config(tmp_path / "gpumon.yaml").interconnect.nccl_ras
    assert ras.enabled and (ras.address.host, ras.address.port) == ("localhost", 28028)

    # What it costs is written where it is applied.
    notes = (HOST_NETWORK / "kustomization.yaml").read_text()
    for cost in ("9948", "NetworkPolicy", '"privileged"', "NCCL_RAS_ADDR"):
        assert cost in notes, cost


# --- overlays/attribution ---------------------------------------------------------------------------------

ATTRIBUTION = K8S / "overlays" / "attribution"


def test_attribution_overlay_adds_exactly_what_naming_owners_needs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The host PID namespace (NVML's PIDs are the host's), the kubelet's pod-resources socket (owned by
    root, hence user 0) and its log directories, read-only; no capability, no privilege escalation, and the
    base's configuration plus the attribution section. The base itself stays restricted."""
    from gpumon.config import load_config

    base, docs = render(BASE), render(ATTRIBUTION)
    pod, base_pod = pod_spec(docs), pod_spec(base)
    assert pod["hostPID"] is True and not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsNonRoot"]) == (0, False)
    c = container(docs)
    assert c["securityContext"] == container(base)["securityContext"]  # drop ALL, read-only root, no escalation
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"pod-resources": "/var/lib/kubelet/pod-resources", "pod-logs": "/var/log/pods",
                          "container-logs": "/var/log/containers"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert all(mounts[name]["readOnly"] is True and mounts[name]["mountPath"] == path
               for name, path in host_paths.items())
    # Everything else is the base's.
    unchanged = copy.deepcopy(pod)
    del unchanged["hostPID"]
    unchanged["securityContext"] = base_pod["securityContext"]
    unchanged["volumes"] = [v for v in unchanged["volumes"] if "hostPath" not in v]
    config_map, base_config_map = by_kind(docs, "ConfigMap"), by_kind(base, "ConfigMap")
    (config_volume,) = (v for v in unchanged["volumes"] if v["name"] == "config")
    config_volume["configMap"]["name"] = base_config_map["metadata"]["name"]
    uc = unchanged["containers"][0]
    uc["volumeMounts"] = [m for m in uc["volumeMounts"] if m["name"] not in host_paths]
    uc["resources"]["requests"]["memory"] = container(base)["resources"]["requests"]["memory"]
    assert unchanged == base_pod
    labels = by_kind(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert by_kind(base, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    config = yaml.safe_load(config_map["data"]["gpumon.yaml"])
    want = yaml.safe_load(base_config_map["data"]["gpumon.yaml"])
    want["attribution"] = config["attribution"]
    assert config == want, "overlays/attribution/gpumon.yaml must be the base's plus attribution"
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    code, _, err = gpumon(capsys, "run", "--config", str(tmp_path / "gpumon.yaml"), "--check-config")
    assert code == 0, err
    settings = load_config(tmp_path / "gpumon.yaml").attribution
    assert settings.kubernetes.enabled and settings.processes.enabled
    assert str(settings.kubernetes.socket).startswith(host_paths["pod-resources"])
    assert (settings.kubernetes.pod_logs_dir, settings.kubernetes.container_logs_dir) == (
        Path(host_paths["pod-logs"]), Path(host_paths["container-logs"]))

    notes = (ATTRIBUTION / "kustomization.yaml").read_text()
    for cost in ("hostPID", "user 0", "log directories", '"privileged"', "20 MiB"):
        assert cost in notes, cost


# --- overlays/mig-monitor ---------------------------------------------------------------------------------

def test_mig_monitor_overlay_adds_the_monitor_variable_and_sys_admin_only() -> None:
    base, mig = render(BASE), render(K8S / "overlays" / "mig-monitor")
    env = {e["name"]: e["value"] for e in container(mig)["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility",
                   "NVIDIA_MIG_MONITOR_DEVICES": "all"}
    assert container(mig)["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert pod_spec(mig) | {"containers": None} == pod_spec(base) | {"containers": None}  # still not root
    assert by_kind(mig, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
