"""What the job tables of a reduction say about its timing (shared by the benchmarks; prints nothing itself).

Every job a reduction ran is a row of some ``Astro_Tables/<recipe>_jobs.fits`` under its data root, with its
start time, wall time, the CPU time of its processes, its threads and the files it read and wrote. From those:

- the esorex CPU time and the peak RSS of the whole reduction;
- its *critical path*: the longest chain of jobs in which each one needs a product of the one before. No
  scheduler can finish the reduction sooner than that chain takes, whatever the number of cores, unless the
  recipes on it run faster. Comparing it with ``esorex CPU / cores`` says whether idle cores are the
  scheduler's fault (wall well above the chain) or the recipes' (wall close to the chain);
- its *serial jobs*: those that every other job either waits for or comes after (muse_bias, muse_flat and
  muse_wavecal at the head of a night). Nothing can run beside them, so while they run the cores they leave
  idle stay idle under any schedule. That gives a second lower bound on the wall time:
  ``serial wall + (CPU - serial CPU) / cores``.
"""
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from astropy.table import Table


@dataclass
class TimedJob:
    name: str
    recipe: str
    area: str
    started: float            # POSIX seconds
    duration: float           # wall seconds
    cpu_seconds: float
    threads: int
    max_rss_mb: float
    reads: set = field(default_factory=set)
    writes: set = field(default_factory=set)

    @property
    def cores_used(self) -> float:
        """Mean number of cores its processes kept busy while it ran."""
        return self.cpu_seconds / self.duration if self.duration > 0 else 0.0


def _paths(text) -> set:
    """The file paths of a job table's JSON column (a list, or a mapping of tag -> {"paths": [...]})."""
    if not isinstance(text, str) or not text.strip():
        return set()
    value = json.loads(text)
    if isinstance(value, dict):
        return {path for entry in value.values() if isinstance(entry, dict) for path in entry.get("paths", [])}
    return {path for path in value if isinstance(path, str)}


def read_jobs(root: Path, esorex_only: bool = True) -> list:
    """Every job that ran to the end under ``root`` (``status == 'done'``), as :class:`TimedJob`."""
    jobs = []
    for path in sorted(Path(root).rglob("Astro_Tables/*_jobs.fits")):
        table = Table.read(path)
        for row in table[table["status"] == "done"]:
            recipe = str(row["recipe"])
            if esorex_only and not recipe.startswith("muse_"):
                continue
            jobs.append(TimedJob(
                name=f"{row['area']}:{row['job']}", recipe=recipe, area=str(row["area"]),
                started=datetime.fromisoformat(str(row["started"])).timestamp(),
                duration=max(float(row["duration"]), 0.0), cpu_seconds=max(float(row["cpu_seconds"]), 0.0),
                threads=int(row["threads"]), max_rss_mb=float(row["max_rss_mb"]),
                reads=_paths(row["inputs"]) | _paths(row["calibrations"]), writes=_paths(row["products"])))
    return jobs


def _links(jobs: list) -> dict:
    """job name -> names of the jobs that wrote a file it reads (its direct prerequisites)."""
    producer = {path: job.name for job in jobs for path in job.writes}
    return {job.name: {producer[path] for path in job.reads if path in producer} - {job.name} for job in jobs}


def critical_path(jobs: list) -> tuple:
    """(seconds, [jobs]) of the longest chain in which each job reads a product of the previous one."""
    links, by_name = _links(jobs), {job.name: job for job in jobs}
    finish, chain_before, visiting = {}, {}, set()

    def finish_of(job):
        if job.name not in finish:
            visiting.add(job.name)          # guards against a cycle through a rewritten product
            previous = [by_name[name] for name in links[job.name] if name not in visiting]
            before = max(previous, key=finish_of, default=None)
            finish[job.name] = job.duration + (finish_of(before) if before else 0.0)
            chain_before[job.name] = before
            visiting.discard(job.name)
        return finish[job.name]

    if not jobs:
        return 0.0, []
    last = max(jobs, key=finish_of)
    chain, job = [], last
    while job is not None:
        chain.append(job)
        job = chain_before[job.name]
    return finish[last.name], chain[::-1]


def serial_jobs(jobs: list) -> list:
    """The jobs that can overlap no other job: every other one is among their ancestors or descendants."""
    before = _links(jobs)
    ancestors = {}

    def ancestors_of(name):
        if name not in ancestors:
            ancestors[name] = set()             # guards against a cycle through a rewritten product
            found = set()
            for parent in before[name]:
                found |= {parent} | ancestors_of(parent)
            ancestors[name] = found
        return ancestors[name]

    names = {job.name for job in jobs}
    descendants = {name: set() for name in names}
    for name in names:
        for ancestor in ancestors_of(name):
            descendants[ancestor].add(name)
    return [job for job in jobs if ancestors_of(job.name) | descendants[job.name] | {job.name} == names]


def wall_lower_bound(jobs: list, cpu: float, cores: int) -> tuple:
    """(seconds, serial jobs): the shortest wall time any schedule of these jobs, with these run times, can
    reach on ``cores`` cores: the critical path, or the serial jobs' wall plus the rest of ``cpu`` spread
    evenly over the cores, whichever is longer."""
    serial = serial_jobs(jobs)
    serial_cpu = sum(job.cpu_seconds for job in serial if job.recipe.startswith("muse_"))
    serial_wall = sum(job.duration for job in serial)
    return max(critical_path(jobs)[0], serial_wall + max(cpu - serial_cpu, 0.0) / cores), serial


def summary(root: Path) -> dict:
    """CPU, count and peak RSS of the esorex jobs under ``root``, and the critical path of all its jobs."""
    every = read_jobs(root, esorex_only=False)
    jobs = [job for job in every if job.recipe.startswith("muse_")]
    length, chain = critical_path(every)       # the Python steps (alignment) are links of the chain too
    return {"jobs": jobs, "cpu": float(sum(job.cpu_seconds for job in jobs)), "count": len(jobs),
            "rss_mb": float(max((job.max_rss_mb for job in jobs), default=0.0)),
            "critical_path": length, "chain": chain}


def describe_chain(chain: list) -> str:
    """One line per job of a critical path: recipe, threads, wall, and the cores it kept busy."""
    lines = [f"  {'job on the critical path':<60}{'threads':>8}{'wall s':>8}{'CPU s':>8}{'cores used':>11}"]
    for job in chain:
        lines.append(f"  {job.name[-60:]:<60}{job.threads:>8}{job.duration:>8.0f}{job.cpu_seconds:>8.0f}"
                     f"{job.cores_used:>11.2f}")
    total_wall = sum(job.duration for job in chain)
    total_cpu = sum(job.cpu_seconds for job in chain)
    lines.append(f"  {'chain':<60}{'':>8}{total_wall:>8.0f}{total_cpu:>8.0f}"
                 f"{(total_cpu / total_wall if total_wall else 0):>11.2f}")
    return "\n".join(lines)


def count_in(jobs: list, folder: str) -> int:
    """How many of ``jobs`` ran for an area whose name starts with ``folder`` (e.g. ``night``)."""
    return int(np.sum([job.area.startswith(folder) for job in jobs]))
