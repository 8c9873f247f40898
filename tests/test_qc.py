"""The QC report of a reduced pointing: every linked figure exists and is a non-empty PNG.

The pointing is made by this test: small product files with the structure of the real ones (extensions,
table columns, WCS keywords, QC keywords as muse_* write them), registered in the products catalogue the way
the engine does; the OFFSET_LIST sits in ``Alignment/`` unregistered, as the alignment module leaves it, to
exercise finding products by name. Building the report takes a few seconds (matplotlib), no esorex.

:func:`make_site` makes a whole reduction: a night with its masters and standard star, a pointing in WFM-AO-N
with its sky and final cube, and a target with its reference image, OFFSET_LIST and mosaic, so that the four
pages (night, pointing, target, sample) are tested on what they show; ``test_report_browser.py`` opens them in
Chromium.
"""
import os
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
    # The cube is registered by no step: no final cube for the sky residuals, and the page says so.
    assert "skipped: no final cube (combine_pointing or scipost) registered in this pointing yet" in text
    assert "ESO QC BIAS MASTER1 RON" in text and "ESO QC EXPALIGN NMATCH MIN" in text
    assert "no job table" in text  # no *_jobs.fits in this pointing
    assert "TWILIGHT_CUBE" not in text  # a night's product: the pointing page does not ask for it
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


# ---------------------------------------------------------------------------------------------- a whole site
NIGHT = "2026-03-14"
EXPOSURE = "2026-03-15T03:18:06.689"
RA0, DEC0, SPAXEL = 150.0, 2.0, 0.2 / 3600.0


def _celestial(header, ny, nx, ra=RA0, dec=DEC0):
    header.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
                   "CRPIX1": (nx + 1) / 2.0, "CRPIX2": (ny + 1) / 2.0, "CRVAL1": ra, "CRVAL2": dec,
                   "CD1_1": -SPAXEL, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": SPAXEL})
    return header


def _image(path, data, tag, ra=RA0, dec=DEC0, mode="WFM-AO-N"):
    header = _celestial(fits.Header({"BUNIT": "10**(-20)*erg/s/cm**2/Angstrom"}), *data.shape, ra=ra, dec=dec)
    primary = _primary(tag)
    primary.header["HIERARCH ESO INS MODE"] = mode
    return _write(path, [primary, fits.ImageHDU(data.astype(np.float32), header=header, name="DATA")])


def _cube(path, tag, stars, shape=(30, 40), mode="WFM-AO-N", sky_residual=0.05):
    """A sky-subtracted cube 5500-6500 Angstrom in 2.5 Angstrom steps, NaN in the NaD notch of ``mode``."""
    wavelength = 5500.0 + 2.5 * np.arange(400)
    image = _gaussian_image(shape, stars) - 1.0
    cube = image[None] * np.linspace(1.0, 0.8, wavelength.size)[:, None, None] + sky_residual
    cube += np.random.default_rng(5).normal(0, 0.02, cube.shape)
    notch = figures.NAD_NOTCH.get(mode)
    if notch is not None:
        cube[(wavelength >= notch[0]) & (wavelength <= notch[1])] = np.nan
    header = _cube_header(wavelength.size, start=5500.0, step=2.5)
    _celestial(header, *shape)
    primary = _primary(tag)
    primary.header["HIERARCH ESO INS MODE"] = mode
    primary.header["DATE-OBS"] = EXPOSURE
    return _write(path, [primary, fits.ImageHDU(cube.astype(np.float32), header=header, name="DATA")])


def _recorded_now() -> str:
    """When the engine records a job: after its products were written."""
    import datetime

    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    return moment.isoformat(timespec="seconds")


