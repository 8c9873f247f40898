"""Dev check: reduce a simulated run with the real recipes and compare with its truth.

Runs (one IFU, esorex called directly): bias -> flat -> wavecal -> scibasic (STD, OBJECTs, SKY) ->
standard -> [create_sky, needs lsf] -> scipost (per exposure, images through filters) -> exp_align,
then prints:

* CCD level: trace, wavelength and bias residuals against the truth;
* exp_align offsets minus the injected pointing errors [arcsec];
* positions of isolated stars in each IMAGE_FOV, corrected by the OFFSET_LIST, minus the truth [arcsec];
* star fluxes (Gaussian fit) over truth x transparency, per filter.

Usage::

    python benchmarks/check_science_chain.py WORKDIR [--data EXISTING_RUN] [--sky] [--keep]

Prints figures only (no asserts). Takes ~5 min on 2 cores (~8 with --sky); needs ~4 GB in WORKDIR.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.optimize import curve_fit

from pymusepipe import stdcorrection
from pymusepipe.simulate import simulate_run, verify

FILTERS = ("Johnson_V", "Cousins_R", "Cousins_I")


def esorex(recipe, workdir, name, sof_lines, *params):
    """Run one recipe in WORKDIR/name; return the output folder (raise on failure)."""
    out = Path(workdir) / name
    out.mkdir(parents=True, exist_ok=True)
    sof = out / "input.sof"
    sof.write_text("".join(f"{path} {tag}\n" for path, tag in sof_lines))
    cmd = ["esorex", f"--log-dir={out}", "--log-file=esorex.log", f"--output-dir={out}", recipe, *params,
           str(sof)]
    start = time.time()
    result = subprocess.run(cmd, capture_output=True, text=True)
    (out / "esorex.out").write_text(result.stdout + result.stderr)
    print(f"  {recipe:15s} {name:18s} rc={result.returncode} {time.time() - start:6.1f} s", flush=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-2000:])
        raise SystemExit(f"{recipe} failed, see {out}/esorex.log")
    return out


def gaussian2d(coords, amplitude, x0, y0, sigma, background):
    x, y = coords
    return amplitude * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2)) + background


def fit_star(image, x_guess, y_guess, box=7):
    """Gaussian fit around (x_guess, y_guess) (0-based pixels); returns (x, y, flux) or None."""
    ny, nx = image.shape
    x0, y0 = int(round(x_guess)), int(round(y_guess))
    xs = slice(max(x0 - box, 0), min(x0 + box + 1, nx))
    ys = slice(max(y0 - box, 0), min(y0 + box + 1, ny))
    cut = image[ys, xs]
    yy, xx = np.mgrid[ys, xs]
    good = np.isfinite(cut)
    if good.sum() < 30:
        return None
    guess = (np.nanmax(cut) - np.nanmedian(cut), x_guess, y_guess, 1.8, np.nanmedian(cut))
    try:
        popt, _ = curve_fit(gaussian2d, (xx[good], yy[good]), cut[good], p0=guess, maxfev=5000)
    except RuntimeError:
        return None
    amplitude, xf, yf, sigma, _ = popt
    return xf, yf, 2 * np.pi * sigma ** 2 * amplitude


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir")
    parser.add_argument("--data", help="existing simulate_run output to reuse")
    parser.add_argument("--sky", action="store_true", help="also run lsf + create_sky and subtract the sky")
    parser.add_argument("--keep", action="store_true", help="keep the large intermediate products")
    parser.add_argument("--no-aperture-correction", dest="aperture_correction", action="store_false",
                        help="use muse_standard's STD_RESPONSE as is (fluxes come out ~12x too high on 1 IFU)")
    args = parser.parse_args(argv)
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    if args.data:
        data = Path(args.data)
        truth = json.loads(next(data.glob("*/truth.json")).read_text())
    else:
        start = time.time()
        run = simulate_run(work / "data", overwrite=True)
        print(f"simulate_run: {time.time() - start:.1f} s")
        data, truth = run.root, run.truth
    calib = data / "calib" / "musecalib"
    frames = {}
    for exposure in truth["exposures"]:
        frames.setdefault(exposure["kind"], []).append((data / exposure["file"], exposure))

    def kit(name):
        return calib / name

    ifus = truth["ifus"]
    geo = (kit("geometry_table_wfm.fits"), "GEOMETRY_TABLE")
    det = truth["instrument"]["detector"]
    pixtables = {}
    for ifu in ifus:
        nifu = f"--nifu={ifu}"
        bias = esorex("muse_bias", work, f"bias{ifu:02d}", [(p, "BIAS") for p, _ in frames["BIAS"]], nifu)
        mb = (bias / f"MASTER_BIAS-{ifu:02d}.fits", "MASTER_BIAS")
        flat = esorex("muse_flat", work, f"flat{ifu:02d}", [(p, "FLAT") for p, _ in frames["FLAT"]] + [mb], nifu)
        mf = (flat / f"MASTER_FLAT-{ifu:02d}.fits", "MASTER_FLAT")
        tt = (flat / f"TRACE_TABLE-{ifu:02d}.fits", "TRACE_TABLE")
        wave = esorex("muse_wavecal", work, f"wavecal{ifu:02d}", [(p, "ARC") for p, _ in frames["ARC"]]
                      + [mb, tt, (kit("line_catalog.fits"), "LINE_CATALOG")], nifu)
        wt = (wave / f"WAVECAL_TABLE-{ifu:02d}.fits", "WAVECAL_TABLE")
        qc = verify.bias_qc(mb[0])
        print(f"IFU {ifu}: bias level rel. error {np.round(qc['level'] / np.array(det['bias_level_adu']) - 1, 5)}, "
              f"RON rel. error {np.round(qc['ron'] / np.array(det['read_noise_e']) - 1, 4)}")
        tr = verify.trace_residuals(tt[0], truth, ifu)
        print(f"IFU {ifu}: trace {tr['nslices']} slices, max |centre - truth| {tr['centre'].max():.4f} px, "
              f"edges {max(tr['left'].max(), tr['right'].max()):.4f} px")
        wr = verify.wavecal_residuals(wt[0], truth, ifu)
        print(f"IFU {ifu}: wavecal rms {wr['rms']:.4f} A, max {wr['max']:.4f} A")
        basic_calibs = [mb, mf, tt, wt, geo, (frames["ILLUM"][0][0], "ILLUM")]
        for kind, tag in (("STD", "STD"), ("OBJECT", "OBJECT"), ("SKY", "SKY")):
            for number, (path, exposure) in enumerate(frames[kind], start=1):
                out = esorex("muse_scibasic", work, f"scibasic_{kind}{number}_{ifu:02d}",
                             [(path, tag)] + basic_calibs, nifu, "--saveimage=false")
                pixtables.setdefault((kind, number), ([], exposure))[0].append(
                    next(out.glob(f"PIXTABLE_{tag}_0001-{ifu:02d}.fits")))
        if not (args.keep or args.sky):
            mf[0].unlink()        # 200 MB each; not needed after scibasic
        lsf_inputs = [(p, "ARC") for p, _ in frames["ARC"]] + [mb, mf, tt, wt]

    std = esorex("muse_standard", work, "standard",
                 [(p, "PIXTABLE_STD") for p in pixtables[("STD", 1)][0]] + [ (kit("extinct_table.fits"), "EXTINCT_TABLE"),
                  (kit("std_flux_table.fits"), "STD_FLUX_TABLE"), (kit("filter_list.fits"), "FILTER_LIST")],
                 # one IFU: the Moffat fit window does not fit in the 13-px strip (rc 255, "No valid data")
                 "--profile=circle")
    response = (std / "STD_RESPONSE_0001.fits", "STD_RESPONSE")
    wavelength, ratio = stdcorrection.aperture_ratio(std / "DATACUBE_STD_0001.fits", std / "STD_FLUXES_0001.fits")
    print(f"muse_standard extracted 1/{np.nanmedian(ratio):.3f} of the standard star's flux "
          f"(16-84%: {np.nanpercentile(ratio, 16):.3f}-{np.nanpercentile(ratio, 84):.3f})")
    if args.aperture_correction:
        corrected = std / "STD_RESPONSE_corrected.fits"
        mag = stdcorrection.correct_response(response[0], std / "DATACUBE_STD_0001.fits",
                                             std / "STD_FLUXES_0001.fits", corrected)
        print(f"using STD_RESPONSE corrected by {mag:+.3f} mag (total flux of the standard in 2\")")
        response = (corrected, "STD_RESPONSE")
    telluric = (std / "STD_TELLURIC_0001.fits", "STD_TELLURIC")
    post_calibs = [response, telluric, (kit("extinct_table.fits"), "EXTINCT_TABLE"),
                   (kit("astrometry_wcs_wfm.fits"), "ASTROMETRY_WCS"), (kit("filter_list.fits"), "FILTER_LIST")]
    sky_params = ["--skymethod=none"]
    if args.sky:
        if len(ifus) > 1:
            raise SystemExit("--sky is implemented for one IFU")
        lsf = esorex("muse_lsf", work, "lsf", lsf_inputs + [(kit("line_catalog.fits"), "LINE_CATALOG")],
                     f"--nifu={ifus[0]}")
        lsf_profile = (lsf / f"LSF_PROFILE-{ifus[0]:02d}.fits", "LSF_PROFILE")
        sky = esorex("muse_create_sky", work, "create_sky",
                     [(pixtables[("SKY", 1)][0][0], "PIXTABLE_SKY"), response, telluric,
                      (kit("extinct_table.fits"), "EXTINCT_TABLE"), (kit("sky_lines.fits"), "SKY_LINES"),
                      lsf_profile])
        post_calibs += [lsf_profile, (sky / "SKY_LINES.fits", "SKY_LINES"),
                        (sky / "SKY_CONTINUUM.fits", "SKY_CONTINUUM")]
        sky_params = ["--skymethod=model"]

    images = {}
    for number in range(1, len(frames["OBJECT"]) + 1):
        tables, exposure = pixtables[("OBJECT", number)]
        out = esorex("muse_scipost", work, f"scipost{number}", [(p, "PIXTABLE_OBJECT") for p in tables]
                     + post_calibs,
                     *sky_params, f"--filter={','.join(FILTERS)}", "--save=cube,individual")
        images[number] = ({name: out / f"IMAGE_FOV_{i:04d}.fits" for i, name in enumerate(FILTERS, 1)},
                          exposure)

    align_sof = [(images[n][0]["Johnson_V"], "IMAGE_FOV") for n in sorted(images)]
    for label, params in (("default", []),
                          ("narrow", ["--srcmin=1", "--bpixdistance=2", "--fwhm=4", "--rsearch=5,2,1,0.5",
                                      "--nbins=20"])):
        out = esorex("muse_exp_align", work, f"exp_align_{label}", align_sof, *params)
        offsets = fits.getdata(out / "OFFSET_LIST.fits", 1)
        header = fits.getheader(out / "OFFSET_LIST.fits", 0)
        print(f"exp_align ({label}): NMATCH MIN {header.get('ESO QC EXPALIGN NMATCH MIN')}, "
              f"NOMATCH {header.get('ESO QC EXPALIGN NOMATCH')}")
        reference = images[1][1]["pointing_error_deg"]
        for row, n in zip(offsets, sorted(images)):
            err = images[n][1]["pointing_error_deg"]
            d_ra = (row["RA_OFFSET"] - (err["ra"] - reference["ra"])) * 3600 * np.cos(
                np.radians(truth["field_centre"]["dec"]))
            d_dec = (row["DEC_OFFSET"] - (err["dec"] - reference["dec"])) * 3600
            print(f"  exposure {n}: offset - truth = ({d_ra:+.3f}\", {d_dec:+.3f}\") "
                  f"[injected error {images[n][1]['pointing_error_arcsec']}]")
        if label == "narrow":
            offset_rows = {row["DATE_OBS"]: row for row in offsets}

    # positions and fluxes of isolated stars, corrected by the exp_align offsets
    stars = truth["point_sources"]
    ra_all = np.array([s["ra"] for s in stars])
    dec_all = np.array([s["dec"] for s in stars])
    for n in sorted(images):
        exposure = images[n][1]
        row = offset_rows[exposure["date_obs"]]
        for name, path in images[n][0].items():
            with fits.open(path) as hdul:
                data = hdul["DATA"].data.astype(float)
                wcs = WCS(hdul["DATA"].header)
            d_pos, ratios = [], []
            for star in stars:
                sep = np.hypot((ra_all - star["ra"]) * np.cos(np.radians(star["dec"])), dec_all - star["dec"])
                if np.sort(sep)[1] * 3600 < 2.0:
                    continue          # blended
                # where the star appears in this exposure's (uncorrected) WCS: true position + offset
                ra_app = star["ra"] + row["RA_OFFSET"]
                dec_app = star["dec"] + row["DEC_OFFSET"]
                x, y = wcs.world_to_pixel_values(ra_app, dec_app)
                if not (6 <= x < data.shape[1] - 6 and 2 <= y < data.shape[0] - 2):
                    continue
                fit = fit_star(data, float(x), float(y))
                if fit is None:
                    continue
                ra_fit, dec_fit = wcs.pixel_to_world_values(fit[0], fit[1])
                d_pos.append(((ra_fit - row["RA_OFFSET"] - star["ra"]) * 3600 * np.cos(np.radians(star["dec"])),
                              (dec_fit - row["DEC_OFFSET"] - star["dec"]) * 3600))
                ratios.append(fit[2] / (star["flux"][name] * exposure["transparency"]))
            d_pos, ratios = np.array(d_pos), np.array(ratios)
            if len(ratios) == 0:
                print(f"exposure {n} {name}: no isolated star measured")
                continue
            print(f"exposure {n} {name:9s}: {len(ratios):2d} stars; position - truth: median "
                  f"({np.median(d_pos[:, 0]):+.3f}\", {np.median(d_pos[:, 1]):+.3f}\"), max "
                  f"{np.max(np.hypot(d_pos[:, 0], d_pos[:, 1])):.3f}\"; flux / truth: median "
                  f"{np.median(ratios):.4f}, 16-84% {np.percentile(ratios, 16):.3f}-"
                  f"{np.percentile(ratios, 84):.3f}")
    if not args.keep:
        for big in work.glob("*/PIXTABLE_*.fits"):
            big.unlink()
        for big in work.glob("*/DATACUBE_*.fits"):
            big.unlink()
        for big in work.glob("*/MASTER_*.fits"):
            big.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
