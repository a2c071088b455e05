"""Which HPC job holds each GPU, from the job-mapping directory Slurm prolog and epilog scripts keep.

The format is dcgm-exporter's (`--hpc-job-mapping-dir`), so a site switches without rewriting its
scripts: one file per GPU, named by its index (`0`, `1`, ...) or, under MIG, `<gpu>.<gpu instance>`;
one job id per line. A second word on a line, as some sites write (`<job> <uid>`), names the user.
The directory is what the scheduler allocated, so it names a GPU's job even while the job leaves it
idle — the waste a process-derived job id cannot see; where it names a GPU, it wins.

Files are written by scripts, possibly half-written or wrong: a file larger than MAX_FILE_BYTES is
skipped whole (a truncated last line would be a wrong job), a line that is not a job id is skipped,
and each problem is logged once per change of the file. Files are re-read only when they change.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from gpumon.attribution.owners import Job, Owners
from gpumon.attribution.procfs import user_name
from gpumon.model import Sample, Tier
from gpumon.sources.base import Schedule, Unit, UnitHealth
from gpumon.sources.nvml import NvmlSource

log = structlog.get_logger("gpumon.jobs")

MAX_FILE_BYTES = 64 * 1024
MAX_JOBS_PER_GPU = 16
_FILE_NAME = re.compile(r"^(\d{1,4})(?:\.(\d{1,4}))?$")
# Slurm job ids: 123, array tasks 123_4, heterogeneous components 123+1; other schedulers' ids are
# alike. Anything else on a line (a path, a message) is not a job.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class _Read:
    signature: tuple[int, int]  # (mtime_ns, size): re-read only when it changes
    jobs: tuple[Job, ...]


class JobMapSource:
    name = "jobs"
    schedule = Schedule.SHARED_THREAD
    essential = False

    def __init__(self, directory: Path, gpus: NvmlSource, owners: Owners) -> None:
        self.directory = directory
        self.gpus = gpus
        self.owners = owners
        self._files: dict[str, _Read] = {}
        self._readable = False
        self._was_readable: bool | None = None

    def open(self) -> list[Unit]:
        return [Unit("jobs")]

    def start(self, changed: Callable[[], None]) -> None:
        return None

    def close(self) -> None:
        return None

    def reopen(self, unit: Unit) -> None:
        return None

    def poll(self, unit: Unit, tier: Tier) -> list[Sample]:
        if tier is not Tier.FAST:
            return []
        self._scan()
        now = time.time()
        samples = {str(d.index): (d, Sample(f"{unit.key}:gpu{d.index}", Tier.FAST.value, now, gpu=d.index))
                   for d in self.gpus.devices}
        for name, read in sorted(self._files.items()):
            gpu, _, instance = name.partition(".")
            if gpu not in samples:
                continue
            device, sample = samples[gpu]
            for job in read.jobs:
                sample.add("gpumon_gpu_job_info", (*device.labels, ("gpu_instance", instance), ("job_id", job.id),
                                                   ("user", job.user), ("origin", "mapping")), 1.0)
        return [sample for _, sample in samples.values()]

    def _scan(self) -> None:
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            self._set_readable(False, str(exc))
            if self._files:
                self._files = {}
                self.owners.set_jobs({})
            return
        self._set_readable(True, "")
        known = {str(d.index) for d in self.gpus.devices}
        seen: dict[str, _Read] = {}
        changed = False
        for entry in entries:
            m = _FILE_NAME.match(entry.name)
            if m is None or not entry.is_file():
                continue  # other files and directories are not ours to read (as dcgm-exporter)
            try:
                st = entry.stat()
            except OSError:
                continue  # removed between the listing and now: the job ended
            signature = (st.st_mtime_ns, st.st_size)
            old = self._files.get(entry.name)
            if old is not None and old.signature == signature:
                seen[entry.name] = old
                continue
            changed = True
            seen[entry.name] = _Read(signature, self._read(Path(entry.path), st.st_size))
            if m.group(1) not in known:
                log.warning("job mapping file names a GPU this host does not have", file=entry.path)
        if changed or seen.keys() != self._files.keys():
            self._files = seen
            self.owners.set_jobs({name: read.jobs for name, read in seen.items() if read.jobs})

    def _read(self, path: Path, size: int) -> tuple[Job, ...]:
        if size > MAX_FILE_BYTES:
            log.warning("job mapping file too large; ignored", file=str(path), bytes=size, limit=MAX_FILE_BYTES)
            return ()
        try:
            with open(path, "rb") as f:
                text = f.read(MAX_FILE_BYTES + 1).decode("utf-8", "replace")
        except OSError as exc:
            log.warning("job mapping file unreadable", file=str(path), error=str(exc))
            return ()
        if len(text) > MAX_FILE_BYTES:  # grew while being read
            return ()
        jobs: list[Job] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            words = line.split()
            if not words:
                continue
            if not _JOB_ID.fullmatch(words[0]) or len(words) > 2 or (len(words) == 2 and not _USER.fullmatch(words[1])):
                log.warning("job mapping line is not `JOB [USER]`; skipped", file=str(path), line=lineno)
                continue
            user = words[1] if len(words) == 2 else ""
            job = Job(words[0], user_name(int(user)) if user.isdigit() else user)
            if job not in jobs:
                jobs.append(job)
        if len(jobs) > MAX_JOBS_PER_GPU:
            log.warning("job mapping file lists more jobs than kept", file=str(path), jobs=len(jobs),
                        kept=MAX_JOBS_PER_GPU)
        return tuple(jobs[:MAX_JOBS_PER_GPU])

    def _set_readable(self, readable: bool, why: str) -> None:
        self._readable = readable
        if readable != self._was_readable:
            if not readable:
                log.warning("job mapping directory unreadable; no job ids from it", directory=str(self.directory),
                            error=why)
            self._was_readable = readable

    def health(self, units: dict[Unit, UnitHealth]) -> Sample:
        s = Sample("self:jobs", "self", time.time())
        s.add("gpumon_job_mapping_readable", (), 1.0 if self._readable else 0.0)
        return s
