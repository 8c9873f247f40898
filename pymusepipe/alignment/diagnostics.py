"""Diagnostics of an alignment: one PNG per MUSE image and a summary table."""
import logging

import numpy as np

from .fit import Quality

logger = logging.getLogger(__name__)


def plot_alignment(result, path, *, title=""):
    """Write a 2x2 PNG: reference and MUSE image after alignment, their difference, the flux-scale fit.

    Parameters
    ----------
    result : pymusepipe.alignment.fit.AlignmentResult
        Fitted with ``keep_images=True``.
    path : str or path-like
        Output PNG.
    title : str, optional
        Figure title (e.g. the exposure name).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = result.images
    if not images:
        logger.warning("no images kept for %s (fit failed early: %s)", path, result.message)
        figure, axis = plt.subplots(figsize=(5, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, f"{title}\n{Quality.describe(result.quality)}: {result.message}", ha="center")
        figure.savefig(path, dpi=80)
        plt.close(figure)
        return
    reference = images["reference"]
    muse_scaled = images["muse_scaled"]
    difference = muse_scaled - reference
    finite = np.isfinite(reference)
    low, high = np.nanpercentile(reference[finite], [1, 99.5]) if finite.any() else (0, 1)
    spread = np.nanpercentile(np.abs(difference[finite]), 99) if finite.any() else 1.0
    figure, axes = plt.subplots(2, 2, figsize=(10, 9))
    panels = ((axes[0, 0], reference, "reference (PSF-matched, on MUSE grid)", (low, high), "viridis"),
              (axes[0, 1], muse_scaled, "MUSE x FLUX_SCALE + BACKGROUND", (low, high), "viridis"),
              (axes[1, 0], difference, "MUSE (scaled) - reference", (-spread, spread), "RdBu_r"))
    for axis, image, label, (vmin, vmax), colormap in panels:
        shown = axis.imshow(image, origin="lower", vmin=vmin, vmax=vmax, cmap=colormap)
        axis.set_title(label, fontsize=9)
        figure.colorbar(shown, ax=axis, fraction=0.046)
    used = images["used"]
    axis = axes[1, 1]
    muse_values = images["muse"][used]
    reference_values = reference[used]
    keep = np.isfinite(muse_values) & np.isfinite(reference_values)
    if keep.sum() > 20000:  # a random subset keeps the PNG light
        keep[np.flatnonzero(keep)[np.random.default_rng(0).permutation(keep.sum())[20000:]]] = False
    axis.plot(muse_values[keep], reference_values[keep], ".", markersize=1.5, alpha=0.4, color="k")
    line = np.linspace(np.nanmin(muse_values), np.nanmax(muse_values), 2)
    axis.plot(line, result.flux_scale * line + result.background, "r-",
              label=f"ref = {result.flux_scale:.4f} x MUSE + {result.background:.3g}")
    axis.set_xlabel("MUSE (PSF-matched)")
    axis.set_ylabel("reference")
    axis.legend(fontsize=8)
    axis.set_title("flux scale and background", fontsize=9)
    figure.suptitle(f"{title}  offset RA {result.ra_offset * 3600:+.3f}\" DEC {result.dec_offset * 3600:+.3f}\" "
                    f"(deg x 3600, measured - true)  quality {Quality.describe(result.quality)}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    logger.info("wrote %s", path)


def write_summary(table, path):
    """Write the align_images table as an ECSV summary (all columns, units kept), human- and machine-readable.

    Parameters
    ----------
    table : astropy.table.Table
        As returned by :func:`~pymusepipe.alignment.align_images`.
    path : str or path-like
        Output ``.ecsv`` (or any astropy-supported text format by extension).
    """
    fmt = "ascii.ecsv" if str(path).endswith(".ecsv") else None
    table.write(path, format=fmt, overwrite=True)
    logger.info("wrote alignment summary %s (%d rows, %d flagged)", path, len(table),
                int(np.count_nonzero(np.asarray(table["quality"]))) if len(table) else 0)
