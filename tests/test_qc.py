"""The QC report of a reduced pointing: every linked figure exists and is a non-empty PNG.

The pointing is made by this test: small product files with the structure of the real ones (extensions,
table columns, WCS keywords, QC keywords as muse_* write them), registered in the products catalogue the way
the engine does; the OFFSET_LIST sits in ``Alignment/`` unregistered, as the alignment module leaves it, to
exercise finding products by name. No TWILIGHT_CUBE: its section must say it was skipped. Building the report
takes a few seconds (matplotlib), no esorex.
"""
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe.layout import PointingLayout
from pymusepipe.products import ProductCatalogue, ProductRecord
from pymusepipe.qc import figures
from pymusepipe.qc.report import build_report, find_products

LABEL = "2026-03-14T20:00:00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _primary(tag, **qc):
    header = fits.Header()
    header["HIERARCH ESO PRO CATG"] = tag
    header["OBJECT"] = "SIMGAL"
    for key, value in qc.items():
        header[f"HIERARCH ESO QC {key}"] = value
    return fits.PrimaryHDU(header=header)


def _write(path, hdus):
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def _table(columns, name=None):
    return fits.BinTableHDU.from_columns([fits.Column(name=n, format=f, array=np.asarray(a)) for n, f, a in columns],
                                         name=name)


def _slices_flat(ny=256, nx=256, n_slices=4):
    """A flat of vertical slices 50 px wide with 12 px gaps, and their traced edges (constant in y)."""
    data = np.zeros((ny, nx), np.float32)
    edges = []
    for number in range(n_slices):
        left = 10 + number * 62
        data[:, left:left + 50] = 1.0 + 0.1 * np.sin(np.arange(ny) / 40.0)[:, None]
        edges.append((left + 0.5, left + 50.5))
    return data, edges


def _trace_table(edges):
    columns = [("SliceNo", "J", np.arange(1, len(edges) + 1)), ("Width", "E", [r - l for l, r in edges])]
    for curve, values in ((0, [(l + r) / 2 for l, r in edges]), (1, [l for l, _ in edges]),
                          (2, [r for _, r in edges])):
        columns.append((f"tc{curve}_00", "D", values))
        columns.extend((f"tc{curve}_{order:02d}", "D", np.zeros(len(edges))) for order in range(1, 6))
    return _table(columns)


def _gaussian_image(shape, stars):
    yy, xx = np.indices(shape)
    image = np.full(shape, 1.0)
    for y, x, flux in stars:
        image += flux * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5 ** 2))
    return image


def _cube_header(nlambda, start=4750.0, step=1.25):
    header = fits.Header()
    header.update({"CRPIX3": 1.0, "CRVAL3": start, "CD3_3": step, "CTYPE3": "AWAV", "CUNIT3": "Angstrom",
                   "BUNIT": "10**(-20)*erg/s/cm**2/Angstrom"})
    return header


