"""Benchmark: a full 24-IFU field through the whole chain, in ESO's merged mode and fanned out per IFU.

Simulates one night (calibrations, standard star) and one pointing of two OBJECT exposures with no offset sky
(the sky is measured on the field), every IFU, raw files tile-compressed as the archive delivers them. Then,
for each IFU mode, reduces it with ``run_all_recipes`` and prints, per recipe: jobs, the sum of their wall
times, their CPU time (user + system of esorex and its children), the largest peak RSS measured, the memory
model's prediction for that job (``pymusepipe.memory``), and the disk each step wrote. The final cube is
measured against the truth (star positions and fluxes, the latter against the truth times the transparency).
The products of a mode are deleted before the next (a full pointing writes tens of GB).

Usage: python benchmarks/bench_full_field.py [--workdir DIR] [--modes merged,fanout] [--ifus 1-24] [--keep]
       [--last STEP] [--resume] [--clean-early] [--memory-gb GB] [--psf-beta BETA] [--first-exposure-only]
"""
import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from astropy.table import Table

from data_root import link_copy
from pymusepipe.esorex import available_cpus
from pymusepipe.memory import memory_need


def _ifus(text):
    ifus = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        ifus.extend(range(int(low), int(high or low) + 1))
    return tuple(ifus)


def _jobs(root: Path):
    rows = []
    for path in root.rglob("Astro_Tables/*_jobs.fits"):
        if path.name.startswith("python"):
            continue
        for row in Table.read(path):
            rows.append(row)
    return rows


def _ifu_count(pipe, row):
    """IFUs a job's model counts: its own, or for a reader of merged products (muse_exp_combine reading
    PIXTABLE_REDUCED) those of the jobs that made its inputs, counted by the engine as it counts them."""
    own = [ifu for ifu in str(row["ifus"]).split(",") if ifu.strip()]
    return len(own) or pipe.engine.ifus_held(json.loads(str(row["inputs"])))


def _disk_by_step(root: Path):
    out = defaultdict(int)
    for path in root.rglob("Astro_Tables/*_products.fits"):
        table = Table.read(path)
        for row in table:
            if str(row["status"]) == "done" and int(row["size"]) > 0:
                out[str(row["step"])] += int(row["size"])
    return out


def _report(pipe, root: Path, mode: str, wall: float):
    print(f"\n== {mode} mode: chain wall time {wall:.0f} s")
    print(f"{'recipe':<18}{'jobs':>5}{'wall s':>9}{'CPU s':>9}{'peak RSS GB':>13}{'model GB':>10}")
    by_recipe = defaultdict(list)
    jobs = _jobs(root)
    for row in jobs:
        if str(row["status"]) == "done":
            by_recipe[str(row["recipe"])].append(row)
    total_cpu = 0.0
    for recipe, rows in sorted(by_recipe.items()):
        wall_sum = sum(float(r["duration"]) for r in rows)
        cpu = sum(max(float(r["cpu_seconds"]), 0.0) for r in rows)
        total_cpu += cpu
        peak = max(rows, key=lambda r: float(r["max_rss_mb"]))
        params = json.loads(str(peak["parameters"]))
        ifus = _ifu_count(pipe, peak)
        merged = params.get("nifu") == -1
        exposures = max(1, len({p.split("_")[-1] for p in json.loads(str(peak["inputs"]))})) \
            if recipe in ("muse_exp_combine",) else 1
        model = memory_need(recipe, ifus=ifus, exposures=exposures, threads=int(peak["threads"]) or 1,
                            merged=merged, parameters=params)
        print(f"{recipe:<18}{len(rows):>5}{wall_sum:>9.0f}{cpu:>9.0f}{float(peak['max_rss_mb']) / 1024:>13.2f}"
              f"{model:>10.2f}")
    print(f"esorex CPU {total_cpu:.0f} s over {wall:.0f} s wall on {len(available_cpus())} cores "
          f"({100 * total_cpu / max(wall, 1):.0f} % busy)")
    print(f"{'step':<18}{'disk written GB':>16}")
    for step, size in sorted(_disk_by_step(root).items()):
        print(f"{step:<18}{size / 1e9:>16.2f}")


