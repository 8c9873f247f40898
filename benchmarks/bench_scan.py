"""Benchmark: scanning a raw folder of 1000 MUSE-like files with ~1200-card primary headers.

Prints files/s for a first scan (no header cache; the OS page cache is warm, as after a download) and a
rescan of the unchanged folder (header cache hit), and compares with astropy's ``getheader``.
Targets (issue 2): >= 500 files/s cold, >= 10,000 files/s on rescan.

Usage: python benchmarks/bench_scan.py [NFILES]
"""
import sys
import tempfile
import time
from pathlib import Path

from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rawframes import primary_header  # noqa: E402

from pymusepipe.rawdata import scan_raw  # noqa: E402

TYPES = [("CALIB", "BIAS"), ("CALIB", "FLAT,LAMP"), ("CALIB", "WAVE"), ("SCIENCE", "OBJECT"), ("CALIB", "STD")]


def main(nfiles=1000):
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "Raw"
        raw.mkdir()
        header_size = None
        for i in range(nfiles):
            catg, dpr_type = TYPES[i % len(TYPES)]
            header = primary_header(catg, dpr_type, mjd=60750.0 + i * 1e-3, nfiller=1150)
            # Header-only files: the scan never reads past the primary header, so data size is irrelevant.
            fits.PrimaryHDU(header=header).writeto(raw / f"MUSE.{i:05d}.fits")
            header_size = header_size or len(header)
        cache = Path(tmp) / "cache.json"
        start = time.perf_counter()
        cold = scan_raw(raw, cache_file=cache)
        t_cold = time.perf_counter() - start
        start = time.perf_counter()
        warm = scan_raw(raw, cache_file=cache)
        t_warm = time.perf_counter() - start
        files = sorted(raw.iterdir())[:200]
        start = time.perf_counter()
        for path in files:
            fits.getheader(path)
        t_astropy = (time.perf_counter() - start) / len(files)
    assert len(cold.table) == len(warm.table) == nfiles and warm.nread == 0
    print(f"{nfiles} files, {header_size} cards per primary header")
    print(f"first scan (no header cache): {t_cold:.2f} s = {nfiles / t_cold:,.0f} files/s (target >= 500)")
    print(f"rescan, unchanged folder:     {t_warm:.3f} s = {nfiles / t_warm:,.0f} files/s (target >= 10,000)")
    print(f"astropy getheader, for comparison: {1 / t_astropy:,.0f} files/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
