"""Per-job overhead of the Dask executor vs the local executor, with a trivial command (``true``).

Prints, for N independent jobs and for a chain of N dependent jobs, the wall time per job of each executor
and the difference (the Dask overhead; target < 50 ms per job). The Dask cluster is a LocalCluster of 2
worker processes, 1 CPU each, started once (its ~3 s start-up is printed separately, not counted per job).

    python benchmarks/bench_dask.py [--jobs 200]
"""
import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from pymusepipe.executors import ExecJob, LocalExecutor


def make_jobs(folder: Path, count: int, chained: bool) -> list:
    jobs = []
    for number in range(count):
        name = f"job{number:04d}"
        depends = (f"job{number - 1:04d}",) if chained and number else ()
        jobs.append(ExecJob(name=name, argv=["true"], output_dir=folder / name,
                            stdout_path=folder / "logs" / f"{name}.stdout", depends_on=depends))
    return jobs


def per_job_seconds(executor, folder: Path, count: int, chained: bool) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "logs").mkdir(parents=True)
    jobs = make_jobs(folder, count, chained)
    start = time.perf_counter()
    results = executor.run(jobs)
    elapsed = time.perf_counter() - start
    failed = [name for name, result in results.items() if not result.ok]
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed, e.g. {failed[0]}: {results[failed[0]].message}")
    return elapsed / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per measurement (default 200)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO chatter would hide the figures
    from distributed import Client

    from pymusepipe.dask_executor import DaskExecutor, local_cluster

    scratch = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    try:
        local = LocalExecutor(cpus=[0, 1][:len(LocalExecutor().cpus)], pinning="none")
        started = time.perf_counter()
        with local_cluster(n_workers=2, cpus_per_worker=1, memory_gb_per_worker=2.0) as cluster, \
                Client(cluster) as client:
            client.wait_for_workers(2)
            print(f"LocalCluster (2 workers) start-up: {time.perf_counter() - started:.2f} s")
            dask = DaskExecutor(client, progress=False)
            per_job_seconds(dask, scratch / "warmup", 10, False)  # imports on the workers
            print(f"{'jobs':>20} {'local ms/job':>13} {'dask ms/job':>12} {'overhead ms/job':>16}")
            for label, chained in (("independent", False), ("chained", True)):
                local_time = per_job_seconds(local, scratch / f"local_{label}", args.jobs, chained)
                dask_time = per_job_seconds(dask, scratch / f"dask_{label}", args.jobs, chained)
                print(f"{args.jobs:>6} {label:>13} {local_time * 1e3:>13.2f} {dask_time * 1e3:>12.2f} "
                      f"{(dask_time - local_time) * 1e3:>16.2f}")
        print("target: Dask overhead < 50 ms per job")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
