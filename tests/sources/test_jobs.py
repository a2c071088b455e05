"""The job-mapping directory as Slurm prolog scripts write it for dcgm-exporter, and what must not
become a job: junk lines, huge files, GPUs this host lacks, a directory that is not there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from gpumon.attribution.owners import Job, Owners
from gpumon.model import Sample, Tier
from gpumon.sources.base import Unit
from gpumon.sources.jobs import MAX_FILE_BYTES, MAX_JOBS_PER_GPU, JobMapSource
from gpumon.sources.nvml import NvmlSource
from tests.support.nvml import CaptureFake

UNIT = Unit("jobs")


def made(directory: Path, gpus: int = 2) -> tuple[JobMapSource, Owners]:
    nvml = NvmlSource(CaptureFake().start(gpus=gpus, at=1.0))
    nvml.open()
    owners = Owners()
    source = JobMapSource(directory, nvml, owners)
    assert source.open() == [UNIT]
    return source, owners


def jobs(sample: Sample) -> set[tuple[str, str, str, str]]:
    return {(d["gpu"], d["gpu_instance"], d["job_id"], d["user"]) for name, labels, _ in sample.values
            if name == "gpumon_gpu_job_info" and (d := dict(labels))["origin"] == "mapping"}


def poll(source: JobMapSource) -> Sample:
    """The per-GPU samples merged, for assertions."""
    samples = source.poll(UNIT, Tier.FAST)
    assert [s.gpu for s in samples] == list(range(len(source.gpus.devices)))
    return Sample("all", "fast", 0.0, [v for s in samples for v in s.values])


def test_files_as_dcgm_exporter_reads_them(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("4242\n")
    (tmp_path / "1").write_text("4243 0\n4244_7 alice\n\n")  # a second word names the user
    (tmp_path / "1.2").write_text("5000\n")  # MIG: <gpu>.<gpu instance>
    (tmp_path / "notes.txt").write_text("not a GPU\n")
    (tmp_path / "3x").write_text("77\n")
    os.mkdir(tmp_path / "0.1")  # a directory, not a file
    source, owners = made(tmp_path)
    assert jobs(poll(source)) == {("0", "", "4242", ""), ("1", "", "4243", "root"), ("1", "", "4244_7", "alice"),
                                  ("1", "2", "5000", "")}
    assert owners.gpu_jobs(0) == (Job("4242"),)
    assert owners.jobs["1.2"] == (Job("5000"),)
    assert source.health({}).values == [("gpumon_job_mapping_readable", (), 1.0)]


def test_changes_are_seen_and_only_changes_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "0").write_text("1\n")
    source, owners = made(tmp_path)
    poll(source)
    version = owners.version
    reads: list[Path] = []
    real = JobMapSource._read
    monkeypatch.setattr(JobMapSource, "_read", lambda self, path, size: reads.append(path) or real(self, path, size))
    poll(source)
    assert reads == [] and owners.version == version  # nothing changed: nothing read, owners untouched
    (tmp_path / "0").write_text("2\n")
    os.utime(tmp_path / "0", ns=(1, 1))  # a new mtime whatever the clock's resolution
    assert jobs(poll(source)) == {("0", "", "2", "")} and reads == [tmp_path / "0"]
    (tmp_path / "0").unlink()  # the epilog removed it: the job ended
    assert jobs(poll(source)) == set() and owners.gpu_jobs(0) == ()


def test_what_is_not_a_job_is_skipped_and_said(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("4242\nrm -rf /\n$(reboot)\n4243 bad/user\n" + "x" * 100 + "\n4245\n")
    (tmp_path / "1").write_bytes(b"9" * (MAX_FILE_BYTES + 1))  # 64 KiB of digits: a truncated id would lie
    (tmp_path / "7").write_text("99\n")  # this host has GPUs 0 and 1
    source, _ = made(tmp_path)
    with structlog.testing.capture_logs() as logs:
        got = jobs(poll(source))
    assert got == {("0", "", "4242", ""), ("0", "", "4245", "")}
    events = [e["event"] for e in logs]
    assert events.count("job mapping line is not `JOB [USER]`; skipped") == 4
    assert "job mapping file too large; ignored" in events
    assert "job mapping file names a GPU this host does not have" in events
    with structlog.testing.capture_logs() as logs:
        poll(source)
    assert logs == []  # said once per change of a file, not every poll


def test_ten_megabytes_of_text(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("12345\n" * (10 * 1024 * 1024 // 6))
    source, owners = made(tmp_path)
    assert jobs(poll(source)) == set() and owners.gpu_jobs(0) == ()


def test_at_most_so_many_jobs_per_gpu(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("".join(f"{n}\n" for n in range(100, 140)))
    source, _ = made(tmp_path)
    assert len(jobs(poll(source))) == MAX_JOBS_PER_GPU


def test_a_missing_directory_is_a_state_not_an_error(tmp_path: Path) -> None:
    source, owners = made(tmp_path / "not-yet")
    assert jobs(poll(source)) == set()
    assert source.health({}).values == [("gpumon_job_mapping_readable", (), 0.0)]
    (tmp_path / "not-yet").mkdir()
    (tmp_path / "not-yet" / "1").write_text("8\n")
    assert jobs(poll(source)) == {("1", "", "8", "")}
    assert source.health({}).values == [("gpumon_job_mapping_readable", (), 1.0)]
    assert owners.gpu_jobs(1) == (Job("8"),)