def make_reduced_pointing(root: Path) -> PointingLayout:
    """A pointing with one small product of each kind the report draws (but no TWILIGHT_CUBE)."""
    layout = PointingLayout(root, "QCTEST", 1)
    layout.create_working_folders()
    rng = np.random.default_rng(3)
    products = {}  # tag -> (recipe, path)
    products["MASTER_BIAS"] = ("muse_bias", _write(
        layout.master_folder("Bias") / f"MASTER_BIAS_{LABEL}-01.fits",
        [_primary("MASTER_BIAS", **{"BIAS MASTER1 RON": 2.4, "BIAS MASTER1 MEDIAN": 0.01}),
         fits.ImageHDU(rng.normal(0, 2.4, (256, 256)).astype(np.float32), name="DATA")]))
    flat, edges = _slices_flat()
    products["MASTER_FLAT"] = ("muse_flat", _write(
        layout.master_folder("Flat") / f"MASTER_FLAT_{LABEL}-01.fits",
        [_primary("MASTER_FLAT", **{"FLAT MASTER MEDIAN": 1.0}), fits.ImageHDU(flat, name="DATA")]))
    products["TRACE_TABLE"] = ("muse_flat", _write(
        layout.master_folder("Trace") / f"TRACE_TABLE_{LABEL}-01.fits",
        [_primary("TRACE_TABLE", **{"TRACE SLICE1 WIDTH": 50.0}), _trace_table(edges)]))
    wave_qc = {}
    for number in range(1, 5):
        wave_qc.update({f"WAVECAL SLICE{number} FIT RMS": 0.011 + 0.001 * number,
                        f"WAVECAL SLICE{number} LINES NDET": 68, f"WAVECAL SLICE{number} LINES NID": 67})
    products["WAVECAL_TABLE"] = ("muse_wavecal", _write(
        layout.master_folder("Wave") / f"WAVECAL_TABLE_{LABEL}-01.fits",
        [_primary("WAVECAL_TABLE", **wave_qc), _table([("SliceNo", "J", [1, 2, 3, 4]), ("wlc00", "D", [4650.0] * 4)])]))
    _write(layout.master_folder("Wave") / f"WAVECAL_RESIDUALS_{LABEL}-01.fits",
           [_primary("WAVECAL_RESIDUALS"), _table([("lambda", "D", np.linspace(4800, 9300, 200)),
                                                   ("residual", "D", rng.normal(0, 0.02, 200)),
                                                   ("rejected", "J", np.zeros(200, int))])])
    offsets = np.linspace(-7.5, 7.5, 151)
    sigmas = np.linspace(1.2, 1.4, 10)
    lsf = np.exp(-offsets[None, None, :] ** 2 / (2 * sigmas[None, :, None] ** 2)).repeat(4, axis=0)
    lsf_header = fits.Header({"CRPIX1": 1.0, "CRVAL1": -7.5, "CD1_1": 0.1, "CRPIX2": 1.0, "CRVAL2": 4650.0,
                              "CD2_2": 500.0})
    products["LSF_PROFILE"] = ("muse_lsf", _write(
        layout.master_folder("Lsf") / f"LSF_PROFILE_{LABEL}-01.fits",
        [_primary("LSF_PROFILE"), fits.ImageHDU(lsf.astype(np.float32), header=lsf_header, name="LSF_PROFILE")]))
    wavelength = np.arange(4750.0, 9350.0, 1.25)
    sky_lines = [("OI", 5577.339, 500.0), ("OI", 6300.304, 200.0), ("OH", 8399.17, 300.0)]
    sky = 10.0 + sum(flux * np.exp(-(wavelength - position) ** 2 / 8.0) for _, position, flux in sky_lines)
    products["SKY_SPECTRUM"] = ("muse_create_sky", _write(
        layout.folder("sky") / f"SKY_SPECTRUM_{LABEL}.fits",
        [_primary("SKY_SPECTRUM"), _table([("lambda", "D", wavelength), ("data", "D", sky)], name="SKY_SPECTRUM")]))
    products["SKY_LINES"] = ("muse_create_sky", _write(
        layout.folder("sky") / f"SKY_LINES_{LABEL}.fits",
        [_primary("SKY_LINES"), _table([("name", "8A", [n for n, _, _ in sky_lines]),
                                        ("lambda", "D", [p for _, p, _ in sky_lines]),
                                        ("flux", "D", [f for _, _, f in sky_lines])], name="LINES")]))
    stars = [(10, 12, 50.0), (30, 40, 20.0), (20, 25, 8.0)]
    products["IMAGE_FOV"] = ("muse_scipost", _write(
        layout.folder("object") / f"IMAGE_FOV_white_{LABEL}_0001.fits",
        [_primary("IMAGE_FOV"), fits.ImageHDU(_gaussian_image((40, 50), stars), name="DATA")]))
    continuum = np.linspace(2.0, 1.0, 120)
    cube = _gaussian_image((40, 50), stars)[None, :, :] * continuum[:, None, None]
    cube[:, :2, :] = np.nan  # the cube edges are NaN in real cubes
    products["DATACUBE_FINAL"] = ("muse_scipost", _write(
        layout.folder("object") / f"DATACUBE_FINAL_{LABEL}_0001.fits",
        [_primary("DATACUBE_FINAL"), fits.ImageHDU(cube.astype(np.float32), header=_cube_header(120), name="DATA")]))
    # Registered as the engine does (one products table per recipe).
    catalogue = ProductCatalogue(layout.folder("astro_tables"))
    for tag, (recipe, path) in products.items():
        catalogue.register(f"{recipe}_{LABEL}", catalogue.of_job(f"{recipe}_{LABEL}") + [
            ProductRecord(tag=tag, path=str(path), mjd=61113.8, job=f"{recipe}_{LABEL}", recipe=recipe)])
    for recipe in {recipe for recipe, _ in products.values()}:
        catalogue.save(recipe)
    # The alignment module writes its OFFSET_LIST in Alignment/ without registering it.
    _write(layout.folder("alignment", create=True) / "OFFSET_LIST_P01.fits",
           [_primary("OFFSET_LIST", **{"EXPALIGN NMATCH MIN": 12}),
            _table([("DATE_OBS", "23A", ["2026-03-15T03:18:06.689", "2026-03-15T03:35:06.689"]),
                    ("MJD_OBS", "D", [61114.13, 61114.14]), ("RA_OFFSET", "D", [0.0, 1.5e-4]),
                    ("DEC_OFFSET", "D", [0.0, -0.8e-4]), ("FLUX_SCALE", "D", [np.nan, 1.05])])])
    return layout


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a" and not attrs.get("href", "#").startswith("#"):
            self.links.append(attrs["href"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("qc")
    layout = make_reduced_pointing(root)
    page = build_report(layout)
    yield layout, page
    shutil.rmtree(root, ignore_errors=True)


def test_every_linked_figure_is_a_non_empty_png(report):
    layout, page = report
    assert page == layout.folder("figures") / "index.html"
    parser = _Links()
    parser.feed(page.read_text())
    # bias, flat, trace overlay, wavecal, lsf, sky, image, offsets, cube: 9 figures, no twilight.
    assert len(parser.images) == 9
    for source in parser.images:
        assert not Path(unquote(source)).is_absolute() and ":" not in source  # relative, colons encoded
        png = page.parent / unquote(source)
        assert png.is_file(), source
        content = png.read_bytes()
        assert content.startswith(PNG_SIGNATURE) and len(content) > 5000, source
    # Every other link (products) resolves relative to the page, so the pointing folder can be copied.
    for link in parser.links:
        assert (page.parent / unquote(link)).exists(), link


def test_page_lists_qc_keywords_step_notes_and_skips_missing_products(report):
    layout, page = report
    text = page.read_text()
    assert "skipped: no TWILIGHT_CUBE product" in text
    assert "ESO QC BIAS MASTER1 RON" in text and "ESO QC EXPALIGN NMATCH MIN" in text
    assert "no step table" in text  # no *_jobs.fits in this pointing
    assert "figure failed" not in text
    # The unregistered OFFSET_LIST was found by name, the sky lines paired with the sky spectrum by name.
    assert re.search(r"OFFSET_LIST_P01\.png", text)
    assert "SKY_LINES_" in text.split("id='sky-spectrum'")[1].split("<h2")[0]


def test_report_is_rebuilt_without_redrawing_fresh_figures(report):
    layout, page = report
    png = layout.folder("figures") / f"MASTER_BIAS_{LABEL}-01.png"
    before = png.stat().st_mtime_ns
    build_report(layout)
    assert png.stat().st_mtime_ns == before
    build_report(layout, overwrite=True)
    assert png.stat().st_mtime_ns > before


def test_a_broken_product_is_noted_not_fatal(tmp_path):
    layout = PointingLayout(tmp_path, "BROKEN", 1)
    layout.create_working_folders()
    _write(layout.master_folder("Lsf") / "LSF_PROFILE_x-01.fits", [_primary("LSF_PROFILE")])  # no cube in it
    text = build_report(layout).read_text()
    assert "figure failed: QCInputError" in text and "no 3-D image extension" in text
    assert set(find_products(layout)) == {"LSF_PROFILE"}


def test_figure_functions_name_the_bad_file(tmp_path):
    path = _write(tmp_path / "OFFSET_LIST.fits", [_primary("OFFSET_LIST"), _table([("MJD_OBS", "D", [1.0])])])
    with pytest.raises(figures.QCInputError, match=r"OFFSET_LIST\.fits: no table with column\(s\) RA_OFFSET"):
        figures.alignment_offsets(path, tmp_path / "offsets.png")


def test_report_command_builds_the_page_from_the_config_files(report, tmp_path, capsys):
    from pymusepipe.cli import main
    from pymusepipe.config import CALIB_KEYS

    layout, page = report
    musecalib = tmp_path / "cal"
    musecalib.mkdir()
    for _, _, name in CALIB_KEYS.values():
        (musecalib / name).write_bytes(b"")  # the report only needs the config to be valid, not the files
    rc = tmp_path / "rc.dic"
    rc.write_text(f"musecalib {musecalib}\nroot {layout.root}\n")
    cal = tmp_path / "calib_tables.dic"
    cal.write_text("".join(f"{key} {name}\n" for key, (_, _, name) in CALIB_KEYS.items()))
    output = tmp_path / "copy"
    assert main(["report", "--rc", str(rc), "--cal", str(cal), "--target", "QCTEST", "--pointing", "1",
                 "--output", str(output)]) == 0
    assert f"QC report: {output / 'index.html'}" in capsys.readouterr().out
    assert len(list(output.glob("*.png"))) == 9
    # A pointing that does not exist: a clear message and exit 1, nothing written.
    assert main(["report", "--rc", str(rc), "--cal", str(cal), "--target", "QCTEST", "--pointing", "7"]) == 1
    assert "no pointing folder" in capsys.readouterr().err
