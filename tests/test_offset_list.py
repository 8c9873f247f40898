"""OFFSET_LIST writer / reader / validator / merger against what the MUSE recipes accept."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from pymusepipe.alignment import (OffsetListError, exp_align_is_reliable, merge_offset_lists, read_offset_list, validate_offset_list,
                                  write_offset_list)

DATES = ["2023-02-25T02:24:00.000", "2023-02-25T02:52:48.000", "2023-02-25T03:21:36.000"]


def _rows():
    return [dict(DATE_OBS=date, MJD_OBS=60000.1 + 0.02 * index, RA_OFFSET=index * 1e-4,
                 DEC_OFFSET=-index * 2e-4, FLUX_SCALE=1.0 + 0.1 * index)
            for index, date in enumerate(DATES)]


def test_written_file_has_the_column_types_the_recipes_check(tmp_path):
    path = tmp_path / "OFFSET_LIST.fits"
    write_offset_list(_rows(), path)
    with fits.open(path) as hdul:
        assert hdul[0].header["HIERARCH ESO PRO CATG"] == "OFFSET_LIST"
        table_hdu = hdul[1]
        assert isinstance(table_hdu, fits.BinTableHDU)
        assert "EXTNAME" not in table_hdu.header
        formats = {column.name: column.format for column in table_hdu.columns}
        assert formats["DATE_OBS"] == "23A"
        for name in ("MJD_OBS", "RA_OFFSET", "DEC_OFFSET", "FLUX_SCALE"):
            assert formats[name] == "D", name
        assert table_hdu.columns["RA_OFFSET"].unit == "deg"
        assert list(table_hdu.data["DATE_OBS"]) == DATES


def test_align_table_is_translated_and_float32_is_coerced(tmp_path):
    table = Table(dict(filename=["a.fits", "b.fits"], date_obs=DATES[:2], mjd_obs=[60000.1, 60000.12],
                       ra_offset=np.array([1e-4, 2e-4], np.float32), dec_offset=[0.0, 1e-4],
                       ra_offset_arcsec=[0.31, 0.62], flux_scale=[1.0, 1.2], background=[0.5, -0.3],
                       quality=[0, 2]))
    path = tmp_path / "offsets.fits"
    write_offset_list(table, path)
    back = read_offset_list(path)
    assert back["RA_OFFSET"].dtype.kind == "f" and back["RA_OFFSET"].dtype.itemsize == 8
    assert "RA_OFFSET_ARCSEC" not in back.colnames  # human-facing columns stay out of the file
    np.testing.assert_allclose(back["BACKGROUND"], [0.5, -0.3])
    assert list(back["QUALITY"]) == [0, 2]
    assert back.meta["ESO PRO CATG"] == "OFFSET_LIST"


def test_missing_flux_scale_is_written_as_nan(tmp_path):
    rows = [{key: value for key, value in row.items() if key != "FLUX_SCALE"} for row in _rows()]
    write_offset_list(rows, tmp_path / "x.fits")
    back = read_offset_list(tmp_path / "x.fits")
    assert np.all(np.isnan(back["FLUX_SCALE"]))


@pytest.mark.parametrize("mutation, message", [
    (lambda t: t.remove_column("RA_OFFSET"), "missing required column RA_OFFSET"),
    (lambda t: t.replace_column("DEC_OFFSET", t["DEC_OFFSET"].astype(np.float32)), "must be float64"),
    (lambda t: t.replace_column("DATE_OBS", ["2023-02-25"] * 3), "DATE_OBS '2023-02-25' has 10 characters"),
    (lambda t: t.replace_column("DATE_OBS", [DATES[0]] * 3), "not unique"),
    (lambda t: t.replace_column("RA_OFFSET", [0.0, 2.0 / 3600 * 100, 0.0]), "offsets are in degrees"),
    (lambda t: t.replace_column("FLUX_SCALE", [1.0, -1.0, 1.0]), "negative FLUX_SCALE"),
])
def test_validation_names_what_the_recipes_would_silently_ignore(mutation, message):
    table = Table(rows=_rows())
    mutation(table)
    with pytest.raises(OffsetListError, match=message):
        validate_offset_list(table)


def test_date_obs_matching_uses_the_first_23_characters():
    table = Table(rows=_rows())
    validate_offset_list(table, expected_date_obs=[date + "9" for date in DATES])  # longer keys still match
    with pytest.raises(OffsetListError, match="matches 0 rows"):
        validate_offset_list(table, expected_date_obs=["2023-02-26T00:00:00.000"])


def test_invalid_table_is_never_written(tmp_path):
    rows = _rows()
    rows[1]["DATE_OBS"] = rows[0]["DATE_OBS"]
    with pytest.raises(OffsetListError):
        write_offset_list(rows, tmp_path / "bad.fits")
    assert not (tmp_path / "bad.fits").exists()


def test_reader_accepts_a_muse_exp_align_like_table(tmp_path):
    columns = [fits.Column(name="DATE_OBS", format="23A", array=DATES[:2]),
               fits.Column(name="MJD_OBS", format="D", unit="s", array=[60000.1, 60000.12]),
               fits.Column(name="RA_OFFSET", format="D", unit="deg", array=[0.0, 1e-4]),
               fits.Column(name="DEC_OFFSET", format="D", unit="deg", array=[0.0, -2e-4]),
               fits.Column(name="FLUX_SCALE", format="D", array=[np.nan, np.nan])]
    primary = fits.PrimaryHDU()
    primary.header["HIERARCH ESO PRO CATG"] = "OFFSET_LIST"
    path = tmp_path / "OFFSET_LIST.fits"
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns)]).writeto(path)
    table = read_offset_list(path)
    assert list(table["DATE_OBS"]) == DATES[:2]
    assert table["RA_OFFSET"][1] == 1e-4


def test_merge_anchors_relative_offsets_on_absolute_ones():
    relative = Table(dict(DATE_OBS=DATES, RA_OFFSET=[0.0, 1e-4, -2e-4], DEC_OFFSET=[0.0, 3e-4, 1e-4],
                          FLUX_SCALE=[np.nan] * 3))
    anchor = np.array([5e-4, -4e-4])
    # absolute measurements of exposures 2 and 3 only; exposure 3's is flagged and must not be used
    absolute = Table(dict(DATE_OBS=DATES[1:], RA_OFFSET=[1e-4 + anchor[0], 9.0e-3],
                          DEC_OFFSET=[3e-4 + anchor[1], 9.0e-3], FLUX_SCALE=[1.1, 0.9], QUALITY=[0, 4]))
    merged = merge_offset_lists(relative, absolute, prefer="relative")
    by_date = {row["DATE_OBS"]: row for row in merged}
    np.testing.assert_allclose(by_date[DATES[0]]["RA_OFFSET"], anchor[0], atol=1e-12)
    np.testing.assert_allclose(by_date[DATES[2]]["DEC_OFFSET"], 1e-4 + anchor[1], atol=1e-12)
    assert by_date[DATES[2]]["SOURCE"] == "relative+anchor"
    assert by_date[DATES[1]]["FLUX_SCALE"] == pytest.approx(1.1)
    validate_offset_list(merged, expected_date_obs=DATES)


def test_merge_prefers_absolute_and_applies_manual_overrides_last():
    relative = Table(dict(DATE_OBS=DATES[:2], RA_OFFSET=[0.0, 1e-4], DEC_OFFSET=[0.0, 1e-4]))
    absolute = Table(dict(DATE_OBS=DATES[:2], RA_OFFSET=[2e-4, 3.5e-4], DEC_OFFSET=[0.0, 1e-4],
                          FLUX_SCALE=[1.0, 1.3]))
    overrides = {DATES[1]: {"flux_scale": 1.5}, DATES[2]: {"ra_offset": 1e-5, "dec_offset": -1e-5}}
    merged = merge_offset_lists(relative, absolute, overrides=overrides)
    by_date = {row["DATE_OBS"]: row for row in merged}
    assert by_date[DATES[1]]["RA_OFFSET"] == pytest.approx(3.5e-4)  # measured absolute kept
    assert by_date[DATES[1]]["FLUX_SCALE"] == pytest.approx(1.5)
    assert by_date[DATES[1]]["SOURCE"] == "manual"
    assert by_date[DATES[2]]["RA_OFFSET"] == pytest.approx(1e-5)
    with pytest.raises(OffsetListError, match="unknown column"):
        merge_offset_lists(relative, overrides={DATES[0]: {"ra": 1.0}})


def test_exp_align_qc_guard():
    table = Table(rows=_rows())
    assert not exp_align_is_reliable(table)[0]  # no QC keywords at all
    table.meta.update({"ESO QC EXPALIGN NMATCH MIN": 3, "ESO QC EXPALIGN NOMATCH": 0})
    reliable, reason = exp_align_is_reliable(table)
    assert not reliable and "NMATCH MIN = 3" in reason
    table.meta.update({"ESO QC EXPALIGN NMATCH MIN": 12, "ESO QC EXPALIGN NOMATCH": 1})
    assert not exp_align_is_reliable(table)[0]
    table.meta["ESO QC EXPALIGN NOMATCH"] = 0
    assert exp_align_is_reliable(table)[0]
