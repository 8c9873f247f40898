"""Benchmark: writing a simulated programme for 1, 4 and 24 IFUs.

Each case runs in its own process and prints wall time, CPU time, peak memory (its own ru_maxrss) and disk
used. Peak memory must not grow with the number of IFUs (the simulator writes one IFU at a time).

Usage::

    python benchmarks/bench_simulate.py                       # cases 1 and 4 IFUs, the demo shape
    python benchmarks/bench_simulate.py --cases 1,4,24 --compress
    python benchmarks/bench_simulate.py --cases 24 --shape example --header-only
    python benchmarks/bench_simulate.py --one 4               # one case in this process

The 24-IFU case writes ~400 full CCDs (~20 CPU-minutes, 15 GB uncompressed / ~6 GB with --compress): run it
with ``nice`` in the background on a shared machine.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def folder_size(path: Path) -> int:
    """Bytes used by the files under ``path`` (hard-linked calibrations counted once)."""
    sizes = {}
    for item in path.rglob("*"):
        if item.is_file():
            stat = item.stat()
            sizes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(sizes.values())


def _programme(shape, ifus, compress, header_only):
    from pymusepipe.simulate import demo_programme, example_programme
    if shape == "example":
        return example_programme(ifus=ifus, compress=compress, header_only=header_only)
    return demo_programme(ifus=ifus, compress=compress, header_only=header_only)


def run_one(n_ifus, shape, compress, header_only, keep=None) -> int:
    """Simulate one case in this process and print its figures."""
    from pymusepipe.simulate import simulate_programme
    ifus = tuple(range(1, n_ifus + 1))
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = simulate_programme(workdir / "root", _programme(shape, ifus, compress, header_only),
                                    overwrite=True)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # KiB -> GiB
        size = folder_size(result.root)
        frames = len({p.stat().st_ino for p in result.raw_files})
        print(f"{n_ifus:2d} IFU(s) {shape}{' compressed' if compress else ''}{' header-only' if header_only else ''}:"
              f" {frames} raw files, wall {wall:7.1f} s, CPU {cpu:7.1f} s ({cpu / frames / n_ifus:.2f} s per CCD),"
              f" peak RSS {peak_gb:.2f} GB, disk {size / 1e9:.2f} GB", flush=True)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="1,4", help="comma-separated numbers of IFUs (default 1,4)")
    parser.add_argument("--one", type=int, help="run a single case in this process")
    parser.add_argument("--shape", choices=("demo", "example"), default="demo",
                        help="demo: one night, one target (17 raw files); example: the two-night four-target "
                             "programme (~100 files)")
    parser.add_argument("--compress", action="store_true", help="write .fits.fz")
    parser.add_argument("--header-only", action="store_true", dest="header_only")
    parser.add_argument("--keep", help="write here and keep the data (with --one)")
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args.one, args.shape, args.compress, args.header_only, args.keep)
    status = 0
    for n in (int(c) for c in args.cases.split(",")):
        command = [sys.executable, __file__, "--one", str(n), "--shape", args.shape]
        command += ["--compress"] * args.compress + ["--header-only"] * args.header_only
        status |= subprocess.run(command).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
