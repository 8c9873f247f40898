"""Quality-control figures: one function per figure, each reading product files and writing one PNG.

Every function takes the product path(s) and the PNG path, returns the PNG path, and raises
:class:`QCInputError` naming the file when a product is not what the figure needs. matplotlib (Agg backend)
is imported inside the functions so that ``import pymusepipe`` stays fast.

Detector images (4112 x 4096) are shown block-averaged 4 x 4: enough to see structure, 16 times less to draw.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np

__all__ = ["QCInputError", "master_image", "trace_overlay", "wavecal_residuals", "lsf_width",
           "twilight_correction", "sky_spectrum", "exposure_image", "alignment_offsets", "cube_overview"]

logger = logging.getLogger(__name__)

#: Cube planes read at a time: bounds memory on full 24-IFU cubes (~1.5 GB each).
_PLANES_PER_CHUNK = 64


class QCInputError(ValueError):
    """A product file lacks what a figure needs."""


# ---------------------------------------------------------------------- helpers
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: figures are files
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    _pyplot().close(fig)
    return png


def _image_hdu(hdus, path, names=("DATA",), ndim=2):
    """First HDU named like ``names``, else the first with ``ndim``-dimensional data."""
    for name in names:
        if name in hdus and hdus[name].data is not None and hdus[name].data.ndim == ndim:
            return hdus[name]
    for hdu in hdus:
        if hdu.is_image and hdu.data is not None and hdu.data.ndim == ndim:
            return hdu
    raise QCInputError(f"{path}: no {ndim}-D image extension")


def _table_hdu(hdus, path, required=()):
    for hdu in hdus[1:]:
        if not hdu.is_image and all(column in hdu.columns.names for column in required):
            return hdu
    raise QCInputError(f"{path}: no table with column(s) {', '.join(required)}")


def _block_mean(data, factor: int):
    """Mean over ``factor`` x ``factor`` blocks (NaN-aware), cropping the edges that do not fill a block."""
    if factor <= 1:
        return np.asarray(data, dtype=float)
    ny, nx = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    blocks = np.asarray(data[:ny, :nx], dtype=np.float32).reshape(ny // factor, factor, nx // factor, factor)
    means = blocks.mean(axis=(1, 3))
    if np.isnan(means).any():  # only blocks holding NaN pay for the slower NaN-aware mean
        with _quiet():
            means = np.nanmean(blocks, axis=(1, 3))
    return means


def _limits(data, low=1.0, high=99.0):
    finite = np.asarray(data)[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(finite, [low, high])
    return (float(vmin), float(vmax)) if vmax > vmin else (float(vmin) - 0.5, float(vmin) + 0.5)


@contextlib.contextmanager
def _quiet():
    """Silence numpy's all-NaN warnings: empty blocks and slices are expected at the CCD and cube edges."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _title(path, header=None) -> str:
    name = Path(path).name
    if header is not None and header.get("OBJECT"):
        return f"{name}\n{header['OBJECT']}"
    return name


def _image_figsize(shape, width=8.0):
    """Figure size following an image's aspect (a 1-IFU MUSE field is a 13 x 301 strip), within limits."""
    ny, nx = shape[-2], shape[-1]
    return width, float(np.clip(width * ny / max(nx, 1) + 1.6, 2.8, 7.5))


def _white_image_and_spectra_axes(white):
    """A figure with the white-light image drawn and an empty panel for spectra: the image above the spectra,
    full width, for a strip (a few IFUs), side by side otherwise."""
    plt = _pyplot()
    if white.shape[1] > 2.5 * white.shape[0]:
        image_height = _image_figsize(white.shape, 12.0)[1]
        fig, (ax_image, ax_spectra) = plt.subplots(2, 1, figsize=(12, image_height + 4.5),
                                                   gridspec_kw={"height_ratios": [image_height, 4.5]})
    else:
        fig, (ax_image, ax_spectra) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    vmin, vmax = _limits(white, 0.5, 99.5)
    ax_image.imshow(white, origin="lower", cmap="gray_r", vmin=vmin, vmax=vmax)
    return fig, ax_image, ax_spectra


def _axis_values(header, axis: int, size: int):
    """World values along a linear FITS axis (CRVAL + CDi_i or CDELT)."""
    step = header.get(f"CD{axis}_{axis}", header.get(f"CDELT{axis}", 1.0))
    return header.get(f"CRVAL{axis}", 0.0) + (np.arange(size) + 1 - header.get(f"CRPIX{axis}", 1.0)) * step


# ---------------------------------------------------------------------- calibrations
def master_image(path, png, *, kind: str = "") -> Path:
    """A master bias or flat of one IFU: the image (4x4 binned, 1-99 % scale) and its row/column profiles.

    Parameters
    ----------
    path : str or Path
        MASTER_BIAS or MASTER_FLAT file (DATA extension).
    png : str or Path
        Figure to write.
    kind : str
        Label (``MASTER_BIAS``); default: the file's ``ESO PRO CATG``.
    """
    from astropy.io import fits

    plt = _pyplot()
    with fits.open(path, memmap=True) as hdus:
        kind = kind or hdus[0].header.get("HIERARCH ESO PRO CATG", "master")
        hdu = _image_hdu(hdus, path)
        binned = _block_mean(hdu.data, 4)
    fig, (ax_image, ax_profile) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1.1, 1]})
    vmin, vmax = _limits(binned)
    shown = ax_image.imshow(binned, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, aspect="auto",
                            extent=(0, binned.shape[1] * 4, 0, binned.shape[0] * 4))
    fig.colorbar(shown, ax=ax_image, fraction=0.046)
    ax_image.set(xlabel="x [pixel]", ylabel="y [pixel]", title=f"{kind}: {Path(path).name}")
    with _quiet():
        ax_profile.plot(np.arange(binned.shape[1]) * 4, np.nanmedian(binned, axis=0), lw=0.8, label="column median")
        ax_profile.plot(np.arange(binned.shape[0]) * 4, np.nanmedian(binned, axis=1), lw=0.8, label="row median")
    ax_profile.set(xlabel="pixel", ylabel="counts", title=f"median {np.nanmedian(binned):.4g}")
    ax_profile.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


