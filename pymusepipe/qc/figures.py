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


def wavecal_residuals(wavecal_path, png, residuals_path=None) -> Path:
    """Wavelength-solution quality: the line residuals (WAVECAL_RESIDUALS, when the recipe wrote them) or
    else, from the WAVECAL_TABLE's QC keywords, the fit RMS and identified lines per slice."""
    from astropy.io import fits

    plt = _pyplot()
    header = fits.getheader(wavecal_path)
    slices = sorted({int(key.split()[3][5:]) for key in header if key.startswith("ESO QC WAVECAL SLICE")
                     and key.split()[3][5:].isdigit()})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if residuals_path is not None and Path(residuals_path).is_file():
        with fits.open(residuals_path) as hdus:
            table = _table_hdu(hdus, residuals_path, required=("lambda", "residual")).data
        used = table["rejected"] == 0 if "rejected" in table.columns.names else np.ones(len(table), bool)
        axes[0].scatter(table["lambda"][used], table["residual"][used], s=2, alpha=0.5)
        axes[0].axhline(0, color="k", lw=0.5)
        axes[0].set(xlabel="wavelength [Angstrom]", ylabel="residual [Angstrom]",
                    title=f"{used.sum()} line residuals ({Path(residuals_path).name})")
    else:
        axes[0].text(0.5, 0.5, "no WAVECAL_RESIDUALS product\n(muse_wavecal --residuals=true writes it)",
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


def _white_light(data):
    """NaN-mean over wavelength, read a chunk of planes at a time (memory-mapped cubes stay on disk)."""
    total = np.zeros(data.shape[1:], dtype=np.float64)
    count = np.zeros(data.shape[1:], dtype=np.int64)
    for start in range(0, data.shape[0], _PLANES_PER_CHUNK):
        chunk = np.asarray(data[start:start + _PLANES_PER_CHUNK], dtype=np.float64)
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
        white = _white_light(data)
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
                spectra[index, start:start + chunk.shape[0]] = np.nansum(chunk[:, mask], axis=1)
        primary = hdus[0].header
    if white.shape[1] > 2.5 * white.shape[0]:  # a strip (few IFUs): image above the spectra, full width
        image_height = _image_figsize(white.shape, 12.0)[1]
        fig, (ax_image, ax_spectra) = plt.subplots(2, 1, figsize=(12, image_height + 4.5),
                                                   gridspec_kw={"height_ratios": [image_height, 4.5]})
    else:
        fig, (ax_image, ax_spectra) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    vmin, vmax = _limits(white, 0.5, 99.5)
    ax_image.imshow(white, origin="lower", cmap="gray_r", vmin=vmin, vmax=vmax)
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
