"""How muse_scipost's resampling changes a star's flux with its height in the field, noise-free.

The simulated MUSE has 12 slices per IFU over 2.5" (24 IFUs over 60"): a slice pitch of 0.2083", 1/24 more
than the 0.2" spaxels of the cube. Every 24 slices (two IFUs, 5") a slice centre falls on a row centre again.
In a full field reduced with ESO's defaults, the stars of every second IFU came out 2-3 % fainter than the
others (``docs/benchmarks.md``); this script measures the resampling alone, without the CCD level, sky or noise.

It writes one merged 24-IFU PIXTABLE_OBJECT of Gaussian stars with flat spectra (``simulate.pixtable``: the
GEOMETRY_TABLE's slice positions, 10 wavelengths, no sky, no noise), the stars stepping in height through a whole
5" period on five lines, runs the real muse_scipost once per pixfrac, and prints each star's flux against the
truth, by its distance from the nearest height where a slice centre and a spaxel row centre coincide:
aperture photometry (radius 1.2", 3.3 sigma) and the Gaussian fit of ``truthcheck.measure_point_sources``.

Usage: python benchmarks/bench_resampling_beat.py [--workdir DIR] [--pixfrac 0.8,1.0] [--fwhm 0.84]
"""
import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from pymusepipe.simulate import InstrumentModel, calibkit
from pymusepipe.simulate.pixtable import PointSource, write_pixtable_object
from pymusepipe.truthcheck import measure_point_sources

RA, DEC = 150.0, -30.0
FLUX = 1000.0
#: Heights [spaxel] near which a slice centre falls on a row centre of a full field's cube (measured below).
LINES = (-99.5, -49.5, 0.5, 50.5, 100.5)
STARS_PER_LINE = 13
APERTURE = 6          # pixels


def _stars(model):
    """Stars on five lines, 20 spaxels apart along each; their heights step through one 25-spaxel period."""
    count = len(LINES) * STARS_PER_LINE
    scale = model.spaxel_scale
    stars, heights = [], []
    for i in range(count):
        y = LINES[i % len(LINES)] - 12.5 + 25.0 * (i + 0.5) / count
        x = -120.0 + 20.0 * (i // len(LINES))
        east, north = -x * scale, y * scale              # focal x points west
        stars.append(PointSource(ra=RA + east / 3600.0 / np.cos(np.radians(DEC)), dec=DEC + north / 3600.0,
                                 flux=FLUX))
        heights.append(y)
    return stars, np.array(heights)


def _coincidences(image_path, model):
    """Heights [spaxel] of the slices whose centre falls on a row centre of the image (within half the 1/24-row
    step by which the two drift apart from one slice to the next)."""
    with fits.open(image_path) as hdul:
        wcs = WCS(hdul["DATA"].header).celestial
    geometry = model.geometry_columns()
    heights = np.unique(np.round(geometry["y"], 4))
    scale = model.spaxel_scale
    dec = DEC + heights * scale / 3600.0
    _, rows = wcs.world_to_pixel_values(np.full(heights.size, RA), dec)
    return heights[np.abs(rows - np.round(rows)) < 0.5 / 24]


def _scipost(workdir: Path, pixtable, calibrations, pixfrac):
    out = workdir / f"pixfrac_{pixfrac}"
    out.mkdir(parents=True, exist_ok=True)
    sof = out / "scipost.sof"
    sof.write_text(f"{pixtable} PIXTABLE_OBJECT\n" + "".join(f"{path} {tag}\n" for tag, path in calibrations.items()))
    completed = subprocess.run(["esorex", f"--output-dir={out}", f"--log-dir={out}", "--log-file=scipost.log",
                                "--no-checksum", "muse_scipost", "--skymethod=none", "--filter=white",
                                f"--pixfrac={pixfrac}", "--save=cube", str(sof)],
                               capture_output=True, text=True, cwd=out)
    if completed.returncode != 0:
        raise SystemExit(f"muse_scipost failed (pixfrac {pixfrac}):\n{completed.stdout[-3000:]}")
    return out / "IMAGE_FOV_0001.fits"


def _aperture(image_path, positions, true_flux):
    """Flux within :data:`APERTURE` pixels of each (ra, dec), over the true flux."""
    with fits.open(image_path) as hdul:
        data = np.nan_to_num(np.asarray(hdul["DATA"].data, float))
        wcs = WCS(hdul["DATA"].header).celestial
    yy, xx = np.mgrid[0:data.shape[0], 0:data.shape[1]]
    fluxes = []
    for ra, dec in positions:
        x, y = wcs.world_to_pixel_values(ra, dec)
        fluxes.append(data[np.hypot(xx - x, yy - y) <= APERTURE].sum() / true_flux)
    return np.array(fluxes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--pixfrac", default="0.8,1.0", help="comma-separated drizzle pixfrac values")
    parser.add_argument("--fwhm", type=float, default=0.84, help="seeing FWHM of the Gaussian stars [arcsec]")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="beat_"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = InstrumentModel(ifus=tuple(range(1, 25)))
    stars, heights = _stars(model)
    calibrations = {"ASTROMETRY_WCS": workdir / "astrometry_wcs.fits", "FILTER_LIST": workdir / "filter_list.fits"}
    calibkit.write_filter_list(calibrations["FILTER_LIST"])
    calibkit.write_astrometry_wcs(calibrations["ASTROMETRY_WCS"], model)
    pixtable = workdir / "PIXTABLE_OBJECT_beat.fits"
    write_pixtable_object(pixtable, stars, header_ra=RA, header_dec=DEC, true_ra=RA, true_dec=DEC,
                          mjd_obs=61000.1, fwhm=args.fwhm, sky=0.0, noise=1e-6, model=model)
    truth = {"point_sources": [{"ra": s.ra, "dec": s.dec, "flux": {"white": s.flux}} for s in stars]}
    print(f"{len(stars)} Gaussian stars of FWHM {args.fwhm}\", slice pitch {model.slice_pitch:.4f} spaxel, "
          f"aperture radius {APERTURE * model.spaxel_scale:.1f}\"; work in {workdir}")
    for pixfrac in (float(v) for v in args.pixfrac.split(",")):
        image = _scipost(workdir, pixtable, calibrations, pixfrac)
        coincide = _coincidences(image, model)
        distance = np.array([np.min(np.abs(coincide - y)) for y in heights])
        fitted = measure_point_sources(image, truth, "white", seeing_arcsec=args.fwhm)
        index = np.asarray(fitted["source"])
        distance, fit, fwhm = distance[index], np.asarray(fitted["flux_ratio"]), np.asarray(fitted["fwhm"])
        # centred where the star is measured: the aperture then misses no light to an astrometric offset
        aperture = _aperture(image, zip(fitted["ra"], fitted["dec"]), FLUX)
        offset = np.asarray(fitted["offset"])
        heights_text = ", ".join(f"{h:+.2f}" for h in coincide)
        print(f"\npixfrac {pixfrac}: slice and row centres coincide at heights {heights_text}")
        print(f"{'distance from there':<22}{'stars':>6}{'aperture / truth':>18}{'fit / truth':>13}{'fitted FWHM':>13}")
        for low in (0.0, 2.5, 5.0, 7.5, 10.0):
            pick = (distance >= low) & (distance < low + 2.5 + (0.01 if low == 10.0 else 0.0))
            print(f"{f'{low:.1f}-{low + 2.5:.1f} spaxel':<22}{pick.sum():>6}{np.median(aperture[pick]):>18.4f}"
                  f"{np.median(fit[pick]):>13.4f}{np.median(fwhm[pick]):>12.3f}\"")
        print(f"all {len(fitted)} stars: aperture {aperture.min():.4f}-{aperture.max():.4f}, fit {fit.min():.4f}-"
              f"{fit.max():.4f}, position error max {offset.max():.3f}\"")


if __name__ == "__main__":
    main()