class _Recorder:
    """Writes job and products tables the way the engine does (paths relative to the data root)."""

    def __init__(self, root):
        self.root = root

    def job(self, area, recipe, job, step, products, *, inputs=(), calibrations=None, note="", date_obs=""):
        import json

        from pymusepipe.products import JobRecord, JobTable

        catalogue = ProductCatalogue(area.folder("astro_tables", create=True), root=self.root)
        records = []
        for tag, path, qualifier in products:
            stat = path.stat()
            records.append(ProductRecord(tag=tag, path=str(path), mjd=61114.1, date_obs=date_obs, ifu=1, job=job,
                                         recipe=recipe, step=step, qualifier=qualifier, night=NIGHT,
                                         size=stat.st_size, mtime_ns=stat.st_mtime_ns))
        catalogue.register(job, records)
        catalogue.save(recipe)
        table = JobTable(area.folder("astro_tables"), recipe, root=self.root)
        table.update(JobRecord(
            job=job, recipe=recipe, step=step, area=area.name, status="done", started=_recorded_now(),
            inputs=json.dumps([str(path) for path in inputs]),
            calibrations=json.dumps({tag: {"paths": [str(path)], "delta_days": 0.3, "rule": "closest in time"}
                                     for tag, path in (calibrations or {}).items()}),
            products=json.dumps([str(path) for _, path, _ in products]), note=note,
            esorex_log=str(area.folder("esorex_log") / f"{job}.log")))
        table.save()


