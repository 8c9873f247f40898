"""Benchmark: generation of the default simulated dataset (1 IFU, 1 pointing, 2 OBJECT exposures).

Prints wall time, CPU time, peak memory (resource.getrusage) and disk size. Targets: <= 60 s, <= 2 GB.

Usage::

    python benchmarks/bench_simulate.py [--ifus 1] [--keep DIR]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pymusepipe.simulate import simulate_run


def folder_size(path: Path) -> int:
    """Bytes used by the files under ``path`` (hard-linked calibrations of other pointings counted once)."""
    sizes = {}
    for item in path.rglob("*"):
        if item.is_file():
            stat = item.stat()
            sizes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(sizes.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ifus", default="1", help="comma-separated IFUs (default 1)")
    parser.add_argument("--pointings", type=int, default=1)
    parser.add_argument("--exposures", type=int, default=2)
    parser.add_argument("--keep", help="write here and keep the data (default: a temporary folder)")
    args = parser.parse_args(argv)
    ifus = tuple(int(i) for i in args.ifus.split(","))
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run = simulate_run(workdir / "run", ifus=ifus, pointings=args.pointings, exposures=args.exposures,
                           overwrite=True)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # ru_maxrss is in KiB
        size = folder_size(run.root)
        print(f"simulate_run(ifus={ifus}, pointings={args.pointings}, exposures={args.exposures})")
        print(f"  raw files       : {len(run.raw_files)}")
        print(f"  wall time       : {wall:.1f} s   (target <= 60 s)")
        print(f"  CPU time        : {cpu:.1f} s")
        print(f"  peak memory     : {peak_gb:.2f} GB (target <= 2 GB)")
        print(f"  disk size       : {size / 1e6:.0f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
