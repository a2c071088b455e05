"""/proc as the kernel writes it, for the processes NVML lists: names, users, pods, containers, jobs,
and what must give no facts at all (gone, reused, another namespace, junk)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpumon.attribution.procfs import MAX_NAME, Procfs, parse_cgroup, user_name
from tools.procfs import FakeProc, host_cgroup, kube_cgroup, slurm_cgroup

POD = "1f2e3d4c-5b6a-4789-8abc-def012345678"
CONTAINER = "a" * 63 + "b"


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("qos", ["guaranteed", "burstable", "besteffort"])
@pytest.mark.parametrize("runtime", ["containerd", "crio", "docker"])
def test_a_pods_process_names_the_pod_and_container(driver: str, version: int, qos: str, runtime: str) -> None:
    text = kube_cgroup(POD, CONTAINER, driver=driver, version=version, qos=qos, runtime=runtime)
    assert parse_cgroup(text) == (POD, CONTAINER, "", None)


def test_a_static_pods_uid_is_its_config_hash() -> None:
    assert parse_cgroup("0::/kubepods/besteffort/pod6a1f0c8e2d4b4c5e9f7a0b1c2d3e4f50/" + CONTAINER + "\n")[0] == (
        "6a1f0c8e2d4b4c5e9f7a0b1c2d3e4f50")


def test_paths_seen_from_another_cgroup_namespace_still_name_the_pod() -> None:
    """Under cgroup v2 with a private cgroup namespace, other processes' paths start with /../.."""
    escaped = POD.replace("-", "_")
    text = f"0::/../../kubepods-besteffort-pod{escaped}.slice/cri-containerd-{CONTAINER}.scope\n"
    assert parse_cgroup(text)[:2] == (POD, CONTAINER)


@pytest.mark.parametrize("version", [1, 2])
def test_a_slurm_tasks_process_names_the_job(version: int) -> None:
    pod, container, job, uid = parse_cgroup(slurm_cgroup(4242, 1001, version=version))
    assert (pod, container, job) == ("", "", "4242")
    assert uid == (1001 if version == 1 else None)  # v2 paths carry no uid: /proc/<pid>/status does
    assert parse_cgroup(slurm_cgroup(7, 5, version=1, node="gpu-node-3"))[2] == "7"


def test_a_host_process_belongs_to_nobody() -> None:
    for version in (1, 2):
        assert parse_cgroup(host_cgroup(version=version)) == ("", "", "", None)


@given(st.text(max_size=400))
def test_junk_never_raises_and_never_invents_an_owner(text: str) -> None:
    pod, container, job, _ = parse_cgroup(text)
    if pod:
        assert "pod" in text and (pod in text or pod.replace("-", "_") in text)
    if job:
        assert f"job_{job}" in text
    assert not container or container in text


def test_lookalikes_are_not_owners() -> None:
    assert parse_cgroup("0::/kubepods/burstable/podnotauid/abc\n") == ("", "", "", None)
    assert parse_cgroup("0::/home/job_12x/step\n0::/x/job_/\nno colon here\n12:memory:relative/job_5\n")[2] == ""
    assert parse_cgroup("0::/kubepods/burstable/pod" + POD + "x/\n")[0] == ""


def test_facts_of_a_process(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(100, "train.py", cgroup=kube_cgroup(POD, CONTAINER), uid=0, start_time=777)
    proc.add(101, "srun-task", cgroup=slurm_cgroup(99, 1001, version=2), uid=1001)
    procfs = Procfs(tmp_path)
    assert procfs.host_pid_namespace() is True
    a = procfs.facts(100)
    assert a is not None and (a.name, a.uid, a.pod_uid, a.container_id, a.job_id, a.start_time) == (
        "train.py", 0, POD, CONTAINER, "", 777)
    b = procfs.facts(101)
    assert b is not None and (b.job_id, b.uid) == ("99", 1001)
    assert procfs.alive(100, 777) and not procfs.alive(100, 778)
    assert procfs.facts(102) is None  # never was


def test_a_name_with_odd_bytes_is_a_clean_label_value(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(7, "x", comm=b"ev\x1bil\n\"na\xffme\n")
    facts = Procfs(tmp_path).facts(7)
    assert facts is not None and facts.name == 'ev\ufffdil\ufffd"na\ufffdme'
    proc.add(8, "x", comm=b"y" * 10_000)
    facts = Procfs(tmp_path).facts(8)
    assert facts is not None and len(facts.name) == MAX_NAME


def test_a_pid_reused_while_read_gives_no_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(tmp_path)
    proc.add(5, "old", cgroup=kube_cgroup(POD, CONTAINER), start_time=10)
    procfs = Procfs(tmp_path)
    real = Procfs._read

    def swap_midway(path: Path) -> str | None:
        if path.name == "cgroup":  # the process exits and a new one takes its PID right now
            proc.add(5, "new", cgroup=host_cgroup(), start_time=11)
        return real(path)
    monkeypatch.setattr(Procfs, "_read", staticmethod(swap_midway))
    assert procfs.facts(5) is None


def test_a_process_that_vanishes_mid_read_gives_no_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(tmp_path)
    proc.add(6, "brief")
    real = Procfs._read

    def vanish(path: Path) -> str | None:
        if path.name == "comm":
            proc.remove(6)
        return real(path)
    monkeypatch.setattr(Procfs, "_read", staticmethod(vanish))
    assert Procfs(tmp_path).facts(6) is None


def test_another_pid_namespace_is_recognised(tmp_path: Path) -> None:
    assert Procfs(tmp_path / "container").host_pid_namespace() is None  # nothing there
    FakeProc(tmp_path / "container", host=False)
    assert Procfs(tmp_path / "container").host_pid_namespace() is False


def test_the_real_proc_of_this_machine() -> None:
    procfs = Procfs()
    assert procfs.host_pid_namespace() in (True, False)
    me = procfs.facts(os.getpid())
    assert me is not None and me.name and me.uid == os.getuid() and me.start_time > 0


def test_user_names() -> None:
    assert user_name(0) == "root"
    assert user_name(None) == ""
    assert user_name(2**31 - 7) == str(2**31 - 7)


def test_uids_from_the_random_module_are_not_pods() -> None:
    text = f"0::/user.slice/run-{uuid.uuid4()}.scope\n"
    assert parse_cgroup(text)[0] == ""


def test_a_user_outside_our_user_namespace_is_unknown_not_nobody(tmp_path: Path) -> None:
    """Under systemd's PrivateUsers=yes every other user shows as the overflow UID (65534)."""
    proc = FakeProc(tmp_path)
    proc.add(9, "train", uid=65534)
    facts = Procfs(tmp_path).facts(9)
    assert facts is not None and facts.uid is None


def test_a_hidden_pid_1_still_tells_the_namespace(tmp_path: Path) -> None:
    """ProtectProc=invisible hides pid 1 from an unprivileged gpumon; its own entry says enough."""
    FakeProc(tmp_path)
    os.unlink(tmp_path / "1" / "ns" / "pid")
    assert Procfs(tmp_path).host_pid_namespace() is True