def make_site(root: Path) -> PointingLayout:
    """A reduction with all four pages: night (masters, standard), pointing (sky, final cube in WFM-AO-N),
    target (reference image, target OFFSET_LIST, mosaic). Returns the pointing."""
    from pymusepipe.state import PointingState, StepStatus

    rng = np.random.default_rng(11)
    record = _Recorder(root)
    layout = PointingLayout(root, "QCSITE", 1)
    layout.create_working_folders()
    night = layout.night_layout(NIGHT)
    night.create_working_folders()
    raw = layout.folder("raw", create=True) / f"MUSE.{EXPOSURE}.fits"
    raw.write_bytes(b"\0" * 2880)

    # --- night: masters and standard star
    bias = _write(night.master_folder("Bias", create=True) / f"MASTER_BIAS_{LABEL}-01.fits",
                  [_primary("MASTER_BIAS", **{"BIAS INPUT1 NSATURATED": 0, "BIAS MASTER1 RON": 2.4}),
                   fits.ImageHDU(rng.normal(0, 2.4, (256, 256)).astype(np.float32), name="DATA")])
    record.job(night, "muse_bias", "muse_bias_n1", "bias", [("MASTER_BIAS", bias, "")])
    data, edges = _slices_flat()
    flat = _write(night.master_folder("Flat", create=True) / f"MASTER_FLAT_{LABEL}-01.fits",
                  [_primary("MASTER_FLAT", **{"FLAT MASTER MEDIAN": 1.0}), fits.ImageHDU(data, name="DATA")])
    trace = _write(night.master_folder("Trace", create=True) / f"TRACE_TABLE_{LABEL}-01.fits",
                   [_primary("TRACE_TABLE"), _trace_table(edges)])
    record.job(night, "muse_flat", "muse_flat_n1", "flat", [("MASTER_FLAT", flat, ""), ("TRACE_TABLE", trace, "")],
               calibrations={"MASTER_BIAS": bias})
    wave_qc = {f"WAVECAL SLICE{n} FIT RMS": 0.011 for n in range(1, 5)}
    wave_qc.update({f"WAVECAL SLICE{n} LINES NID": 60 for n in range(1, 5)})
    wavecal = _write(night.master_folder("Wave", create=True) / f"WAVECAL_TABLE_{LABEL}-01.fits",
                     [_primary("WAVECAL_TABLE", **wave_qc), _table([("SliceNo", "J", [1, 2, 3, 4])])])
    lines = np.linspace(4800, 9300, 60)
    residual_rows = [(s, it, line, rng.normal(0, 0.02 if it == 2 else 0.2), 0.06)
                     for s in (1, 2) for it in (1, 2) for line in lines]
    # Named like nothing else on purpose: the figure must find it through the products table (same job).
    residuals = _write(night.master_folder("Wave") / "residuals_of_the_wavecal.fits",
                       [_primary("WAVECAL_RESIDUALS"),
                        _table([("slice", "B", [r[0] for r in residual_rows]),
                                ("iteration", "J", [r[1] for r in residual_rows]),
                                ("lambda", "E", [r[2] for r in residual_rows]),
                                ("residual", "D", [r[3] for r in residual_rows]),
                                ("rejlimit", "D", [r[4] for r in residual_rows])])])
    record.job(night, "muse_wavecal", "muse_wavecal_n1", "wave",
               [("WAVECAL_TABLE", wavecal, ""), ("WAVECAL_RESIDUALS", residuals, "")],
               calibrations={"MASTER_BIAS": bias, "TRACE_TABLE": trace})
    offsets = np.linspace(-7.5, 7.5, 151)
    lsf = np.exp(-offsets[None, None, :] ** 2 / (2 * np.linspace(1.2, 1.4, 10)[None, :, None] ** 2)).repeat(4, axis=0)
    lsf_path = _write(night.master_folder("Lsf", create=True) / f"LSF_PROFILE_{LABEL}-01.fits",
                      [_primary("LSF_PROFILE"), fits.ImageHDU(lsf.astype(np.float32), name="LSF_PROFILE", header=
                                                              fits.Header({"CRPIX1": 1.0, "CRVAL1": -7.5, "CD1_1": 0.1,
                                                                           "CRPIX2": 1.0, "CRVAL2": 4650.0,
                                                                           "CD2_2": 500.0}))])
    record.job(night, "muse_lsf", "muse_lsf_n1", "lsf", [("LSF_PROFILE", lsf_path, "")])
    wavelength = np.arange(4750.0, 9350.0, 5.0)
    response = _write(night.master_folder("Std", create=True) / "STD_RESPONSE_2026-03-15T01:33:54_0001.fits",
                      [_primary("STD_RESPONSE", **{"STANDARD THRU7000": 0.029}),
                       _table([("lambda", "D", wavelength), ("response", "D", 40 + np.sin(wavelength / 700.0)),
                               ("throughput", "D", 0.03 * np.exp(-((wavelength - 7000) / 2500) ** 2))])])
    telluric = _write(night.master_folder("Std") / "STD_TELLURIC_2026-03-15T01:33:54_0001.fits",
                      [_primary("STD_TELLURIC"), _table([("lambda", "D", wavelength),
                                                         ("ftelluric", "D", np.where(np.abs(wavelength - 7600) < 40,
                                                                                     0.6, 1.0))])])
    record.job(night, "muse_standard", "muse_standard_n1", "standard",
               [("STD_RESPONSE", response, ""), ("STD_TELLURIC", telluric, "")])

    # --- pointing: pixel table, sky, one exposure, the combined cube, the OFFSET_LIST
    pixtable = _write(layout.folder("object") / "PIXTABLE_OBJECT_0001-01.fits", [_primary("PIXTABLE_OBJECT")])
    record.job(layout, "muse_scibasic", "muse_scibasic_p1", "scibasic_all", [("PIXTABLE_OBJECT", pixtable, "")],
               inputs=[raw], calibrations={"MASTER_BIAS": bias, "MASTER_FLAT": flat, "TRACE_TABLE": trace,
                                           "WAVECAL_TABLE": wavecal}, date_obs=EXPOSURE)
    sky_wavelength = np.arange(4750.0, 9350.0, 1.25)
    sky_lines = [("OI", 5577.339, 500.0), ("OI", 6300.304, 200.0)]
    sky = 10.0 + sum(flux * np.exp(-(sky_wavelength - where) ** 2 / 8.0) for _, where, flux in sky_lines)
    spectrum = _write(layout.folder("sky") / "SKY_SPECTRUM_0002.fits",
                      [_primary("SKY_SPECTRUM"), _table([("lambda", "D", sky_wavelength), ("data", "D", sky)])])
    lines_path = _write(layout.folder("sky") / "SKY_LINES_0002.fits",
                        [_primary("SKY_LINES"), _table([("name", "8A", [n for n, _, _ in sky_lines]),
                                                        ("lambda", "D", [w for _, w, _ in sky_lines]),
                                                        ("flux", "D", [f for _, _, f in sky_lines])])])
    record.job(layout, "muse_create_sky", "muse_create_sky_p2", "sky",
               [("SKY_SPECTRUM", spectrum, ""), ("SKY_LINES", lines_path, "")], calibrations={"LSF_PROFILE": lsf_path},
               note="offset-sky exposure")
    stars = [(10, 12, 50.0), (20, 30, 20.0)]
    exposure_image = _image(layout.folder("object") / "IMAGE_FOV_white_0001.fits", _gaussian_image((30, 40), stars),
                            "IMAGE_FOV")
    exposure_cube = _cube(layout.folder("object") / "DATACUBE_FINAL_0001.fits", "DATACUBE_FINAL", stars)
    record.job(layout, "muse_scipost", "muse_scipost_p1", "scipost",
               [("DATACUBE_FINAL", exposure_cube, ""), ("IMAGE_FOV", exposure_image, "white")], inputs=[pixtable],
               calibrations={"SKY_LINES": lines_path, "STD_RESPONSE": response},
               note="sky: the SKY exposure of its night nearest in time: 2026-03-15T03:29:06.689, 11 min away; "
                    "OFFSET_LIST OFFSET_LIST_QCSITE_P01.fits", date_obs=EXPOSURE)
    combined = _cube(layout.folder("object") / "DATACUBE_FINAL_QCSITE_P01.fits", "DATACUBE_FINAL", stars)
    combined_image = _image(layout.folder("object") / "IMAGE_FOV_white_QCSITE_P01.fits",
                            _gaussian_image((30, 40), stars), "IMAGE_FOV")
    record.job(layout, "muse_exp_combine", "muse_exp_combine_p", "combine_pointing",
               [("DATACUBE_FINAL", combined, ""), ("IMAGE_FOV", combined_image, "white")],
               inputs=[exposure_cube])
    state = PointingState(layout.folder("astro_tables"), root)
    for step in ("scibasic_all", "sky", "scipost", "combine_pointing"):
        state.set_step(StepStatus(step, "done", "1 done", 10.0, jobs=1))

    # --- target: reference image, target OFFSET_LIST, mosaic
    reference = _image(root / "reference" / "REF_R.fits", _gaussian_image((60, 80), [(25, 32, 40.0), (35, 50, 15.0)]),
                       "REFERENCE")
    target_dir = root / "QCSITE"
    _write(target_dir / "Alignment" / "OFFSET_LIST_QCSITE.fits",
           [fits.PrimaryHDU(), _table([("DATE_OBS", "23A", [EXPOSURE]), ("MJD_OBS", "D", [61114.138]),
                                       ("RA_OFFSET", "D", [1.5e-4]), ("DEC_OFFSET", "D", [-0.8e-4]),
                                       ("FLUX_SCALE", "D", [1.05]), ("QUALITY", "10A", ["ok"]),
                                       ("FILENAME", "80A", [str(exposure_image.relative_to(root))])])])
    combined_area = type("Area", (), {})()
    combined_area.folder = lambda key, create=False: (target_dir / "Combined" / {"astro_tables": "Astro_Tables",
                                                                                 "esorex_log": "Esorex_log"}[key])
    combined_area.name = "QCSITE (target)"
    mosaic = _cube(target_dir / "Combined" / "DATACUBE_FINAL_QCSITE.fits", "DATACUBE_FINAL", stars)
    mosaic_image = _image(target_dir / "Combined" / "IMAGE_FOV_white_QCSITE.fits", _gaussian_image((30, 40), stars),
                          "IMAGE_FOV")
    (target_dir / "Combined" / "Astro_Tables").mkdir(parents=True, exist_ok=True)
    record.job(combined_area, "muse_exp_combine", "muse_exp_combine_QCSITE", "mosaic",
               [("DATACUBE_FINAL", mosaic, ""), ("IMAGE_FOV", mosaic_image, "white")], inputs=[combined])
    target_state = PointingState(target_dir / "Combined" / "Astro_Tables", root)
    target_state.set("reference_image", reference, step="align_target", note="given by the user")
    target_state.set_step(StepStatus("mosaic", "done", "1 done", 30.0, jobs=1))
    return layout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from pymusepipe.qc.report import refresh_report

    root = tmp_path_factory.mktemp("site")
    layout = make_site(root)
    page = refresh_report(layout)
    yield layout, page
    shutil.rmtree(root, ignore_errors=True)