def _trace_edges(trace_path, y):
    """{slice: (left, centre, right)} x positions at rows ``y`` from a TRACE_TABLE (polynomials in y)."""
    from astropy.io import fits

    with fits.open(trace_path) as hdus:
        table = _table_hdu(hdus, trace_path, required=("SliceNo", "tc0_00")).data
        names = table.columns.names
    edges = {}
    for row in table:
        curves = []
        for curve in (1, 0, 2):  # tc1 left edge, tc0 centre, tc2 right edge
            coefficients = [row[name] for name in sorted(n for n in names if n.startswith(f"tc{curve}_"))]
            curves.append(np.polynomial.polynomial.polyval(y, coefficients))
        edges[int(row["SliceNo"])] = tuple(curves)
    return edges


def trace_overlay(flat_path, trace_path, png) -> Path:
    """TRACE_TABLE slice edges drawn on the master flat of the same IFU: whole CCD, and a zoom on 4 slices."""
    from astropy.io import fits

    plt = _pyplot()
    with fits.open(flat_path, memmap=True) as hdus:
        data = _image_hdu(hdus, flat_path).data
        ny = data.shape[0]
        binned = _block_mean(data, 4)
        rows = slice(max(0, ny // 2 - 200), min(ny, ny // 2 + 200))  # a 400-row band across the middle
        zoom = np.asarray(data[rows, :], dtype=float)
    y = np.arange(1, ny + 1, dtype=float)
    edges = _trace_edges(trace_path, y)
    if not edges:
        raise QCInputError(f"{trace_path}: the trace table has no slice")
    fig, (ax_full, ax_zoom) = plt.subplots(1, 2, figsize=(12, 5.5))
    vmin, vmax = _limits(binned, 5, 99.5)
    ax_full.imshow(binned, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, aspect="auto",
                   extent=(0, binned.shape[1] * 4, 0, binned.shape[0] * 4))
    for left, centre, right in edges.values():
        ax_full.plot(left, y, color="tab:red", lw=0.4)
        ax_full.plot(right, y, color="tab:cyan", lw=0.4)
    ax_full.set(xlabel="x [pixel]", ylabel="y [pixel]", title=f"{len(edges)} slices traced on {Path(flat_path).name}")
    first = sorted(edges)[:4]
    x_high = max(np.nanmax(edges[number][2][rows]) for number in first) + 10
    x_low = max(0.0, min(np.nanmin(edges[number][0][rows]) for number in first) - 10)
    vmin, vmax = _limits(zoom[:, int(x_low):int(x_high)], 5, 99.5)
    ax_zoom.imshow(zoom, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, aspect="auto",
                   extent=(0.5, zoom.shape[1] + 0.5, rows.start + 0.5, rows.stop + 0.5))
    for number in first:
        left, centre, right = edges[number]
        ax_zoom.plot(left[rows], y[rows], color="tab:red", lw=1, label="left edge" if number == first[0] else None)
        ax_zoom.plot(right[rows], y[rows], color="tab:cyan", lw=1, label="right edge" if number == first[0] else None)
        ax_zoom.plot(centre[rows], y[rows], color="yellow", lw=0.6, ls="--")
    ax_zoom.set(xlim=(x_low, x_high), xlabel="x [pixel]", title=f"slices {first[0]}-{first[-1]}, rows "
                f"{rows.start}-{rows.stop}")
    ax_zoom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


def _final_residuals(residuals_path):
    """(wavelength, residual, rejected) of the final fit iteration of each slice, over every table extension
    (one per IFU when the recipe merged them). muse_wavecal writes every iteration of its fit, with the
    rejection limit of each; a point beyond it was rejected."""
    from astropy.io import fits

    lambdas, residuals, rejected = [], [], []
    with fits.open(residuals_path) as hdus:
        tables = [hdu.data for hdu in hdus[1:] if not hdu.is_image and hdu.data is not None
                  and {"lambda", "residual"} <= set(hdu.columns.names)]
        if not tables:
            raise QCInputError(f"{residuals_path}: no table with columns lambda and residual")
        for table in tables:
            names = table.columns.names
            keep = np.ones(len(table), bool)
            if "iteration" in names and "slice" in names:
                slices, iterations = np.asarray(table["slice"]), np.asarray(table["iteration"])
                last = {number: iterations[slices == number].max() for number in np.unique(slices)}
                keep = iterations == np.array([last[number] for number in slices])
            residual = np.asarray(table["residual"], dtype=float)[keep]
            lambdas.append(np.asarray(table["lambda"], dtype=float)[keep])
            residuals.append(residual)
            if "rejected" in names:
                rejected.append(np.asarray(table["rejected"])[keep] != 0)
            elif "rejlimit" in names:
                rejected.append(np.abs(residual) > np.asarray(table["rejlimit"], dtype=float)[keep])
            else:
                rejected.append(np.zeros(residual.size, bool))
    return np.concatenate(lambdas), np.concatenate(residuals), np.concatenate(rejected)


def wavecal_residuals(wavecal_path, png, residuals_path=None) -> Path:
    """Wavelength-solution quality: the line residuals of the final fit (WAVECAL_RESIDUALS, which pymusepipe
    asks muse_wavecal for) and, from the WAVECAL_TABLE's QC keywords, the fit RMS and lines per slice."""
    from astropy.io import fits

    plt = _pyplot()
    header = fits.getheader(wavecal_path)
    slices = sorted({int(key.split()[3][5:]) for key in header if key.startswith("ESO QC WAVECAL SLICE")
                     and key.split()[3][5:].isdigit()})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if residuals_path is not None and Path(residuals_path).is_file():
        wavelength, residual, rejected = _final_residuals(residuals_path)
        used = ~rejected
        axes[0].scatter(wavelength[used], residual[used], s=1, alpha=0.3, rasterized=True, label="used")
        if rejected.any():
            axes[0].scatter(wavelength[rejected], residual[rejected], s=1, color="tab:red", alpha=0.3,
                            rasterized=True, label="rejected")
        axes[0].axhline(0, color="k", lw=0.5)
        if used.any():
            low, high = np.percentile(residual[used], [0.5, 99.5])
            span = max(abs(low), abs(high)) * 1.5
            axes[0].set_ylim(-span, span)
            rms = float(np.sqrt(np.mean(residual[used] ** 2)))
        else:
            rms = np.nan
        axes[0].set(xlabel="wavelength [Angstrom]", ylabel="residual [Angstrom]",
                    title=f"final fit: {used.sum()} points, RMS {rms:.4f} Angstrom\n{Path(residuals_path).name}")
        axes[0].legend(loc="upper right", fontsize=8, markerscale=5)
    else:
        axes[0].text(0.5, 0.5, "no WAVECAL_RESIDUALS product registered with this WAVECAL_TABLE\n"
                     "(muse_wavecal writes it with --residuals=true)",
                     ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    if not slices:
        raise QCInputError(f"{wavecal_path}: no ESO QC WAVECAL SLICEn keywords")
    rms = [header.get(f"ESO QC WAVECAL SLICE{n} FIT RMS", np.nan) for n in slices]
    detected = [header.get(f"ESO QC WAVECAL SLICE{n} LINES NDET", np.nan) for n in slices]
    identified = [header.get(f"ESO QC WAVECAL SLICE{n} LINES NID", np.nan) for n in slices]
    axes[1].plot(slices, rms, "o-", ms=3, color="tab:blue")
    axes[1].set(xlabel="slice", ylabel="fit RMS [Angstrom]", title=f"{Path(wavecal_path).name}")
    lines_axis = axes[1].twinx()
    lines_axis.plot(slices, detected, "s", ms=3, color="tab:gray", label="lines detected")
    lines_axis.plot(slices, identified, "^", ms=3, color="tab:orange", label="lines identified")
    lines_axis.set_ylabel("lines")
    lines_axis.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


def _fwhm(profile, offsets) -> float:
    """Full width at half maximum of a sampled line profile (linear interpolation of the half-max crossings)."""
    profile = np.nan_to_num(np.asarray(profile, dtype=float))
    peak = int(np.argmax(profile))
    half = profile[peak] / 2.0
    if half <= 0:
        return np.nan
    below_left = np.nonzero(profile[:peak] < half)[0]
    below_right = np.nonzero(profile[peak:] < half)[0]
    if not below_left.size or not below_right.size:
        return np.nan
    i, j = below_left[-1], peak + below_right[0]
    left = np.interp(half, [profile[i], profile[i + 1]], [offsets[i], offsets[i + 1]])
    right = np.interp(half, [profile[j], profile[j - 1]], [offsets[j], offsets[j - 1]])
    return float(right - left)


def lsf_width(path, png) -> Path:
    """LSF width (FWHM, measured on the LSF_PROFILE samples) vs wavelength: every slice, and their median."""
    from astropy.io import fits

    plt = _pyplot()
    with fits.open(path) as hdus:
        hdu = _image_hdu(hdus, path, names=("LSF_PROFILE",), ndim=3)
        cube, header = np.asarray(hdu.data, dtype=float), hdu.header
    n_slices, n_lambda, n_samples = cube.shape
    offsets = _axis_values(header, 1, n_samples)
    wavelengths = _axis_values(header, 2, n_lambda)
    widths = np.array([[_fwhm(cube[s, k], offsets) for k in range(n_lambda)] for s in range(n_slices)])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in widths:
        ax.plot(wavelengths, row, color="tab:blue", lw=0.5, alpha=0.3)
    with _quiet():
        ax.plot(wavelengths, np.nanmedian(widths, axis=0), color="k", lw=2, label=f"median of {n_slices} slices")
    ax.set(xlabel="wavelength [Angstrom]", ylabel="LSF FWHM [Angstrom]", title=Path(path).name)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


def twilight_correction(path, png) -> Path:
    """TWILIGHT_CUBE: the white-light illumination correction (image) and its spread vs wavelength."""
    from astropy.io import fits

    plt = _pyplot()
    with fits.open(path) as hdus:
        hdu = _image_hdu(hdus, path, names=("DATA",), ndim=3)
        cube, header = np.asarray(hdu.data, dtype=float), hdu.header
    wavelengths = _axis_values(header, 3, cube.shape[0])
    with _quiet():
        white = np.nanmedian(cube, axis=0)
        median = np.nanmedian(cube.reshape(cube.shape[0], -1), axis=1)
        low, high = np.nanpercentile(cube.reshape(cube.shape[0], -1), [5, 95], axis=1)
    # In percent from 1: corrections are small, and raw factors near 1 print as unreadable offsets.
    white, median, low, high = ((values - 1.0) * 100.0 for values in (white, median, low, high))
    fig, (ax_image, ax_curve) = plt.subplots(1, 2, figsize=(12, 4.5))
    vmin, vmax = _limits(white, 1, 99)
    shown = ax_image.imshow(white, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(shown, ax=ax_image, fraction=0.046, label="correction - 1 [%]")
    ax_image.set(xlabel="x [spaxel]", ylabel="y [spaxel]", title=f"{Path(path).name}\nmedian over wavelength")
    ax_curve.fill_between(wavelengths, low, high, alpha=0.3, label="5-95 % of spaxels")
    ax_curve.plot(wavelengths, median, "o-", ms=3, label="median")
    ax_curve.set(xlabel="wavelength [Angstrom]", ylabel="correction - 1 [%]", title="correction per plane")
    ax_curve.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


# ---------------------------------------------------------------------- science
def _column(table, path, *candidates):
    names = {name.lower(): name for name in table.columns.names}
    for candidate in candidates:
        if candidate.lower() in names:
            return np.asarray(table[names[candidate.lower()]], dtype=float)
    raise QCInputError(f"{path}: no column {' or '.join(candidates)} (has {', '.join(table.columns.names)})")


def sky_spectrum(spectrum_path, png, sky_lines_path=None) -> Path:
    """SKY_SPECTRUM with the SKY_LINES of the sky model marked at their wavelengths (the 12 brightest named)."""
    from astropy.io import fits

    plt = _pyplot()
    with fits.open(spectrum_path) as hdus:
        table = _table_hdu(hdus, spectrum_path).data
        wavelength = _column(table, spectrum_path, "lambda")
        flux = _column(table, spectrum_path, "data", "flux")
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.plot(wavelength, flux, lw=0.6, color="k")
    n_lines = 0
    if sky_lines_path is not None and Path(sky_lines_path).is_file():
        with fits.open(sky_lines_path) as hdus:
            lines = _table_hdu(hdus, sky_lines_path).data
            line_lambda = _column(lines, sky_lines_path, "lambda")
            line_flux = _column(lines, sky_lines_path, "flux")
            names = lines["name"] if "name" in lines.columns.names else [""] * len(lines)
        inside = (line_lambda >= np.nanmin(wavelength)) & (line_lambda <= np.nanmax(wavelength))
        n_lines = int(inside.sum())
        for value in line_lambda[inside]:
            ax.axvline(value, color="tab:red", lw=0.4, alpha=0.5)
        brightest = np.argsort(np.where(inside, line_flux, -np.inf))[::-1][:12]
        top = np.nanpercentile(flux, 99.9)
        for index in brightest:
            if inside[index]:
                ax.text(line_lambda[index], top, str(names[index]).strip(), rotation=90, fontsize=6,
                        va="top", ha="right", color="tab:red")
    # Log scale: lines are 10-1000 times the continuum. Negative values (a bad sky fit) need symlog.
    if np.nanmin(flux) > 0:
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=max(float(np.nanmedian(np.abs(flux))), 1e-30))
        ax.set_ylim(bottom=float(np.nanmin(flux)))
    ax.set(xlabel="wavelength [Angstrom]", ylabel="sky flux",
           title=f"{Path(spectrum_path).name}: {n_lines} sky lines marked")
    fig.tight_layout()
    return _save(fig, png)


def exposure_image(path, png) -> Path:
    """A reconstructed image of one exposure (IMAGE_FOV), 0.5-99.5 % asinh-like scale, with its filter."""
    from astropy.io import fits

    plt = _pyplot()
    with fits.open(path) as hdus:
        hdu = _image_hdu(hdus, path)
        data, header = np.asarray(hdu.data, dtype=float), hdu.header
        primary = hdus[0].header
    fig, ax = plt.subplots(figsize=_image_figsize(data.shape))
    vmin, vmax = _limits(data, 0.5, 99.5)
    stretched = np.arcsinh((np.clip(data, vmin, vmax) - vmin) / max((vmax - vmin) / 10.0, 1e-30))
    shown = ax.imshow(stretched, origin="lower", cmap="gray_r")
    strip = data.shape[1] > 3 * data.shape[0]  # a few IFUs: a colour bar below, not a tall one beside
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.25 if strip else 0.02, label="asinh(flux)",
                 orientation="horizontal" if strip else "vertical")
    band = header.get("ESO DRS MUSE FILTER NAME", primary.get("ESO DRS MUSE FILTER NAME", ""))
    title = _title(path, primary)
    if band and band not in title:
        title += f"  filter {band}"
    ax.set(xlabel="x [spaxel]", ylabel="y [spaxel]", title=title)
    fig.tight_layout()
    return _save(fig, png)


def alignment_offsets(path, png) -> Path:
    """OFFSET_LIST: the offsets of each exposure (arcsec, arrows from the origin) and its flux scale."""
    from astropy.io import fits

    plt = _pyplot()
    with fits.open(path) as hdus:
        table = _table_hdu(hdus, path, required=("RA_OFFSET", "DEC_OFFSET")).data
        header = hdus[0].header
    ra = np.asarray(table["RA_OFFSET"], dtype=float) * 3600.0
    dec = np.asarray(table["DEC_OFFSET"], dtype=float) * 3600.0
    scale = np.asarray(table["FLUX_SCALE"], dtype=float) if "FLUX_SCALE" in table.columns.names \
        else np.full(len(ra), np.nan)
    labels = [str(value)[:19] for value in table["DATE_OBS"]] if "DATE_OBS" in table.columns.names \
        else [str(i + 1) for i in range(len(ra))]
    fig, (ax_offsets, ax_scale) = plt.subplots(1, 2, figsize=(12, 5))
    ax_offsets.axhline(0, color="gray", lw=0.5)
    ax_offsets.axvline(0, color="gray", lw=0.5)
    for number, (x, y) in enumerate(zip(ra, dec), start=1):
        ax_offsets.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "tab:blue"})
        ax_offsets.text(x, y, f" {number}", fontsize=8)
    span = max(0.2, float(np.nanmax(np.abs(np.concatenate([ra, dec, [0.0]])))) * 1.3)
    ax_offsets.set(xlim=(-span, span), ylim=(-span, span), aspect="equal", xlabel="RA_OFFSET [arcsec, no cos(dec)]",
                   ylabel="DEC_OFFSET [arcsec]", title=f"{Path(path).name}: {len(ra)} exposures")
    nmatch = header.get("ESO QC EXPALIGN NMATCH MIN")
    if nmatch is not None:
        ax_offsets.text(0.02, 0.02, f"QC EXPALIGN NMATCH MIN = {nmatch}", transform=ax_offsets.transAxes, fontsize=8)
    positions = np.arange(1, len(ra) + 1)
    ax_scale.bar(positions, np.nan_to_num(scale, nan=0.0), color="tab:green")
    for number in positions[~np.isfinite(scale)]:
        ax_scale.text(number, 0.5, "none\n(NaN)", ha="center", color="gray", fontsize=8)
    ax_scale.axhline(1.0, color="k", lw=0.5)
    ax_scale.set_ylim(0, max(1.2, float(np.nanmax(np.append(scale, 1.0))) * 1.1))
    ax_scale.set_xticks(positions, [f"{n}\n{label[11:]}" for n, label in zip(positions, labels)], fontsize=7)
    ax_scale.set(ylabel="FLUX_SCALE", title="flux scale per exposure (date, time)")
    fig.tight_layout()
    return _save(fig, png)