def _star_line(label, stars, transparency=1.0):
    offsets = np.asarray(stars["offset"])
    ratios = np.asarray(stars["flux_ratio"]) / transparency
    line = (f"{label}: {len(stars)} stars, position error median {np.median(offsets):.3f}\" max "
            f"{offsets.max():.3f}\"; flux / (truth x transparency) median {np.median(ratios):.3f} "
            f"({ratios.min():.3f}-{ratios.max():.3f})")
    inside = np.asarray(stars["edge_distance"]) >= 1.0      # a star nearer an edge has its profile cut
    if not inside.any():
        return line + "; no star at least 1\" from an edge"
    low, high = np.percentile(ratios[inside], [5, 95])
    return (f"{line}; the {inside.sum()} stars at least 1\" from an edge: median {np.median(ratios[inside]):.3f}, "
            f"5-95 % {low:.3f}-{high:.3f}, {np.mean(np.abs(ratios[inside] - 1) <= 0.03) * 100:.0f} % within 3 %, "
            f"position error max {offsets[inside].max():.3f}\"")


def _check_exposures(pipe, truth, step="scipost"):
    """Each exposure's image from ``step`` against the truth (its own seeing and transparency)."""
    from astropy.io import fits

    from pymusepipe.demo import DEMO_FILTER
    from pymusepipe.truthcheck import measure_point_sources

    by_date = {entry["date_obs"][:19]: entry for entry in truth["exposures"] if entry["kind"] == "OBJECT"}
    for record in sorted(pipe.engine.catalogue.select(tag="IMAGE_FOV", step=step), key=lambda r: r.path):
        if DEMO_FILTER not in Path(record.path).name:
            continue
        entry = by_date.get(str(fits.getheader(record.path, 0).get("DATE-OBS", ""))[:19])
        if entry is None:
            continue
        stars = measure_point_sources(record.path, truth, DEMO_FILTER, seeing_arcsec=entry["psf_fwhm_arcsec"],
                                      transparency=entry["transparency"], psf_beta=entry.get("psf_beta"))
        if len(stars):
            print(_star_line(f"{step} image {Path(record.path).name} vs truth", stars), flush=True)


def _clean(pipe, records, reason):
    count, size = pipe.engine.clean(records, reason=reason)
    print(f"cleaned {count} file(s), {size / 1e9:.1f} GB: {reason}", flush=True)


def _run_in_phases(pipe, combine_memory_gb=None):
    """The chain in four phases, deleting what nothing will read again between them (disk-bound machines)."""
    phases = (("standard", lambda: _clean(pipe, pipe.engine.catalogue.select(tag="PIXTABLE_STD"),
                                          "the standard star's pixel tables, read only by muse_standard")),
              ("align_bygroup", lambda: _clean(pipe, pipe.engine.catalogue.select(step="prep_align"),
                                               "the pre-alignment cubes, read only by the alignment")),
              ("scipost_sky", None),
              (None, None))
    for last, after in phases:
        if last is None and combine_memory_gb:
            pipe.engine.executor.memory_gb = float(combine_memory_gb)
        start = time.monotonic()
        pipe.run_all_recipes(last=last, report=last is None)
        print(f"phase up to {last or 'the end'}: {time.monotonic() - start:.0f} s", flush=True)
        if after is not None:
            after()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir")
    parser.add_argument("--modes", default="merged,fanout")
    parser.add_argument("--ifus", default="1-24")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--memory-gb", type=float,
                        help="memory budget of the chain (default: 80%% of the machine's available memory)")
    parser.add_argument("--combine-memory-gb", type=float,
                        help="budget for the last phase (muse_exp_combine), run alone: lets it be tried beyond "
                             "the model's limit to measure it")
    parser.add_argument("--clean-early", action="store_true",
                        help="run in four phases and delete intermediates as soon as nothing reads them: the "
                             "standard star's pixel tables after muse_standard, the pre-alignment cubes after "
                             "the alignment (a full pointing otherwise needs about 55 GB)")
    parser.add_argument("--psf-beta", type=float, default=2.8,
                        help="Moffat index of the simulated seeing (0: Gaussian, as the runs before this option); "
                             "a WORKDIR simulated before keeps its own")
    parser.add_argument("--last", metavar="STEP",
                        help="stop after this step: 'scibasic_all' runs the per-IFU recipes only, the part of the "
                             "chain in which merged and fan-out differ (what follows reads the same 24 pixel tables "
                             "per exposure in both modes)")
    parser.add_argument("--first-exposure-only", action="store_true",
                        help="reduce the first OBJECT exposure alone (the second excluded): the standard star, the "
                             "sky and the exposure's final muse_scipost, no alignment nor combination (a full field's "
                             "two exposures take about 2.5 hours more here, and their combination does not fit in "
                             "23 GiB)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the reductions already in WORKDIR (up-to-date jobs are not run again)")
    args = parser.parse_args(argv)
    from pymusepipe.demo import DEMO_FILTER, compare_with_truth
    from pymusepipe.musepipe import MusePipe
    from pymusepipe.simulate import simulate_programme, survey_programme

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_full_field_")).absolute()
    source = workdir / "simulated"
    ifus = _ifus(args.ifus)
    start = time.monotonic()
    if not (source / "Config" / "rc.dic").is_file():
        programme = survey_programme(nights=1, obs_per_night=1, exposures=2, offset_sky=False, ifus=ifus,
                                     compress=True)
        simulate_programme(source, dataclasses.replace(programme, psf_beta=args.psf_beta or None), overwrite=True)
    psf = json.loads((source / "programme.json").read_text()).get("psf_beta")
    print(f"simulation of {len(ifus)} IFU(s), {f'Moffat beta={psf}' if psf else 'Gaussian'} seeing: "
          f"{time.monotonic() - start:.0f} s, "
          f"{sum(f.stat().st_size for f in source.rglob('*.fits*')) / 1e9:.1f} GB in {source}", flush=True)
    for mode in args.modes.split(","):
        root = workdir / mode
        rc, cal = root / "Config" / "rc.dic", root / "Config" / "calib_tables.dic"
        if not (args.resume and rc.is_file()):
            shutil.rmtree(root, ignore_errors=True)
            link_copy(source, root)
        truth = json.loads((root / "SIMGAL" / "truth.json").read_text())
        objects = sorted(e["date_obs"][:19] for e in truth["exposures"] if e["kind"] == "OBJECT")
        pipe = MusePipe("SIMGAL", 1, rc, cal, logfile="bench.log", reset_log=not args.resume, ifu_mode=mode,
                        filter_list=f"white,{DEMO_FILTER}", filter_for_alignment=DEMO_FILTER,
                        memory_gb=args.memory_gb, exclude=objects[1:] if args.first_exposure_only else None)
        print(f"{mode}: memory budget {pipe.engine.memory_budget():.1f} GB", flush=True)
        start = time.monotonic()
        failure = None
        try:
            if args.first_exposure_only:
                pipe.run_all_recipes(last=args.last or "sky", report=False)
                if not args.last:
                    pipe.run_scipost(offset_list=False)
            elif args.last:
                pipe.run_all_recipes(last=args.last, report=False)
            elif args.clean_early:
                _run_in_phases(pipe, args.combine_memory_gb)
            else:
                pipe.run_all_recipes()
        except Exception as error:  # noqa: BLE001 - report what ran, then the failure
            failure = error
        wall = time.monotonic() - start
        _report(pipe, root, mode, wall)
        print(pipe.status())
        if failure is not None:
            print(f"{mode}: the chain failed: {failure}")
        elif not args.last and not args.first_exposure_only:
            result = compare_with_truth(pipe, truth)
            stars = result["stars"]
            if len(stars):
                print(_star_line("final cube vs truth", stars, result["transparency"]), flush=True)
        # Every exposure's own cube too: it is all there is when the combination does not fit in memory.
        if not args.last:
            _check_exposures(pipe, truth)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
