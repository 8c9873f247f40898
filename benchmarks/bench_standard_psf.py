"""The full field's standard star drawn with another seeing profile, reduced with the masters of an earlier
``bench_full_field.py`` run, against the simulator's true throughput.

muse_standard integrates the star with a (smoothed) Moffat profile by default. This script draws the same
standard-star exposure (same programme, seed and noise) with the seeing profile asked for, runs muse_scibasic
(merged, 24 IFUs) and muse_standard (ESO's defaults) with the SOF files the earlier run recorded, the raw file
and the pixel tables replaced, and prints the response's change against the earlier run's, what it predicts for
the calibrated fluxes, and the measured throughput against the simulator's (``spectra.throughput``).

``--science N`` then reduces the earlier run's OBJECT exposure N again with the new response: muse_scibasic and
the final muse_scipost (``--skymethod=subtract-model``, the sky muse_create_sky measured, the earlier run's
OFFSET_LIST) from the recorded SOF files, and measures its stars in Cousins R against the truth times the
exposure's transparency.

Usage: python benchmarks/bench_standard_psf.py --run /work/bench_ff/work/merged --psf-beta 2.8 --out DIR
       [--science 1]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from pymusepipe.simulate import simulate_programme, spectra
from pymusepipe.simulate.programme import Programme
from pymusepipe.stdcorrection import aperture_ratio

BANDS = ((5000, 5500), (6000, 6500), (7000, 7500), (8500, 9000))


def _esorex(out: Path, recipe, sof_lines, *params):
    out.mkdir(parents=True, exist_ok=True)
    sof = out / f"{recipe}.sof"
    sof.write_text("".join(sof_lines))
    command = ["/usr/bin/time", "-v", "esorex", f"--output-dir={out}", f"--log-dir={out}",
               f"--log-file={recipe}.log", "--no-checksum", recipe, *params, str(sof)]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    rusage = {line.split(":")[0].strip(): line.rsplit(":", 1)[1].strip() for line in result.stderr.splitlines()
              if "Maximum resident" in line}
    print(f"{recipe}: exit {result.returncode}, {time.monotonic() - start:.0f} s, peak "
          f"{int(rusage.get('Maximum resident set size (kbytes)', 0)) / 1e6:.2f} GB", flush=True)
    if result.returncode != 0:
        sys.exit(f"{recipe} failed:\n{result.stdout[-3000:]}")


def _cousins_r(wavelength):
    centre, fwhm, order = spectra.FILTERS["Cousins_R"]
    return np.exp(-np.log(2.0) * np.abs(2.0 * (wavelength - centre) / fwhm) ** (2 * order))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="the merged-mode folder of a bench_full_field.py run")
    parser.add_argument("--psf-beta", type=float, default=2.8, help="Moffat index (0: Gaussian)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--science", type=int, metavar="N",
                        help="also reduce OBJECT exposure N again with the new response and measure its stars")
    args = parser.parse_args(argv)
    run, out = Path(args.run), Path(args.out).absolute()
    night = next((run / "Calibrations").glob("20*"))
    std_sof = next((night / "Sof").glob("muse_standard_*.sof"))
    sci_sof = night / "Sof" / std_sof.name.replace("muse_standard_", "muse_scibasic_")
    old = {tag: next((night / "Master" / "Std").glob(f"{tag}_*.fits")) for tag in
           ("STD_RESPONSE", "STD_FLUXES", "DATACUBE_STD")}
    data = out / "data"
    if not data.exists():
        programme = json.loads((run / "programme.json").read_text())
        programme["psf_beta"] = args.psf_beta or None
        start = time.monotonic()
        simulate_programme(data, Programme.from_dict(programme), only=("STD",))
        print(f"standard simulated in {time.monotonic() - start:.0f} s", flush=True)
    new = {tag: out / "muse_standard" / f"{tag}_0001.fits" for tag in old}
    if not all(path.is_file() for path in new.values()):       # else measured already: compare only
        lines = sci_sof.read_text().splitlines(keepends=True)
        old_raw = next(Path(line.split()[0]).name for line in lines if line.rstrip().endswith(" STD"))
        (raw,) = data.rglob(old_raw)
        lines = [f"{raw} STD\n" if line.rstrip().endswith(" STD") else line for line in lines]
        if not list((out / "muse_scibasic").glob("PIXTABLE_STD_0001-*.fits")):
            _esorex(out / "muse_scibasic", "muse_scibasic", lines, "--nifu=-1", "--merge=true",
                    "--saveimage=false")
        pixtables = sorted((out / "muse_scibasic").glob("PIXTABLE_STD_0001-*.fits"))
        lines = [line for line in std_sof.read_text().splitlines(keepends=True)
                 if not line.rstrip().endswith(" PIXTABLE_STD")] + [f"{path} PIXTABLE_STD\n" for path in pixtables]
        _esorex(out / "muse_standard", "muse_standard", lines, "--filter=white")
        for path in pixtables:
            path.unlink()                            # 9 GB: nothing reads them again

    before, after = fits.getdata(old["STD_RESPONSE"], 1), fits.getdata(new["STD_RESPONSE"], 1)
    wavelength = before["lambda"]
    delta = np.interp(wavelength, after["lambda"], after["response"]) - before["response"]   # [mag]
    scale = np.average(10 ** (-0.4 * delta), weights=_cousins_r(wavelength))
    print(f"response change: calibrated fluxes x {scale:.4f} (Cousins R); per band: "
          + ", ".join(f"{low}-{high} A x {np.mean(10 ** (-0.4 * delta[(wavelength >= low) & (wavelength < high)])):.4f}"
                      for low, high in BANDS))
    for name, files in (("earlier run", old), (f"psf_beta={args.psf_beta or 'Gaussian'}", new)):
        table = fits.getdata(files["STD_RESPONSE"], 1)
        ratios = [np.median(table["throughput"][(table["lambda"] >= low) & (table["lambda"] < high)]
                            / spectra.throughput(table["lambda"][(table["lambda"] >= low) & (table["lambda"] < high)]))
                  for low, high in BANDS]
        wave, ratio = aperture_ratio(files["DATACUBE_STD"], files["STD_FLUXES"], radius_arcsec=4.0)
        good = np.isfinite(ratio)
        print(f"{name}: throughput / true throughput " + ", ".join(f"{r:.3f}" for r in ratios)
              + f" ({', '.join(f'{low}-{high}' for low, high in BANDS)} A); star within 4\" of DATACUBE_STD / "
              f"STD_FLUXES {np.average(ratio[good], weights=_cousins_r(wave[good])):.4f}")

    if args.science:
        _science(run, out, args.science, new)


def _replace(lines, tag, paths):
    """SOF ``lines`` with the entries of ``tag`` replaced by ``paths``."""
    return [line for line in lines if not line.rstrip().endswith(f" {tag}")] + [f"{path} {tag}\n" for path in paths]


def _science(run: Path, out: Path, number: int, new: dict):
    from pymusepipe.truthcheck import measure_point_sources

    pointing = run / "SIMGAL" / "P01"
    (scipost_sof,) = [path for path in (pointing / "Sof").glob(f"muse_scipost_*_{number:04d}.sof")]
    scibasic_sof = pointing / "Sof" / scipost_sof.name.replace("muse_scipost_", "muse_scibasic_")
    work = out / f"science_{number:04d}"
    image = work / "muse_scipost" / "IMAGE_FOV_0001.fits"
    if not image.is_file():
        if not list((work / "muse_scibasic").glob("PIXTABLE_OBJECT_0001-*.fits")):
            _esorex(work / "muse_scibasic", "muse_scibasic", scibasic_sof.read_text().splitlines(keepends=True),
                    "--nifu=-1", "--merge=true", "--saveimage=false")
        pixtables = sorted((work / "muse_scibasic").glob("PIXTABLE_OBJECT_0001-*.fits"))
        lines = _replace(scipost_sof.read_text().splitlines(keepends=True), "PIXTABLE_OBJECT", pixtables)
        lines = _replace(_replace(lines, "STD_RESPONSE", [new["STD_RESPONSE"]]), "STD_TELLURIC",
                         [new["STD_RESPONSE"].with_name("STD_TELLURIC_0001.fits")])
        _esorex(work / "muse_scipost", "muse_scipost", lines, "--save=cube", "--filter=Cousins_R",
                "--skymethod=subtract-model")
        for path in pixtables:
            path.unlink()
    truth = json.loads((run / "SIMGAL" / "truth.json").read_text())
    date_obs = fits.getheader(image, 0)["DATE-OBS"][:19]
    (entry,) = [e for e in truth["exposures"] if e["kind"] == "OBJECT" and e["date_obs"][:19] == date_obs]
    stars = measure_point_sources(image, truth, "Cousins_R", seeing_arcsec=entry["psf_fwhm_arcsec"],
                                  transparency=entry["transparency"], psf_beta=entry.get("psf_beta"))
    ratios, offsets = np.asarray(stars["flux_ratio"]), np.asarray(stars["offset"])
    inside = np.asarray(stars["edge_distance"]) >= 1.0
    low, high = np.percentile(ratios[inside], [5, 95])
    print(f"exposure {number} with the new response: {len(stars)} stars, position error median "
          f"{np.median(offsets):.3f}\" max {offsets.max():.3f}\"; flux / (truth x transparency) median "
          f"{np.median(ratios):.3f}, {np.median(ratios[inside]):.3f} over the {inside.sum()} stars at least 1\" "
          f"from the edges (5-95 %: {low:.3f}-{high:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