def _section(text, anchor):
    return text.split(f"id='{anchor}'")[1].split("<h2")[0]


def test_night_page_shows_masters_their_qc_and_who_used_them(site):
    layout, _ = site
    page = layout.night_layout(NIGHT).folder("figures") / "index.html"
    text = page.read_text()
    made = _section(text, "calibrations-made")
    # The master's own QC first, the input frames' statistics after.
    assert made.index("BIAS MASTER1 RON = 2.4") < made.index("BIAS INPUT1 NSATURATED = 0")
    used = _section(text, "used-by")
    assert "QCSITE/P01" in used and "muse_scibasic_p1" in used and "closest in time" in used
    assert "muse_flat_n1" in used  # the night's own jobs use the master bias too
    # The wavelength figure found WAVECAL_RESIDUALS through the products table (same job), whatever its name.
    wave = _section(text, "wavelength-calibration")
    assert "residuals_of_the_wavecal.fits" in wave and "<img" in wave
    assert "<img" in _section(text, "standard-star-response") and "STD_TELLURIC" in _section(
        text, "standard-star-response")
    assert "figure failed" not in text


def test_pointing_page_shows_status_sky_used_and_residuals(site):
    layout, page = site
    text = page.read_text()
    status = _section(text, "status")
    assert "Overall: <span class='incomplete'>incomplete</span>" in status  # flat, wave... never ran here
    assert "stale" not in status.split("</p>", 1)[1]
    sky = _section(text, "sky-spectrum")
    assert EXPOSURE in sky and "the SKY exposure of its night nearest in time" in sky
    assert "offset-sky exposure: <a href='#SKY_SPECTRUM_0002'>SKY_SPECTRUM_0002.fits</a>" in sky
    residuals = _section(text, "sky-residuals")
    assert "DATACUBE_FINAL_QCSITE_P01_skyresidual.png" in residuals
    assert "NaD notch of WFM-AO-N (5805-5966 Angstrom) shaded" in residuals
    # The night's masters are on the night page, not here.
    assert "id='master-bias'" not in text
    assert f"Calibrations/{NIGHT}/Figures/index.html" in text


