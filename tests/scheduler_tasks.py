"""Small scheduler tasks for the tests: each runs a shell or Python command in its own folder."""
import sys
from pathlib import Path

from pymusepipe.scheduler import Command, Task

SLEEPER = ("import sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
           "open(sys.argv[1], 'w').write(f'{start} {time.time()}')")


class CommandTask(Task):
    """A task running ``argv``; records what the scheduler told it in ``events``."""

    def __init__(self, tmp_path, name, argv, *, depends_on=(), expected=(), up_to_date=None, memory_gb=0.5,
                 max_threads=1, finalize=None, events=None, alone_gb=None):
        self.name = name
        self.argv = [str(item) for item in argv]
        self.depends_on = tuple(depends_on)
        self.cwd = Path(tmp_path) / "out" / name
        self.stdout_path = Path(tmp_path) / "logs" / f"{name}.stdout"
        self.expected = [self.cwd / item for item in expected]
        self._up_to_date = up_to_date
        self.memory_gb = memory_gb
        self.alone_gb = memory_gb if alone_gb is None else alone_gb
        self.max_threads = max_threads
        self._finalize = finalize
        self.events = events if events is not None else []

    def up_to_date(self):
        return self._up_to_date

    def memory_alone(self, threads):
        return self.alone_gb

    def prepare(self, threads):
        self.events.append(("prepare", self.name, threads))
        self.stdout_path.parent.mkdir(parents=True, exist_ok=True)   # as the engine makes Esorex_log
        return Command(self.name, self.argv, self.cwd, self.stdout_path, threads=threads, memory_gb=self.memory_gb,
                       expected_products=self.expected)

    def finalize(self, result):
        self.events.append(("finalize", self.name))
        if self._finalize is not None:
            self._finalize()

    def record(self, result):
        self.events.append(("record", self.name, result.status))

    def discard(self, result):
        self.events.append(("discard", self.name))


def sleep_task(tmp_path, name, seconds=0.4, **kwargs):
    return CommandTask(tmp_path, name, [sys.executable, "-c", SLEEPER, Path(tmp_path) / f"{name}.time", seconds],
                       **kwargs)


def max_overlap(tmp_path, names):
    """Most tasks that ran at the same time (from the start/end times the sleepers wrote)."""
    spans = [tuple(map(float, (Path(tmp_path) / f"{name}.time").read_text().split())) for name in names]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak
