"""Accuracy and speed of pymusepipe.alignment on synthetic images with known offsets and flux scales.

Prints one table (and nothing is asserted): per kind of field, the offset errors (arcsec on the sky),
flux-scale errors, flag rate and time per 320x320 image, next to a plain phase cross-correlation
(scikit-image ``phase_cross_correlation``, upsample_factor=100, on the reference reprojected to the MUSE
grid with ``reproject_interp``).

Usage::

    python benchmarks/bench_alignment.py [--cases 20] [--seed 1]

Each case draws: a pointing error of 2-5" in a random direction, a transparency 0.7-1.1, a reference at
0.24-0.40"/pixel with a PSF FWHM of 0.6-1.2" (MUSE 0.6-1.0"), a reference background, and noise in both
images. PSFs are NOT given to the fit (``psf_matching='fit'``). Targets (issue 6): median offset error
<= 0.002", 95th percentile <= 0.01" and no failure where the data allow it (S/N >= 20 per pixel, or >= 5
stars), flux scale within 0.5 % (median), a flag and no exception on hopeless fields, <= 0.5 s per image.
"""
import argparse
import logging
import os
import tempfile
import time
import warnings

import numpy as np

from pymusepipe.alignment import fit_alignment, read_muse_image, read_reference, synthetic

RA, DEC = 150.0, -30.0
COS_DEC = np.cos(np.deg2rad(DEC))
#: kind -> (sky model, MUSE noise per pixel, expected to be measurable)
CASES = {
    "stars (40)": ("stars40", 0.5, True),
    "stars (5)": ("stars5", 0.5, True),
    "stars (5, 4x noise)": ("stars5", 2.0, True),
    "galaxy, S/N~200/px": ("galaxy", 0.5, True),
    "galaxy, S/N~20/px": ("galaxy", 5.0, True),
    "galaxy, S/N~5/px": ("galaxy", 20.0, False),
    "hopeless (S/N<0.1)": ("galaxy", 2000.0, False),
}
FAILURE_ARCSEC = 0.05  # an offset error beyond this is a failure (a quarter of a MUSE pixel)


def _sky(model, rng):
    if model == "stars40":
        return synthetic.star_field(RA, DEC, 40, radius=32, rng=rng)
    if model == "stars5":
        return synthetic.star_field(RA, DEC, 5, radius=25, flux_range=(1e3, 1e4), rng=rng)
    return synthetic.galaxy(RA, DEC, rng=rng)


def _phase_correlation_offset(muse, reference):
    """Offset (arcsec E, N; measured - true) from skimage's phase cross-correlation, for comparison."""
    from reproject import reproject_interp
    from skimage.registration import phase_cross_correlation

    reference_on_grid, _ = reproject_interp((reference.data, reference.wcs), muse.wcs, shape_out=muse.data.shape)
    valid = np.isfinite(muse.data) & np.isfinite(reference_on_grid)
    muse_filled = np.where(valid, muse.data, np.nanmedian(muse.data[valid]))
    reference_filled = np.where(valid, reference_on_grid, np.nanmedian(reference_on_grid[valid]))
    # shift (dy, dx) that registers the MUSE image onto the reference
    shift, _, _ = phase_cross_correlation(reference_filled, muse_filled, upsample_factor=100)
    dy, dx = shift
    # muse(p) = ref(p + shift): the source offset is -shift pixels, i.e. +shift_x * 0.2" East (x grows West)
    return (dx * 0.2, -dy * 0.2)


def _one_case(model, noise, rng, workdir):
    error_size = rng.uniform(2.0, 5.0)
    angle = rng.uniform(0, 2 * np.pi)
    pointing_error = (error_size * np.cos(angle), error_size * np.sin(angle))
    muse_fwhm, reference_fwhm = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.2)
    reference_scale = rng.uniform(0.24, 0.40)
    sky = _sky(model, rng)
    truth = synthetic.write_muse_image(os.path.join(workdir, "muse.fits"), sky, centre_ra=RA, centre_dec=DEC,
                                       pointing_error=pointing_error, transparency=rng.uniform(0.7, 1.1),
                                       fwhm=muse_fwhm, noise=noise, rng=rng)
    truth["background"] += synthetic.write_reference_image(
        os.path.join(workdir, "reference.fits"), sky, centre_ra=RA, centre_dec=DEC, pixel_scale=reference_scale,
        fwhm=reference_fwhm, background=rng.uniform(-2, 5), noise=0.05, rng=rng)
    muse = read_muse_image(os.path.join(workdir, "muse.fits"))
    reference = read_reference(os.path.join(workdir, "reference.fits"))
    signal = muse.data - 10.0  # write_muse_image adds a sky of 10 on top of the sources
    snr = float(np.nanpercentile(np.abs(signal), 95) / noise)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit_alignment(muse, reference)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    d_east = (result.ra_offset - truth["ra_offset"]) * 3600 * COS_DEC
    d_north = (result.dec_offset - truth["dec_offset"]) * 3600
    east, north = _phase_correlation_offset(muse, reference)
    pcc_error = np.hypot(east - pointing_error[0], north - pointing_error[1])
    sigma = np.hypot(result.ra_offset_err * 3600 * COS_DEC, result.dec_offset_err * 3600)
    return dict(error=float(np.hypot(d_east, d_north)), pull=float(np.hypot(d_east, d_north) / sigma),
                scale_error=result.flux_scale / truth["flux_scale"] - 1,
                quality=result.quality, wall=wall, cpu=cpu, pcc_error=float(pcc_error), snr=snr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20, help="realisations per kind of field")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(args.seed)
    header = (f"| field | n | S/N/px (p95) | offset err median \" | p95 \" | failures (>{FAILURE_ARCSEC}\") | "
              "flagged | scale err median | scale err p95 | err/sigma median | phase-corr median \" | "
              "phase-corr p95 \" | "
              "s/image (wall, cpu) |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    exceptions = 0
    with tempfile.TemporaryDirectory() as workdir:
        for label, (model, noise, measurable) in CASES.items():
            rows = []
            for _ in range(args.cases):
                try:
                    rows.append(_one_case(model, noise, rng, workdir))
                except Exception as exc:  # noqa: BLE001 - the benchmark counts them: the target is zero
                    exceptions += 1
                    print(f"EXCEPTION in {label}: {exc!r}")
            errors = np.array([row["error"] for row in rows])
            flagged = np.array([row["quality"] != 0 for row in rows])
            good = ~flagged
            scale = np.abs([row["scale_error"] for row in rows])
            pcc = np.array([row["pcc_error"] for row in rows])
            # where the data allow it, a flag is a failure too; elsewhere only an unflagged wrong answer is
            failures = int(np.sum((errors > FAILURE_ARCSEC) & good)) + (int(flagged.sum()) if measurable else 0)
            print(f"| {label} | {len(rows)} | {np.median([r['snr'] for r in rows]):.1f} | "
                  f"{np.median(errors[good]) if good.any() else np.nan:.4f} | "
                  f"{np.percentile(errors[good], 95) if good.any() else np.nan:.4f} | {failures} | "
                  f"{flagged.sum()}/{len(rows)} | "
                  f"{np.median(scale[good]) if good.any() else np.nan:.4f} | "
                  f"{np.percentile(scale[good], 95) if good.any() else np.nan:.4f} | "
                  f"{np.median(np.array([row['pull'] for row in rows])[good]) if good.any() else np.nan:.2f} | "
                  f"{np.median(pcc):.4f} | {np.percentile(pcc, 95):.4f} | "
                  f"{np.median([r['wall'] for r in rows]):.2f}, {np.median([r['cpu'] for r in rows]):.2f} |")
    print(f"\nexceptions: {exceptions}; offset errors are on the sky (RA x cos dec), over unflagged fits; "
          "failures = unflagged fits off by more than the threshold, plus flagged fits on measurable fields; "
          "phase-corr over all cases; err/sigma is |offset error| / hypot(sigma_RA, sigma_DEC), 0.83 for "
          "calibrated Gaussian errors.")


if __name__ == "__main__":
    main()