def test_target_page_shows_alignment_and_mosaic(site):
    layout, _ = site
    page = layout.root / "QCSITE" / "Combined" / "Figures" / "index.html"
    text = page.read_text()
    assert text.count("<img") == 4 and "skipped:" not in text and "figure failed" not in text
    offsets = _section(text, "offsets-and-flux-scales")
    assert "<td>0.540</td><td>-0.288</td><td>1.050</td><td>ok</td>" in offsets  # arcsec, flux scale, quality
    assert "P01" in offsets and "IMAGE_FOV_white_0001.fits" in offsets
    sample = (layout.root / "Figures" / "index.html").read_text()
    assert "QCSITE" in sample and "QCSITE/Combined/Figures/index.html" in sample and NIGHT in sample


def test_refresh_redraws_only_what_changed(site):
    from pymusepipe.qc.report import refresh_report

    layout, page = site
    pngs = sorted(layout.root.rglob("Figures/*.png"))
    before = {png: png.stat().st_mtime_ns for png in pngs}
    refresh_report(layout)
    assert {png: png.stat().st_mtime_ns for png in pngs} == before
    spectrum = layout.folder("sky") / "SKY_SPECTRUM_0002.fits"
    later = spectrum.stat().st_mtime + 10
    os.utime(spectrum, (later, later))
    refresh_report(layout)
    changed = {png.name for png in pngs if png.stat().st_mtime_ns != before[png]}
    assert changed == {"SKY_SPECTRUM_0002.png"}


def test_refresh_after_run_never_fails_the_run(tmp_path, caplog):
    from pymusepipe.qc.report import refresh_after_run

    layout = PointingLayout(tmp_path, "GONE", 1)  # no pointing folder: the page cannot be written
    assert refresh_after_run(layout, enabled=False) is None
    assert refresh_after_run(layout) is None
    assert "QC report of GONE/P01 not refreshed: FileNotFoundError" in caplog.text