def _white_light(read_planes, shape):
    """NaN-mean over wavelength of a cube of ``shape``, read a chunk of planes at a time with
    ``read_planes(start, stop)`` (float64, NaN where no data): a full-field cube never sits in memory whole."""
    total = np.zeros(shape[1:], dtype=np.float64)
    count = np.zeros(shape[1:], dtype=np.int64)
    for start in range(0, shape[0], _PLANES_PER_CHUNK):
        chunk = read_planes(start, min(start + _PLANES_PER_CHUNK, shape[0]))
        finite = np.isfinite(chunk)
        total += np.where(finite, chunk, 0.0).sum(axis=0)
        count += finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _bright_spots(image, count: int, radius: float):
    """Up to ``count`` brightest local maxima, at least 2 radii apart and away from the edges."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.nan_to_num(image, nan=np.nanmedian(image)), 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=int(2 * radius) + 1)) & np.isfinite(image)
    margin = int(np.ceil(radius))
    peaks[:margin, :] = peaks[-margin:, :] = False
    peaks[:, :margin] = peaks[:, -margin:] = False
    ys, xs = np.nonzero(peaks)
    order = np.argsort(smooth[ys, xs])[::-1]
    chosen = []
    for y, x in zip(ys[order], xs[order]):
        if all((y - cy) ** 2 + (x - cx) ** 2 > (2 * radius) ** 2 for cy, cx in chosen):
            chosen.append((int(y), int(x)))
        if len(chosen) == count:
            break
    return chosen


def cube_overview(path, png, *, n_apertures: int = 4, radius: float = 3.0) -> Path:
    """A cube (DATACUBE_FINAL): white-light image with apertures on the brightest spots and the centre, and
    the summed spectrum in each aperture."""
    from astropy.io import fits

    plt = _pyplot()
    if n_apertures < 1 or radius <= 0:
        raise ValueError(f"cube_overview: n_apertures={n_apertures}, radius={radius}: both must be positive")
    with fits.open(path, memmap=True) as hdus:
        hdu = _image_hdu(hdus, path, names=("DATA",), ndim=3)
        data, header = hdu.data, hdu.header
        wavelengths = _axis_values(header, 3, data.shape[0])
        white = _white_light(lambda start, stop: np.asarray(data[start:stop], dtype=np.float64), data.shape)
        if not np.isfinite(white).any():
            raise QCInputError(f"{path}: the cube has no finite value")
        centres = [(white.shape[0] // 2, white.shape[1] // 2)]
        centres += [spot for spot in _bright_spots(white, n_apertures - 1, radius)
                    if (spot[0] - centres[0][0]) ** 2 + (spot[1] - centres[0][1]) ** 2 > radius ** 2]
        yy, xx = np.indices(white.shape)
        masks = [(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2 for cy, cx in centres]
        spectra = np.zeros((len(masks), data.shape[0]))
        for start in range(0, data.shape[0], _PLANES_PER_CHUNK):
            chunk = np.asarray(data[start:start + _PLANES_PER_CHUNK], dtype=np.float64)
            for index, mask in enumerate(masks):
                values = chunk[:, mask]
                # A plane with no data in the aperture (the AO notch, the cube's ends) is a gap, not a zero.
                spectra[index, start:start + chunk.shape[0]] = np.where(
                    np.isfinite(values).any(axis=1), np.nansum(values, axis=1), np.nan)
        primary = hdus[0].header
    fig, ax_image, ax_spectra = _white_image_and_spectra_axes(white)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (cy, cx) in enumerate(centres):
        color = colors[index % len(colors)]
        ax_image.add_patch(plt.Circle((cx, cy), radius, fill=False, color=color, lw=1.2))
        ax_image.text(cx + radius, cy + radius, str(index + 1), color=color, fontsize=9)
        label = "centre" if index == 0 else f"bright spot {index}"
        ax_spectra.plot(wavelengths, spectra[index], lw=0.6, color=color, label=f"{index + 1}: {label} ({cx}, {cy})")
    ax_image.set(xlabel="x [spaxel]", ylabel="y [spaxel]", title=f"white light: {_title(path, primary)}")
    unit = header.get("BUNIT", "")
    ax_spectra.set(xlabel="wavelength [Angstrom]", ylabel=f"sum in r={radius:g} spaxels {unit}".strip(),
                   title="spectra in the apertures")
    ax_spectra.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


# ---------------------------------------------------------------------- standard star
def std_response(path, png, telluric_path=None) -> Path:
    """STD_RESPONSE: the flux response (magnitudes, as muse_standard fits it) and throughput vs wavelength,
    with the telluric correction (STD_TELLURIC) of the same standard when given."""
    from astropy.io import fits

    plt = _pyplot()
    with fits.open(path) as hdus:
        table = _table_hdu(hdus, path, required=("lambda", "response")).data
        header = hdus[0].header
    wavelength = np.asarray(table["lambda"], dtype=float)
    response = np.asarray(table["response"], dtype=float)
    n_panels = 2 if telluric_path is not None and Path(telluric_path).is_file() else 1
    fig, axes = plt.subplots(n_panels, 1, figsize=(11, 3.6 * n_panels + 0.6), squeeze=False)
    ax = axes[0, 0]
    ax.plot(wavelength, response, color="k", lw=0.8, label="response")
    if "response_unsmoothed" in table.columns.names:
        ax.plot(wavelength, np.asarray(table["response_unsmoothed"], dtype=float), color="tab:gray", lw=0.4,
                alpha=0.6, label="unsmoothed")
    ax.set(xlabel="wavelength [Angstrom]", ylabel="response [mag]",
           title=f"{Path(path).name}: {header.get('ESO QC STANDARD STARNAME', '')}")
    if "throughput" in table.columns.names:
        through = ax.twinx()
        through.plot(wavelength, np.asarray(table["throughput"], dtype=float), color="tab:green", lw=0.8)
        through.set_ylabel("throughput", color="tab:green")
    ax.legend(loc="lower center", fontsize=8)
    if n_panels == 2:
        with fits.open(telluric_path) as hdus:
            telluric = _table_hdu(hdus, telluric_path, required=("lambda", "ftelluric")).data
        axes[1, 0].plot(np.asarray(telluric["lambda"], dtype=float), np.asarray(telluric["ftelluric"], dtype=float),
                        color="tab:blue", lw=0.8)
        axes[1, 0].set(xlabel="wavelength [Angstrom]", ylabel="telluric correction factor",
                       title=Path(telluric_path).name)
    fig.tight_layout()
    return _save(fig, png)


# ---------------------------------------------------------------------- sky residuals
#: Wavelengths [Angstrom] blocked by the notch filter of the laser-assisted AO modes (the sodium laser light).
NAD_NOTCH = {"WFM-AO-N": (5805.0, 5966.0), "WFM-AO-E": (5755.0, 6008.0), "NFM-AO-N": (5780.0, 6050.0)}


def _mpdaf_cube(path):
    """An mpdaf Cube that reads its planes on demand (mpdaf is imported here: it takes seconds)."""
    from mpdaf.obj import Cube

    return Cube(str(path))


def _planes(cube, start, stop) -> np.ndarray:
    """Planes ``start:stop`` of an mpdaf cube as float64 with NaN where masked (read from the file only)."""
    return np.ma.filled(np.ma.asarray(cube[start:stop, :, :].data, dtype=np.float64), np.nan)


def _nan_runs(all_nan) -> list:
    """(first, last) index of each run of True."""
    runs, start = [], None
    for index, flag in enumerate(list(all_nan) + [False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index - 1))
            start = None
    return runs


def sky_residuals(cube_path, png, *, mode: str | None = None, fraction: float = 0.3) -> Path:
    """The residual sky in the emptiest spaxels of a sky-subtracted cube.

    Sources are found on the white-light image (3 sigma above the sigma-clipped median, grown by 2 spaxels);
    among the rest, the ``fraction`` faintest spaxels are taken as star-free. Their median spectrum should be
    flat around zero: sky-line residuals, a continuum offset or a slope show up there. The NaD notch of the AO
    modes (``mode``, default the cube's ``ESO INS MODE``) is shaded, and so are the planes with no data at all
    (NaN in every spaxel, as in the notch).

    Parameters
    ----------
    cube_path : str or Path
        DATACUBE_FINAL (DATA extension, wavelength WCS in Angstrom, BUNIT).
    png : str or Path
    mode : str, optional
        Observing mode.
    fraction : float
        Fraction of the source-free spaxels used.
    """
    from astropy.stats import sigma_clipped_stats
    from scipy import ndimage

    plt = _pyplot()
    cube = _mpdaf_cube(cube_path)
    n_lambda = cube.shape[0]
    wavelengths = cube.wave.coord()
    unit = cube.primary_header.get("BUNIT", "") or cube.data_header.get("BUNIT", "")
    mode = mode or str(cube.primary_header.get("ESO INS MODE", ""))
    white = _white_light(lambda start, stop: _planes(cube, start, stop), cube.shape)
    valid = np.isfinite(white)
    if valid.sum() < 5:
        raise QCInputError(f"{cube_path}: fewer than 5 spaxels with data")
    _, median, sigma = sigma_clipped_stats(white[valid], sigma=3.0)
    sources = ndimage.binary_dilation(valid & (white > median + 3.0 * sigma), iterations=2)
    free = valid & ~sources
    if free.sum() < 5:
        raise QCInputError(f"{cube_path}: no source-free spaxel (the field is filled by sources)")
    threshold = np.percentile(white[free], 100.0 * fraction)
    chosen = free & (white <= threshold)
    spectrum = np.full(n_lambda, np.nan)
    for start in range(0, n_lambda, _PLANES_PER_CHUNK):
        stop = min(start + _PLANES_PER_CHUNK, n_lambda)
        with _quiet():
            spectrum[start:stop] = np.nanmedian(_planes(cube, start, stop)[:, chosen], axis=1)
    # A running median over ~25 Angstrom shows a continuum offset or slope under the per-plane noise.
    step = float(np.median(np.diff(wavelengths))) if n_lambda > 1 else 1.0
    width = max(3, int(round(25.0 / max(step, 1e-6))) | 1)
    smooth = ndimage.generic_filter(spectrum, lambda values: np.nan if np.isnan(values).all()
                                    else np.nanmedian(values), size=width, mode="nearest")
    fig, (ax_image, ax_spectrum) = plt.subplots(
        2, 1, figsize=(12, 8.5), gridspec_kw={"height_ratios": [1, 1.6]})
    vmin, vmax = _limits(white, 0.5, 99.5)
    ax_image.imshow(white, origin="lower", cmap="gray_r", vmin=vmin, vmax=vmax,
                    aspect="auto" if white.shape[1] > 3 * white.shape[0] else "equal")
    ax_image.contour(chosen.astype(float), levels=[0.5], colors="tab:orange", linewidths=0.8)
    ax_image.set(xlabel="x [spaxel]", ylabel="y [spaxel]",
                 title=f"{Path(cube_path).name}: white light; outlined: the {int(chosen.sum())} star-free spaxels "
                       f"used ({100 * fraction:.0f} % faintest without sources)")
    ax_spectrum.plot(wavelengths, spectrum, color="0.55", lw=0.5, label="median over the spaxels, per plane")
    ax_spectrum.plot(wavelengths, smooth, color="k", lw=1.2, label=f"running median ({width * step:.0f} Angstrom)")
    ax_spectrum.axhline(0.0, color="tab:red", lw=0.6)
    with _quiet():
        planes_empty = ~np.isfinite(spectrum)
    for first, last in _nan_runs(planes_empty):
        ax_spectrum.axvspan(wavelengths[first], wavelengths[last], color="0.75", alpha=0.6, lw=0,
                            label="no data (NaN in the cube)" if first == _nan_runs(planes_empty)[0][0] else None)
    notch = NAD_NOTCH.get(mode.upper())
    if notch is not None:
        ax_spectrum.axvspan(*notch, facecolor="none", edgecolor="tab:orange", hatch="//", lw=0.8,
                            label=f"NaD notch of {mode.upper()} ({notch[0]:.0f}-{notch[1]:.0f} Angstrom)")
    finite = spectrum[np.isfinite(spectrum)]
    if finite.size:
        lo, hi = np.percentile(finite, [1, 99])
        pad = max(hi - lo, 1e-30) * 0.3
        ax_spectrum.set_ylim(lo - pad, hi + pad)
        level = f"median {np.median(finite):.3g}"
    else:
        level = "no finite value"
    ax_spectrum.set(xlabel="wavelength [Angstrom]", ylabel=f"residual [{unit}]" if unit else "residual",
                    title=f"sky residual in star-free spaxels ({level}; mode {mode or 'unknown'})")
    ax_spectrum.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


# ---------------------------------------------------------------------- target: footprints and mosaic
def footprint(image_path, *, shift_deg=(0.0, 0.0)):
    """Corners (RA, Dec in degrees) of the part of an image (or a cube's spatial plane) that holds data.

    ``shift_deg`` = (RA_OFFSET, DEC_OFFSET) of an OFFSET_LIST row: subtracted, as the MUSE pipeline does, so the
    footprint is where the exposure lands once corrected.
    """
    from mpdaf.obj import Cube, Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            thing = Image(str(image_path))
            finite = np.isfinite(np.ma.filled(np.ma.asarray(thing.data, dtype=float), np.nan))
        except ValueError:  # a cube: its spatial WCS, the whole plane
            thing = Cube(str(image_path))
            finite = np.ones(thing.shape[1:], bool)
    rows, columns = np.nonzero(finite.any(axis=1))[0], np.nonzero(finite.any(axis=0))[0]
    if not rows.size:
        raise QCInputError(f"{image_path}: no finite pixel")
    y0, y1, x0, x1 = rows[0] - 0.5, rows[-1] + 0.5, columns[0] - 0.5, columns[-1] + 0.5
    corners = thing.wcs.pix2sky([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])  # (dec, ra) pairs
    return np.column_stack([corners[:, 1] - shift_deg[0], corners[:, 0] - shift_deg[1]])


def footprints_on_image(image_path, png, outlines, *, title="", label="") -> Path:
    """An image (reference image or mosaic) with outlines drawn on it, axes in arcsec from the image centre.

    Parameters
    ----------
    image_path : str or Path
        FITS image with a celestial WCS (read with mpdaf).
    outlines : list of (name, corners, style)
        ``corners``: (RA, Dec) degrees, as :func:`footprint` returns; ``style``: matplotlib line style.
    """
    from mpdaf.obj import Image

    plt = _pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = Image(str(image_path))
        data = np.ma.filled(np.ma.asarray(image.data, dtype=float), np.nan)
    if not np.isfinite(data).any():
        raise QCInputError(f"{image_path}: the image has no finite pixel")
    ny, nx = data.shape
    step = image.wcs.get_step(unit=None)  # (dy, dx) in degrees per pixel
    scale = 3600.0 * np.abs(step)
    centre = ((ny - 1) / 2.0, (nx - 1) / 2.0)
    extent = (-(centre[1] + 0.5) * scale[1], (nx - 0.5 - centre[1]) * scale[1],
              -(centre[0] + 0.5) * scale[0], (ny - 0.5 - centre[0]) * scale[0])
    fig, ax = plt.subplots(figsize=_image_figsize(data.shape, 9.0))
    vmin, vmax = _limits(data, 0.5, 99.5)
    ax.imshow(np.arcsinh((np.clip(data, vmin, vmax) - vmin) / max((vmax - vmin) / 10.0, 1e-30)), origin="lower",
              cmap="gray_r", extent=extent)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, corners, style) in enumerate(outlines):
        pixels = image.wcs.sky2pix(np.column_stack([corners[:, 1], corners[:, 0]]))  # (y, x)
        xs = (np.append(pixels[:, 1], pixels[0, 1]) - centre[1]) * scale[1]
        ys = (np.append(pixels[:, 0], pixels[0, 0]) - centre[0]) * scale[0]
        color = colors[index % len(colors)]
        ax.plot(xs, ys, style, color=color, lw=1.2)
        ax.text(xs[2], ys[2], f" {name}", color=color, fontsize=8)
    ax.set(xlabel="x offset from the image centre [arcsec]", ylabel="y offset [arcsec]",
           title=title or Path(image_path).name)
    if label:
        ax.text(0.01, 0.01, label, transform=ax.transAxes, fontsize=8, va="bottom")
    fig.tight_layout()
    return _save(fig, png)


def mosaic_spectra(cube_path, png, *, n_apertures: int = 4, radius_arcsec: float = 1.0) -> Path:
    """A mosaic cube: white light with apertures on the brightest spots and the centre, and the spectrum summed
    in each (mpdaf ``Cube.aperture``: only the aperture's sub-cube is read)."""
    plt = _pyplot()
    cube = _mpdaf_cube(cube_path)
    white = _white_light(lambda start, stop: _planes(cube, start, stop), cube.shape)
    if not np.isfinite(white).any():
        raise QCInputError(f"{cube_path}: the cube has no finite value")
    scale = 3600.0 * float(np.abs(cube.wcs.get_step(unit=None)).mean())
    radius = radius_arcsec / scale
    centres = [(white.shape[0] // 2, white.shape[1] // 2)]
    centres += [spot for spot in _bright_spots(white, n_apertures - 1, max(radius, 1.0))
                if (spot[0] - centres[0][0]) ** 2 + (spot[1] - centres[0][1]) ** 2 > radius ** 2]
    unit = cube.primary_header.get("BUNIT", "") or cube.data_header.get("BUNIT", "")
    fig, ax_image, ax_spectra = _white_image_and_spectra_axes(white)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (cy, cx) in enumerate(centres):
        color = colors[index % len(colors)]
        dec, ra = cube.wcs.pix2sky([[cy, cx]])[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spectrum = cube.aperture((dec, ra), radius_arcsec)
        ax_image.add_patch(plt.Circle((cx, cy), radius, fill=False, color=color, lw=1.2))
        # On the circle's upper-right edge, so that the number sits on its own circle.
        ax_image.text(cx + 0.75 * radius, cy + 0.75 * radius, str(index + 1), color=color, fontsize=10,
                      fontweight="bold")
        label = "centre" if index == 0 else f"bright spot {index}"
        ax_spectra.plot(spectrum.wave.coord(), np.ma.filled(spectrum.data.astype(float), np.nan), lw=0.6,
                        color=color, label=f"{index + 1}: {label} (RA {ra:.5f}, Dec {dec:.5f})")
    ax_image.set(xlabel="x [spaxel]", ylabel="y [spaxel]", title=f"white light: {Path(cube_path).name}")
    ax_spectra.set(xlabel="wavelength [Angstrom]",
                   ylabel=f"sum in r={radius_arcsec:g} arcsec [{unit}]" if unit else f"sum in r={radius_arcsec:g}\"",
                   title="spectra in the apertures")
    ax_spectra.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, png)
