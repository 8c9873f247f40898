"""Programmes of the simulator without esorex: options, layout of the files, headers, truth, AO and NFM
modes, the reference image, archive masters, compression and memory per IFU.

Most checks run on header-only programmes (full headers, 1x1-pixel CCD images), which take seconds; pixel
content is checked by rendering single CCDs or slices."""
import dataclasses
import json
import os
import tracemalloc
from collections import Counter, defaultdict

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe import instrument
from pymusepipe.simulate import (NightPlan, ObservingBlock, Programme, ReferenceImagePlan, SimulationError,
                                 TargetPlan, command, detector, example_programme, load_programme, render,
                                 demo_programme, simulate_programme, spectra, survey_programme,
                                 write_archive_masters)
from pymusepipe.simulate import run as run_module
from pymusepipe.simulate.model import RAW_NX, RAW_NY, InstrumentModel
from pymusepipe.simulate.observing import Exposure, primary_header
from pymusepipe.simulate.scene import ExposureConditions, SkyScene

#: muse_scipost's sky on the object field: the darkest --skymodel_fraction after ignoring --skymodel_ignore.
SKYMODEL_FRACTION, SKYMODEL_IGNORE = 0.10, 0.05


def _night(date="2026-03-14", **kw):
    return NightPlan(date, **kw)


def _one_target(**kw):
    return TargetPlan("T", blocks=[ObservingBlock(night=0)], **kw)


# -- options -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("programme, message", [
    (Programme([_night("2026/03/14")], [_one_target()]), r"nights\[0\].date"),
    (Programme([_night(mode="WFM")], [_one_target()]), r"nights\[0\].mode"),
    (Programme([_night(seeing=5.0)], [_one_target()]), r"nights\[0\].seeing"),
    (Programme([_night("2026-03-15"), _night("2026-03-14")], [_one_target()]), "in order"),
    (Programme([_night()], [TargetPlan("T", blocks=[ObservingBlock(night=1)])]), r"blocks\[0\].night"),
    (Programme([_night()], [TargetPlan("T", pointings=1, blocks=[ObservingBlock(night=0, pointing=2)])]),
     r"blocks\[0\].pointing"),
    (Programme([_night()], [TargetPlan("T", blocks=[ObservingBlock(night=0, exposures=1)])]), "at least 2"),
    (Programme([_night()], [TargetPlan("T", pointings=2, blocks=[ObservingBlock(night=0)])]),
     "pointing 2 has no observing block"),
    (Programme([_night()], [_one_target(), _one_target()]), "unique"),
    (Programme([_night()], [TargetPlan("a b", blocks=[ObservingBlock(night=0)])]), "name"),
    (Programme([_night()], [_one_target(disc="spiral")]), "disc"),
    (Programme([_night()], [_one_target()], calibration_raw="archive"), "calibration_raw"),
    (Programme([_night()], [_one_target()], ifus=(0,)), "1-24"),
    (Programme([_night()], [_one_target()], ifus=(3, 3)), "unique"),
    (Programme([_night()], [_one_target()], seed=-1), "seed"),
    (Programme([_night()], [_one_target()], psf_beta=1.0), "psf_beta"),
    (Programme([_night(), _night("2026-03-15")], [_one_target()]), r"nights\[1\].*calibration_raw='pointing'"),
    (Programme([_night(mode="NFM-AO-N")], [_one_target()]), "header_only=True"),
    (Programme([_night()], [_one_target(reference_image=ReferenceImagePlan(filter="Bessell_U"))]), "filter"),
    (Programme([_night()], [_one_target(reference_image=ReferenceImagePlan(pixel_scale=0.2))]), "pixel_scale"),
    (Programme([_night()], [_one_target(reference_image=ReferenceImagePlan(bunit="ADU"))]), "bunit"),
])
def test_bad_programmes_fail_before_writing(tmp_path, programme, message):
    out = tmp_path / "out"
    with pytest.raises(SimulationError, match=message):
        simulate_programme(out, programme)
    assert not out.exists()


def test_programme_json_round_trip_and_unknown_keys(tmp_path):
    programme = example_programme(seed=4, calibration_raw="shared")
    path = tmp_path / "programme.json"
    path.write_text(json.dumps(programme.to_dict()))
    assert load_programme(path) == programme
    data = programme.to_dict()
    data["targets"][0]["blocks"][0]["exposure"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(SimulationError, match=r"targets\[0\].blocks\[0\].*exposure"):
        load_programme(path)
    path.write_text("{not json")
    with pytest.raises(SimulationError, match="not valid JSON"):
        load_programme(path)


def test_command_builds_shapes_and_prints_programme(tmp_path, capsys):
    import argparse
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "o"), "--nights", "2", "--obs-per-night", "2", "--no-offset-sky",
                              "--mode", "wfm-ao-e", "--ifus", "1-24", "--compress", "--print-programme"])
    assert command.run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ifus"] == list(range(1, 25)) and printed["compress"] is True
    assert [n["mode"] for n in printed["nights"]] == ["WFM-AO-E"] * 2
    blocks = printed["targets"][0]["blocks"]
    assert len(blocks) == 4 and not any(b["offset_sky"] for b in blocks)
    assert not (tmp_path / "o").exists()
    programme_file = tmp_path / "p.json"
    programme_file.write_text(json.dumps(printed))
    args = parser.parse_args([str(tmp_path / "o"), "--programme", str(programme_file), "--ifus", "2"])
    assert command.build_programme(args).ifus == (2,)
    args = parser.parse_args([str(tmp_path / "o"), "--mode", "NFM-AO-N"])
    assert command.run(args) == 2                      # NFM pixels are not simulated: header-only only


# -- the example programme, header only ----------------------------------------------------------------
@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return simulate_programme(tmp_path_factory.mktemp("example") / "root", example_programme(header_only=True))


def _frames(result):
    """All distinct raw files (by inode) with their primary headers."""
    seen, out = set(), []
    for path in result.raw_files:
        inode = os.stat(path).st_ino
        if inode not in seen:
            seen.add(inode)
            out.append((path, fits.getheader(path)))
    return out


def test_every_night_has_its_calibration_set_mode_and_standard(example):
    frames = _frames(example)
    for night_index, night in enumerate(example.programme.nights):
        kinds = Counter()
        stds = set()
        for path, header in frames:
            truth = _entry(example, path)
            if truth["night"] != night_index:
                continue
            kinds[truth["kind"]] += 1
            assert header["ESO INS MODE"] == night.mode
            if truth["kind"] == "STD":
                stds.add(header["OBJECT"])
        assert kinds["BIAS"] == 3 and kinds["FLAT"] == 3 and kinds["ARC"] == 3 and kinds["SKYFLAT"] == 3
        assert kinds["STD"] == 1
        blocks = sum(1 for t in example.programme.targets for b in t.blocks if b.night == night_index)
        assert kinds["ILLUM"] == blocks
        assert len(stds) == 1
    # each night observes its own standard, listed in the kit's STD_FLUX_TABLE at the header's position
    names = [s["name"] for s in example.targets["TWONIGHTS"]["standard_stars"]]
    assert len(set(names)) == 2
    with fits.open(example.calibration_kit["STD_FLUX_TABLE"]) as hdul:
        assert set(names) <= {hdu.name for hdu in hdul[1:]}


def _entry(result, path):
    """The truth entry of a raw file (searched in every target's truth)."""
    relative = str(path.relative_to(result.root))
    for truth in result.targets.values():
        for entry in truth["exposures"]:
            if relative in entry["files"]:
                return entry
    raise KeyError(relative)


def test_files_go_where_an_archive_download_puts_them(example):
    root = example.root
    truths = example.targets
    for name, truth in truths.items():
        nights = {n["index"] for n in truth["nights"]}
        for entry in truth["exposures"]:
            if entry["kind"] in ("OBJECT", "SKY", "ILLUM"):
                assert entry["files"] == [f"{name}/P{entry['pointing']:02d}/Raw/{os.path.basename(entry['file'])}"]
            else:
                # the night's calibrations are in every pointing observed that night (hard links)
                observed = {f"{t}/P{e['pointing']:02d}/Raw" for t, tr in truths.items()
                            for e in tr["exposures"] if e["kind"] == "OBJECT" and e["night"] == entry["night"]}
                assert {os.path.dirname(f) for f in entry["files"]} == observed
                inodes = {os.stat(root / f).st_ino for f in entry["files"]}
                assert len(inodes) == 1
            assert entry["night"] in nights
    assert not (root / "Calibrations").exists()
    # MOSAIC P02 was observed on night 0 only: it has night 0's calibrations and no others
    p02 = {_entry(example, p)["night"] for p in (root / "MOSAIC" / "P02" / "Raw").iterdir()}
    assert p02 == {0}


def test_shared_calibrations_go_to_one_folder(tmp_path):
    programme = survey_programme(nights=2, calibration_raw="shared", header_only=True)
    result = simulate_programme(tmp_path / "root", programme)
    shared = sorted(p.name for p in (result.root / "Calibrations" / "Raw").iterdir())
    science = sorted(p.name for p in (result.root / "SIMGAL" / "P01" / "Raw").iterdir())
    assert not set(shared) & set(science)
    kinds = Counter(fits.getheader(result.root / "Calibrations" / "Raw" / n)["ESO DPR TYPE"] for n in shared)
    assert kinds == {"BIAS": 6, "FLAT,LAMP": 6, "WAVE": 6, "FLAT,SKY": 6, "STD": 2, "FLAT,LAMP,ILLUM": 2}
    assert {fits.getheader(result.root / "SIMGAL" / "P01" / "Raw" / n)["ESO DPR CATG"] for n in science} \
        == {"SCIENCE"}


def test_blocks_are_separate_templates_with_their_own_pointing_errors(tmp_path):
    result = simulate_programme(tmp_path / "root", survey_programme(nights=2, obs_per_night=2, header_only=True))
    truth = result.targets["SIMGAL"]
    objects = [e for e in truth["exposures"] if e["kind"] == "OBJECT"]
    by_block = defaultdict(list)
    for entry in objects:
        by_block[entry["block"]].append(entry)
    assert len(by_block) == 4
    starts = {b: {e["template"]["tpl_start"] for e in es} for b, es in by_block.items()}
    ids = {b: {e["template"]["obs_id"] for e in es} for b, es in by_block.items()}
    assert all(len(s) == 1 for s in starts.values()) and len({s.pop() for s in starts.values()}) == 4
    assert all(len(s) == 1 for s in ids.values()) and len({s.pop() for s in ids.values()}) == 4
    # the first block is the alignment reference; every other block has its own acquisition error
    ob_errors = [es[0]["ob_pointing_error_arcsec"]["east"] for _, es in sorted(by_block.items())]
    assert ob_errors[0] == 0.0 and all(abs(e) >= 0.3 for e in ob_errors[1:]) and len(set(ob_errors)) == 4
    for entry in objects:
        # the header pointing is the true one plus the recorded error
        header = fits.getheader(result.root / entry["file"])
        assert header["RA"] == pytest.approx(entry["ra_true"] + entry["pointing_error_deg"]["ra"], abs=1e-10)
        assert header["DEC"] == pytest.approx(entry["dec_true"] + entry["pointing_error_deg"]["dec"], abs=1e-10)
        assert header["ESO TEL AMBI FWHM START"] == pytest.approx(entry["seeing_fwhm_arcsec"], abs=1e-3)
        assert header["ESO TPL START"] == entry["template"]["tpl_start"]
        # conditions of the exposure scatter around those of its night
        night = truth["nights"][entry["night"]]
        if not entry["alignment_anchor"]:
            assert 0.97 * night["transparency_median"] - 1e-9 <= entry["transparency"] <= \
                night["transparency_median"] + 1e-9
        assert abs(entry["seeing_fwhm_arcsec"] / night["seeing_median"] - 1) <= 0.1 + 1e-9 or \
            entry["seeing_fwhm_arcsec"] in (0.5, 1.2)
        assert entry["airmass_mid"] < 1.01         # near transit, ~1 deg from the zenith


def test_offset_sky_only_in_blocks_that_have_one(example):
    assert not [e for e in example.targets["NOSKY"]["exposures"] if e["kind"] == "SKY"]
    demo = [e for e in example.targets["DEMO"]["exposures"] if e["kind"] in ("OBJECT", "SKY")]
    assert [e["kind"] for e in demo] == ["OBJECT", "SKY", "OBJECT"]
    assert len({e["template"]["tpl_start"] for e in demo}) == 1
    twonights = [e for e in example.targets["TWONIGHTS"]["exposures"] if e["kind"] == "SKY"]
    assert [e["night"] for e in twonights] == [0]


def _east(truth, ra):
    return (ra - truth["field_centre"]["ra"]) * 3600 * np.cos(np.radians(truth["field_centre"]["dec"]))


def test_enough_stars_in_the_overlap_of_every_aligned_pair_also_across_nights(example):
    """muse_exp_align on a 1-IFU strip: offsets along the strip and >= 10 stars in each pair's overlap
    (exp-align-and-sky.md), recounted here from the truth's star list and true pointings."""
    for name, truth in example.targets.items():
        objects = [e for e in truth["exposures"] if e["kind"] == "OBJECT"]
        for i, a in enumerate(objects):
            for b in objects[i + 1:]:
                if abs(a["pointing"] - b["pointing"]) > 1:
                    continue
                ea, eb = _east(truth, a["ra_true"]), _east(truth, b["ra_true"])
                low, high = max(ea, eb) - 30 + 1, min(ea, eb) + 30 - 1
                inside = [s for s in truth["point_sources"] if low < _east(truth, s["ra"]) < high
                          and abs(s["dec"] - a["dec_true"]) * 3600 < 1.25]
                assert len(inside) >= 10, (name, a["date_obs"], b["date_obs"])
            assert abs(a["pointing_error_arcsec"]["north"]) <= 0.1 and a["dither_arcsec"]["north"] == 0


def _source_to_sky(truth, entry, kit):
    """Source/sky ratio on the 60" x 2.5" strip of one exposure, recomputed from the truth alone."""
    east0, dec0 = _east(truth, entry["ra_true"]), entry["dec_true"]
    east, north = np.meshgrid(np.arange(-29.9, 30, 0.2) + east0, (np.arange(-1.2, 1.25, 0.2)))
    north_abs = north
    lam = fits.getdata(kit["EXTINCT_TABLE"], 1)
    k6500 = np.interp(6500.0, lam["lambda"], lam["extinction"])
    dim = entry["transparency"] * 10 ** (-0.4 * k6500 * entry["airmass_mid"])
    sigma = entry["psf_fwhm_arcsec"] / 2.3548
    source = np.zeros(east.shape)
    for star in truth["point_sources"]:
        d2 = (east - _east(truth, star["ra"])) ** 2 + (north_abs - (star["dec"] - dec0) * 3600) ** 2
        source += star["flux"]["white"] * 0.04 / (2 * np.pi * sigma ** 2) * np.exp(-0.5 * d2 / sigma ** 2)
    disc = truth["disc"]
    if disc:
        de, dn = east - _east(truth, disc["ra"]), north_abs - (disc["dec"] - dec0) * 3600
        pa, cos_i = np.radians(disc["position_angle"]), np.cos(np.radians(disc["inclination"]))
        major, minor = de * np.sin(pa) + dn * np.cos(pa), -de * np.cos(pa) + dn * np.sin(pa)
        source += disc["continuum_central"] * np.exp(-np.hypot(major, minor / cos_i) / disc["scale_length_arcsec"])
    sky = np.mean(spectra.sky_continuum(np.arange(4750.0, 9350.0, 5.0))) * 0.04
    return source * dim / sky


def test_fields_without_offset_sky_leave_empty_sky(example):
    """Without a SKY exposure the sky is fitted on the darkest spaxels of the field (muse_scipost
    --skymodel_fraction 0.10 after --skymodel_ignore 0.05): at least twice that share of the strip must be
    source-free (< 10% of the sky)."""
    need = 2 * (SKYMODEL_FRACTION + SKYMODEL_IGNORE)
    checked = 0
    for truth in example.targets.values():
        for entry in truth["exposures"]:
            if entry["kind"] != "OBJECT" or entry["offset_sky"]:
                continue
            ratio = _source_to_sky(truth, entry, example.calibration_kit)
            assert np.mean(ratio < 0.1) >= need, (truth["target"], entry["date_obs"])
            assert abs(np.mean(ratio < 0.1) - entry["sky_fraction"]["clean"]) < 0.05
            assert truth["disc"] is None or truth["disc"]["kind"] == "compact"
            checked += 1
    assert checked == 6    # NOSKY, TWONIGHTS on its second night, MOSAIC P02: two exposures each


def test_sky_lines_in_cube_units(example):
    """Per spaxel of the final cube: the injected surface brightness x 0.04 arcsec2, corrected for the
    extinction at the exposure's airmass (the pipeline corrects every pixel; the sky was never extincted)."""
    table = fits.getdata(example.calibration_kit["EXTINCT_TABLE"], 1)
    sky_lines = fits.getdata(example.calibration_kit["SKY_LINES"], "LINES")
    for truth in example.targets.values():
        for entry in truth["exposures"]:
            if entry["kind"] not in ("OBJECT", "SKY"):
                continue
            for line in sky_lines:
                k = np.interp(line["lambda"], table["lambda"], table["extinction"])
                expected = line["flux"] * 0.2 * 0.2 * 10 ** (0.4 * k * entry["airmass_mid"])
                assert entry["sky_line_flux_cube"][line["name"].strip()] == pytest.approx(expected, rel=1e-3)


def test_reference_image_has_its_own_scale_units_and_photometry(example):
    """Aperture sums of isolated stars in the reference image, converted back by the alignment module's
    reader, give the truth's flux through the band (Gaussian encircled energy accounted for)."""
    from pymusepipe.alignment.reference import read_reference
    truth = example.targets["MOSAIC"]
    info = truth["reference_image"]
    path = example.root / info["file"]
    header = fits.getheader(path)
    assert header["FILTER"] == info["filter"] == "SDSS_r" and header["BUNIT"] == "nanomaggy"
    assert abs(header["CD2_2"] * 3600 - 0.2) > 0.01
    reference = read_reference(path)
    assert reference.pivot_wavelength == pytest.approx(info["pivot_wavelength"])
    assert reference.pixel_scale == pytest.approx(info["pixel_scale_arcsec"], rel=1e-6)
    factor = 1.0 / info["muse_to_bunit"]
    background = info["background_bunit"] * factor
    sigma = info["psf_fwhm_arcsec"] / 2.3548
    radius = 1.4                                                       # arcsec: neighbours are >= 3" away
    enclosed = 1 - np.exp(-radius ** 2 / (2 * sigma ** 2))
    stars = truth["point_sources"]
    ny, nx = reference.data.shape
    yy, xx = np.mgrid[1:ny + 1, 1:nx + 1]
    checked = 0
    for star, ref in zip(stars, info["stars"]):
        others = [np.hypot((s["ra"] - star["ra"]) * np.cos(np.radians(star["dec"])), s["dec"] - star["dec"]) * 3600
                  for s in stars if s is not star]
        if min(others) < 4.0 or np.hypot(_east(truth, star["ra"]) - _east(truth, truth["disc"]["ra"]),
                                          (star["dec"] - truth["disc"]["dec"]) * 3600) < 12:
            continue
        r = np.hypot(xx - ref["x"], yy - ref["y"]) * info["pixel_scale_arcsec"]
        aperture = r < radius
        measured = (reference.data[aperture] - background).sum() / enclosed
        # pixelised aperture: the noise of the background-subtracted sum sets the tolerance
        noise = info["noise_bunit"] * factor * np.sqrt(aperture.sum())
        tolerance = max(0.01 * star["flux"]["SDSS_r"], 4 * noise) + 0.01 * star["flux"]["SDSS_r"]
        assert abs(measured - star["flux"]["SDSS_r"]) < tolerance, (measured, star["flux"]["SDSS_r"])
        checked += 1
    assert checked >= 8


def test_24_ifus_tile_the_field_and_every_file_has_24_channels(tmp_path):
    programme = Programme([_night()], [TargetPlan("FULL", blocks=[ObservingBlock(night=0)])],
                          ifus=tuple(range(1, 25)), header_only=True)
    result = simulate_programme(tmp_path / "root", programme)
    with fits.open(result.raw_files[0]) as hdul:
        assert [hdu.name for hdu in hdul[1:]] == [f"CHAN{i:02d}" for i in range(1, 25)]
        assert hdul[7].header["ESO DET CHIP INDEX"] == 7 and hdul[7].header["ESO DET OUT4 Y"] == 4112
    geometry = fits.getdata(result.calibration_kit["GEOMETRY_TABLE"], 1)
    model = InstrumentModel(ifus=tuple(range(1, 25)))
    extents = [model.ifu_focal_extent(i) for i in range(1, 25)]
    for lower, upper in zip(extents, extents[1:]):
        assert upper[2] == pytest.approx(lower[3], abs=1e-9)           # strips stacked without gap or overlap
    height = (extents[-1][3] - extents[0][2]) * 0.2
    width = (extents[0][1] - extents[0][0]) * 0.2
    assert height == pytest.approx(60.0, abs=0.1) and width == pytest.approx(60.0, abs=0.1)
    for ifu in range(1, 25):
        rows = geometry[geometry["SubField"] == ifu]
        assert len(rows) == 48
        assert Counter(np.round(rows["x"], 6)).most_common()[0][1] == 12      # 4 stacks of 12 slices
        assert rows["y"].min() >= extents[ifu - 1][2] and rows["y"].max() <= extents[ifu - 1][3]
    # with 24 IFUs the pointing is the centre of the whole field (where muse_scipost projects it)
    assert model.focal_centre[1] == pytest.approx(0.0, abs=1e-9)
    assert result.targets["FULL"]["ifus"] == list(range(1, 25))


def test_same_seed_same_headers_and_truth(tmp_path, example):
    again = simulate_programme(tmp_path / "again", example_programme(header_only=True))
    assert json.dumps(again.targets, sort_keys=True).replace(str(again.root), "") == \
        json.dumps(example.targets, sort_keys=True).replace(str(example.root), "")
    for first, second in zip(sorted(example.raw_files), sorted(again.raw_files)):
        a, b = fits.getheader(first), fits.getheader(second)
        a.remove("DATE", ignore_missing=True)
        b.remove("DATE", ignore_missing=True)
        assert a == b
    other = simulate_programme(tmp_path / "other", example_programme(header_only=True, seed=2))
    assert other.targets["DEMO"]["point_sources"] != example.targets["DEMO"]["point_sources"]


# -- AO and NFM ------------------------------------------------------------------------------------------------
def test_ao_and_nfm_headers_truth_and_kit(tmp_path):
    programme = Programme([_night("2026-03-14", mode="WFM-AO-N"), _night("2026-03-15", mode="WFM-AO-E"),
                           _night("2026-03-16", mode="NFM-AO-N")],
                          [TargetPlan("AO", blocks=[ObservingBlock(night=n) for n in range(3)])], header_only=True)
    result = simulate_programme(tmp_path / "root", programme)
    truth = result.targets["AO"]
    assert [line["lambda"] for line in truth["raman_lines"]] == [line[2] for line in spectra.raman_lines()]
    cal = dict(line.split() for line in result.cal_file.read_text().splitlines() if not line.startswith("#"))
    assert cal["raman_lines"] == "raman_lines.fits" and (result.musecalib / "raman_lines.fits").is_file()
    for entry in truth["exposures"]:
        header = fits.getheader(result.root / entry["file"])
        mode = header["ESO INS MODE"]
        assert mode == programme.nights[entry["night"]].mode
        on_sky = entry["kind"] in ("OBJECT", "SKY", "STD", "SKYFLAT")
        # WFM-AO: notch filter in MUSE's fore-optics (lamps too); NFM: in GALACSI (only light from the sky)
        expect_notch = entry["kind"] != "BIAS" and (on_sky or not mode.startswith("NFM"))
        assert (entry["notch_angstrom"] == list(instrument.NAD_NOTCH[mode])) == expect_notch, entry["kind"]
        assert entry["raman"] == (entry["kind"] in ("OBJECT", "SKY", "STD"))
        if entry["kind"] == "OBJECT":
            assert header["ESO TPL ID"].endswith("LGS") and "-ao_" in header["ESO TPL ID"]
            assert set(entry["raman_line_flux_cube"]) == {line[0] for line in spectra.raman_lines()}
        if mode.startswith("NFM"):
            assert header["ESO INS OPTI2 NAME"] == "NFM" and header["ESO TPL ID"].startswith("MUSE_nfm")
    nfm = fits.getheader(result.calibration_kit["ASTROMETRY_WCS_NFM"])
    assert nfm["CD2_2"] * 3600 == pytest.approx(instrument.SPAXEL_SCALE_NFM_MEASURED[1])


def test_raman_lines_sit_in_the_bands_muse_scipost_fits():
    lines = spectra.raman_lines()
    for group, (molecule, centre) in enumerate(instrument.RAMAN_BANDS.items()):
        band = [line for line in lines if line[1] == group]
        assert band and all(line[0].startswith(molecule) for line in band)
        # inside muse_scipost's default --raman_width=20 window, strongest line at the band centre
        assert all(abs(line[2] - centre) < 10.0 for line in band)
        assert max(band, key=lambda line: line[3])[2] == pytest.approx(centre, abs=0.01)
        assert sum(line[3] for line in band) == pytest.approx(spectra.RAMAN_BAND_FLUX[molecule])


@pytest.fixture(scope="module")
def ifu1():
    return InstrumentModel(ifus=(1,))


def test_notch_leaves_no_light_in_the_flagged_range(ifu1):
    flat = render.lamp_flat(ifu1, 1, notch="WFM-AO-N", scattered=0.0)
    plain = render.lamp_flat(ifu1, 1, scattered=0.0)
    low, high = instrument.NAD_NOTCH["WFM-AO-N"]
    for k in (0, 30):
        maps = ifu1.slice_maps(1, k)
        box = flat[:, maps.columns[0]:maps.columns[-1] + 1]
        ref = plain[:, maps.columns[0]:maps.columns[-1] + 1]
        lit = maps.illumination > 0.5
        inside = lit & (maps.wavelength > low) & (maps.wavelength < high)
        outside = lit & ((maps.wavelength < low - spectra.NOTCH_EDGE) | (maps.wavelength > high + spectra.NOTCH_EDGE))
        assert inside.sum() > 100 * 70
        # neighbouring slices' soft edges may add light below the 1e-6 level; the notch itself adds none
        assert np.all(box[inside] <= 1e-6 * ref[lit].max())
        np.testing.assert_allclose(box[outside], ref[outside], rtol=1e-6)
    arc = render.arc(ifu1, 1, "Ne", notch="WFM-AO-E")
    maps = ifu1.slice_maps(1, 10)
    low_e, high_e = instrument.NAD_NOTCH["WFM-AO-E"]
    column = maps.columns.size // 2
    rows = (maps.wavelength[:, column] > low_e) & (maps.wavelength[:, column] < high_e)
    # Ne 5852, 5882, 5945, 5976 lie in the WFM-AO-E notch: only the 5 e- floor is left
    assert arc[rows, maps.columns[column]].max() < 5.0 * 1.05


def test_raman_lines_are_injected_with_their_catalogue_flux(ifu1):
    """Electrons added by the lasers in one slice column = RAMAN_LINES flux x pixel area x detector
    conversion, line by line (the same bookkeeping as the night-sky lines)."""
    k = 20
    maps = ifu1.slice_maps(1, k)
    conditions = dict(ra=10.0, dec=-20.0, exptime=600.0, airmass=1.0, seeing=0.8)
    scene = SkyScene()
    with_lasers = scene.slice_electrons(ifu1, 1, k, maps, ExposureConditions(raman=True, **conditions),
                                        render._add_lines)
    without = scene.slice_electrons(ifu1, 1, k, maps, ExposureConditions(raman=False, **conditions),
                                    render._add_lines)
    column = maps.columns.size // 2
    excess = (with_lasers - without)[:, column]
    pixel_area = ifu1.slice_length / ifu1.layout(1).width[k] * maps.slice_height * 0.2 ** 2
    expected = sum(flux * pixel_area * spectra.electrons_per_flux_unit(w, 600.0, 1.0)
                   for _, _, w, flux in spectra.raman_lines())
    assert excess.sum() == pytest.approx(expected, rel=1e-3)
    wl = maps.wavelength[:, column]
    in_bands = (np.abs(wl - 6484.0) < 12) | (np.abs(wl - 6827.0) < 12)
    # (float32 rounding on the ~1e4 e- night sky leaves ~0.1 e- elsewhere)
    assert excess[in_bands].sum() == pytest.approx(excess.sum(), rel=1e-2)


# -- compression, writing per IFU ---------------------------------------------------------------------------
def test_fz_round_trip_is_lossless(tmp_path):
    rng = np.random.default_rng(3)
    ccd = detector.electrons_to_raw(None, InstrumentModel().detector, rng)
    header = primary_header(Exposure("BIAS", 61113.8, 0.0, 0.0, -24.6, "BIAS", "2026-03-14T20:00:00", 3, 1, 1),
                            1)
    path = detector.write_raw_file(tmp_path / "MUSE.fits.fz", header, {1: ccd, 5: ccd[::-1]},
                                   InstrumentModel().detector, compress=True)
    with fits.open(path) as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU) and hdul[1].compression_type == "RICE_1"
        assert [hdu.name for hdu in hdul[1:]] == ["CHAN01", "CHAN05"]
        np.testing.assert_array_equal(hdul[1].data, ccd)
        np.testing.assert_array_equal(hdul[2].data, ccd[::-1])
        assert hdul[1].data.dtype == np.uint16 and hdul[2].header["ESO DET CHIP INDEX"] == 5
        assert hdul[0].header["ESO DPR TYPE"] == "BIAS"
    assert path.stat().st_size < 0.5 * 2 * RAW_NX * RAW_NY * 2
    from pymusepipe.fitsheader import read_primary_header
    assert read_primary_header(path, ["ESO DPR TYPE"])["ESO DPR TYPE"] == "BIAS"


def test_compressed_programme_names_and_truth(tmp_path):
    result = simulate_programme(tmp_path / "root", survey_programme(compress=True, header_only=True))
    assert all(p.name.endswith(".fits.fz") for p in result.raw_files)
    assert all(e["file"].endswith(".fits.fz") for e in result.targets["SIMGAL"]["exposures"])
    assert all(fits.getheader(p)["ARCFILE"] == p.name for p in result.raw_files)


def test_peak_memory_does_not_grow_with_the_number_of_ifus(tmp_path, monkeypatch):
    """Cheap proxy of a real run: every rendered CCD is a full-size float image (as the renderer makes), the
    read-out returns a 1x1 image (tiny files). Peak traced memory with 4 IFUs stays that of 1 IFU: nothing
    of an IFU survives into the next. Drawn in this process (``workers=1``, so that the patches and the tracing
    see it); each worker process draws with the same code."""
    def full_size(*args, **kwargs):
        return np.ones((4112, 4096), np.float32)

    for name in ("lamp_flat", "arc", "twilight_flat", "scene"):
        monkeypatch.setattr(render, name, full_size)
    monkeypatch.setattr(run_module, "electrons_to_raw",
                        lambda electrons, det, rng: np.full((1, 1), 1000, np.uint16))
    peaks = {}
    for ifus in ((1,), (1, 2, 3, 4)):
        programme = Programme([_night(standard=False)], [TargetPlan("M", blocks=[ObservingBlock(night=0)])],
                              ifus=ifus)
        tracemalloc.start()
        simulate_programme(tmp_path / f"m{len(ifus)}", programme, workers=1)
        peaks[len(ifus)] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    one_ccd = 4112 * 4096 * 4
    assert peaks[1] > one_ccd                       # the proxy does allocate CCD-sized images
    assert peaks[4] < peaks[1] + 0.5 * one_ccd, peaks


def test_model_release_forgets_the_slice_maps_of_one_ifu():
    model = InstrumentModel(ifus=(1, 2))
    model.slice_maps(1, 0)
    model.slice_maps(2, 0)
    model.release(1)
    assert set(model._maps) == {(2, 0)}
    model.release()
    assert not model._maps


# -- archive masters -----------------------------------------------------------------------------------------
def _fake_product(path, catg, ifu, kind="image", date="2026-03-14T20:00:02.000"):
    header = fits.Header()
    header["EXTNAME"] = f"CHAN{ifu:02d}"
    header["DATE-OBS"], header["MJD-OBS"] = date, 61113.8333564815
    header["HIERARCH ESO TPL START"] = date[:19]
    header["HIERARCH ESO INS MODE"] = "WFM-NOAO-N"
    header["HIERARCH ESO DET READ CURNAME"] = "SCI1.0"
    header["HIERARCH ESO PRO CATG"] = catg
    header["HIERARCH ESO QC BIAS MASTER1 RON"] = 2.9 + ifu / 100
    header["HIERARCH ESO DET CHIP INDEX"] = ifu
    hdus = [fits.PrimaryHDU(header=header)]
    if kind == "image":
        for name in ("DATA", "DQ", "STAT"):
            hdus.append(fits.ImageHDU(np.full((4, 5), ifu, np.float32), name=name))
    else:
        hdus.append(fits.BinTableHDU.from_columns([fits.Column(name="SliceNo", format="J", array=[1, 2])]))
    fits.HDUList(hdus).writeto(path)
    return path


def test_archive_masters_merge_ifus_with_archive_names(tmp_path):
    products = [_fake_product(tmp_path / f"MASTER_BIAS-{i:02d}.fits", "MASTER_BIAS", i) for i in (2, 1)]
    products.append(_fake_product(tmp_path / "TRACE_TABLE-01.fits", "TRACE_TABLE", 1, kind="table"))
    written = write_archive_masters(tmp_path / "Raw", products)
    assert len(written) == 2 and len({p.name for p in written}) == 2
    for path in written:
        assert path.name.startswith("M.MUSE.") and path.name.endswith(".fits")
        with fits.open(path, checksum=True) as hdul:        # checksums verified on open
            primary = hdul[0].header
            assert primary["ARCFILE"] == path.name and primary["ORIGFILE"].startswith("MU_")
            assert "EXTNAME" not in primary and "ESO QC BIAS MASTER1 RON" not in primary
            for key in ("DATE-OBS", "MJD-OBS", "ESO TPL START", "ESO INS MODE", "ESO DET READ CURNAME"):
                assert key in primary
            names = [hdu.name for hdu in hdul[1:]]
            if primary["ESO PRO CATG"] == "MASTER_BIAS":
                assert primary["ORIGFILE"].startswith("MU_MBIA_")
                assert names == ["CHAN01.DATA", "CHAN01.DQ", "CHAN01.STAT", "CHAN02.DATA", "CHAN02.DQ",
                                 "CHAN02.STAT"]
                # the IFU's QC keywords, read by the recipes, are in its DATA extension
                assert hdul["CHAN02.DATA"].header["ESO QC BIAS MASTER1 RON"] == pytest.approx(2.92)
                assert np.all(hdul["CHAN02.STAT"].data == 2)
            else:
                assert primary["ORIGFILE"].startswith("MU_PFTT_") and names == ["CHAN01"]
                assert list(hdul["CHAN01"].data["SliceNo"]) == [1, 2]
    source = fits.Header()
    source["HIERARCH ESO INS MODE"] = "WFM-AO-N"
    again = write_archive_masters(tmp_path / "Raw2", products[:1], source_header=source)
    assert fits.getheader(again[0])["ESO INS MODE"] == "WFM-AO-N"


def test_archive_masters_refuse_ambiguous_input(tmp_path):
    one = _fake_product(tmp_path / "a.fits", "MASTER_BIAS", 1)
    two = _fake_product(tmp_path / "b.fits", "MASTER_BIAS", 1)
    with pytest.raises(SimulationError, match="same IFU"):
        write_archive_masters(tmp_path / "Raw", [one, two])
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU().writeto(plain)
    with pytest.raises(SimulationError, match="PRO CATG"):
        write_archive_masters(tmp_path / "Raw", [plain])


def test_writing_only_some_kinds_gives_the_same_bytes(tmp_path):
    """``only=`` plans and draws everything as a full run does: the frames written are identical."""
    from pymusepipe.simulate import data_checksums
    programme = survey_programme(seed=7)
    biases = simulate_programme(tmp_path / "a", programme, only=("BIAS",))
    more = simulate_programme(tmp_path / "b", programme, only=("bias", "ILLUM"))
    assert len(biases.raw_files) == 3 and len(more.raw_files) == 4
    assert data_checksums(biases.raw_files) == data_checksums([p for p in more.raw_files
                                                               if fits.getheader(p)["ESO DPR TYPE"] == "BIAS"])
    entries = biases.targets["SIMGAL"]["exposures"]
    assert sum(e["written"] for e in entries) == 3 and len(entries) > 3
    assert not (biases.root / entries[-1]["file"]).exists()
    with pytest.raises(SimulationError, match="only="):
        simulate_programme(tmp_path / "c", programme, only=("DARK",))
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("ifus", [(1,), (3, 4), tuple(range(1, 25))])
def test_the_standard_star_falls_inside_the_simulated_field_away_from_its_edges(ifus):
    from pymusepipe.simulate.schedule import schedule_programme

    model = InstrumentModel(ifus=ifus)
    programme = Programme([_night()], [TargetPlan("T", blocks=[ObservingBlock(night=0)])], ifus=ifus).check()
    schedule = schedule_programme(programme, model)
    frame = next(frame for frame in schedule.frames if frame.exposure.kind == "STD")
    star = schedule.standards[0]
    # star position in the focal plane of the exposure [arcsec north of the point muse_scipost centres on]
    north = (star["dec"] - frame.item["true_dec"]) * 3600.0
    extents = [model.ifu_focal_extent(ifu) for ifu in model.ifus]
    bottom = (min(e[2] for e in extents) - model.focal_centre[1]) * model.spaxel_scale
    top = (max(e[3] for e in extents) - model.focal_centre[1]) * model.spaxel_scale
    # on one strip (the middle of the simulated strips), within 0.2" of its middle
    middles = sorted(((e[2] + e[3]) / 2 - model.focal_centre[1]) * model.spaxel_scale for e in extents)
    assert min(abs(north - middle) for middle in middles) <= 0.2
    if len(ifus) == 24:
        # a real standard is centred: far from the field's edges (the flux integration window is not cut)
        assert abs(north) < 2.0 and min(north - bottom, top - north) > 25.0


@pytest.mark.parametrize("beta", [2.5, 3.0, 4.0])
def test_the_moffat_psf_is_drawn_with_its_encircled_energy_and_fwhm(beta):
    """The Gaussian mixture behind the Moffat seeing PSF against the analytic Moffat: encircled energy within
    1e-3 out to 8 FWHM (what an aperture or a profile fit reads) and the FWHM within 1 %."""
    from pymusepipe.simulate.scene import psf_components

    fwhm = 0.9
    weights, sigmas = psf_components(fwhm, beta)
    assert abs(weights.sum() - 1) < 1e-12 and np.all(weights > 0)
    a = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    radius = np.linspace(0.0, 8 * fwhm, 400)
    drawn = np.sum(weights[:, None] * (1 - np.exp(-radius ** 2 / (2 * sigmas[:, None] ** 2))), axis=0)
    assert np.max(np.abs(drawn - (1 - (1 + (radius / a) ** 2) ** (1 - beta)))) < 1e-3
    profile = np.sum(weights[:, None] / sigmas[:, None] ** 2 * np.exp(-radius ** 2 / (2 * sigmas[:, None] ** 2)), 0)
    half = radius[np.argmin(np.abs(profile - profile[0] / 2))]
    assert abs(2 * half / fwhm - 1) < 0.01, 2 * half
    # None is the single Gaussian of that FWHM
    weights, sigmas = psf_components(fwhm)
    assert weights.tolist() == [1.0] and sigmas[0] == pytest.approx(fwhm / 2.3548)


def test_a_moffat_star_on_a_one_ifu_strip_loses_what_its_wings_put_outside_it():
    """One star rendered on the 48 slices of a simulated IFU (a strip 48 slices high): the electrons on the strip,
    Moffat over Gaussian, are the ratio of the analytic fractions of each profile that fall within the strip's
    height (the strip is long enough to hold both profiles along the slices)."""
    from scipy.integrate import quad
    from scipy.special import erf

    from pymusepipe.simulate import InstrumentModel
    from pymusepipe.simulate.scene import ExposureConditions, PointSource, SkyScene

    model = InstrumentModel(ifus=(1,))
    x, y, _ = model.slice_focal_position(1, 24)
    east, north = SkyScene.focal_to_offsets(model, x, y)
    ra0, dec0, seeing, beta = 150.0, 2.0, 0.8, 2.8
    star = PointSource(ra=ra0 + float(east) / 3600 / np.cos(np.radians(dec0)), dec=dec0 + float(north) / 3600,
                       vmag=16.0)
    scene = SkyScene(stars=[star], night_sky=False)
    totals, rows = {}, []
    for psf_beta in (None, beta):
        exposure = ExposureConditions(ra=ra0, dec=dec0, exptime=600.0, airmass=1.1, seeing=seeing,
                                      psf_beta=psf_beta)
        total = 0.0
        for k in range(48):
            maps = model.slice_maps(1, k)
            total += float(scene.slice_electrons(model, 1, k, maps, exposure, add_lines=lambda *a: None).sum())
            if psf_beta is None:
                rows += [maps.ypos - maps.slice_height / 2, maps.ypos + maps.slice_height / 2]
        totals[psf_beta] = total
    star_x, star_y = SkyScene.offsets_to_focal(model, float(east), float(north))
    low, high = (np.array([min(rows), max(rows)]) - star_y) * model.spaxel_scale      # [arcsec]
    sigma = seeing / 2.3548
    gaussian = 0.5 * (erf(high / np.sqrt(2) / sigma) - erf(low / np.sqrt(2) / sigma))
    a = seeing / (2 * np.sqrt(2 ** (1 / beta) - 1))
    marginal = lambda v: (1 + v ** 2 / a ** 2) ** (0.5 - beta)    # the 2D Moffat integrated along x
    moffat = quad(marginal, low, high)[0] / quad(marginal, -np.inf, np.inf)[0]
    assert moffat < 0.97 * gaussian                      # the wings reach beyond a 2.5" strip
    assert totals[beta] / totals[None] == pytest.approx(moffat / gaussian, rel=2e-3), (totals, moffat, gaussian)


def test_frames_drawn_by_two_processes_are_the_same_bytes_as_by_one(tmp_path):
    """Every frame has its own random stream and the caches are deterministic: the files do not depend on how
    many processes drew them (checked on the kinds with caches (flats) and with a scene (the standard))."""
    import hashlib

    def checksums(root):
        return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(root.rglob("MUSE.*.fits"))}

    programme = demo_programme(seed=3)
    one = simulate_programme(tmp_path / "one", programme, only=("FLAT", "ILLUM", "STD"), workers=1)
    two = simulate_programme(tmp_path / "two", programme, only=("FLAT", "ILLUM", "STD"), workers=2)
    assert len(checksums(one.root)) >= 5 and checksums(one.root) == checksums(two.root)


def test_worker_counts(tmp_path):
    from pymusepipe.simulate.run import _worker_count

    assert _worker_count(2, 10) == 2 and _worker_count(8, 3) == 3 and 1 <= _worker_count(None, 10) <= 4
    with pytest.raises(SimulationError, match="workers=0"):
        simulate_programme(tmp_path / "out", demo_programme(), workers=0)


def test_a_process_running_other_threads_draws_through_a_fork_server(monkeypatch):
    """Forked workers only from a single-threaded process (earlier tests of this session may have left threads,
    e.g. Dask's offload thread, so both cases are set up here)."""
    import threading

    from pymusepipe.simulate.run import _process_context

    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert _process_context().get_start_method() == "forkserver"
    finally:
        release.set()
        thread.join()
    monkeypatch.setattr(run_module.threading, "active_count", lambda: 1)
    assert _process_context().get_start_method() == "fork"


def _drifting_slice(rows=300, columns=80, pixel_length=0.96):
    """Focal positions along a slice [spaxel] of a slice box whose trace drifts with the row, as in the model."""
    row = np.arange(float(rows))[:, None]
    return (20.0 + 1.7 * np.sin(row / 90.0)) - pixel_length * np.arange(columns)[None, :]


@pytest.mark.parametrize("seeing", [0.5, 0.8, 1.2])
def test_a_moffat_psf_tabulated_along_a_slice_stays_within_the_linear_interpolation_bound(seeing):
    """The mixture is integrated exactly on a grid and interpolated at the pixels (a drifting trace gives every
    row other positions): the error stays within step^2 / 8 times the largest second derivative of the
    pixel-integrated profile, a sum over the components of share x pixel / (sqrt(2 pi) sigma^3)."""
    from scipy.special import erf

    from pymusepipe.simulate.scene import PROFILE_STEP, along_slice_fractions, psf_components

    pixel_length, centre = 0.96, -18.3
    xpos = _drifting_slice(pixel_length=pixel_length)
    weights, sigmas = psf_components(seeing, 2.8)
    sigmas = sigmas / 0.2
    root2 = np.sqrt(2.0) * sigmas
    exact = sum(w * 0.5 * (erf((xpos + pixel_length / 2 - centre) / r) - erf((xpos - pixel_length / 2 - centre) / r))
                for w, r in zip(weights, root2))
    drawn = along_slice_fractions(xpos, centre, pixel_length, weights, root2)
    bound = PROFILE_STEP ** 2 / 8 * np.sum(weights * pixel_length / (np.sqrt(2 * np.pi) * sigmas ** 3))
    assert np.abs(drawn - exact).max() <= bound
    assert bound < 1e-4 * exact.max()        # what the docstring promises, well below the photon noise


def test_a_gaussian_psf_is_still_integrated_exactly_over_every_pixel():
    from scipy.special import erf

    from pymusepipe.simulate.scene import along_slice_fractions, reach

    xpos, sigma, share = _drifting_slice(), 1.7, 0.3
    root2 = np.sqrt(2.0) * sigma
    exact = share * 0.5 * (erf((xpos + 0.48 - 2.2) / root2) - erf((xpos - 0.48 - 2.2) / root2))
    assert np.array_equal(along_slice_fractions(xpos, 2.2, 0.96, np.array([share]), np.array([root2])), exact)
    assert reach(np.array([share]), np.array([sigma]), 0.96) == 7 * sigma


def test_a_moffat_psf_is_drawn_as_far_as_its_components_give_a_pixel_a_share_of_the_light():
    """Beyond the reach no component puts MIN_PIXEL_SHARE of the star's light in a pixel; within it one does."""
    from pymusepipe.simulate.scene import MIN_PIXEL_SHARE, psf_components, reach

    weights, sigmas = psf_components(0.8, 2.8)
    sigmas = sigmas / 0.2
    for height_share in (1.0, 1e-2, 1e-4):      # a slice through the star, one in its wings, one far off
        shares = weights * height_share
        distance = reach(shares, sigmas, 0.96)
        peaks = shares * 0.96 / (np.sqrt(2 * np.pi) * sigmas)
        at = lambda x: peaks * np.exp(-0.5 * (x / sigmas) ** 2)      # noqa: E731 - per component, at distance x
        assert np.all(at(distance * 1.001) < MIN_PIXEL_SHARE) and np.any(at(distance * 0.999) > MIN_PIXEL_SHARE)
        assert distance < 7 * sigmas.max()     # the widest component's 7 sigma would span the whole field


@pytest.mark.parametrize("psf_beta", [None, 2.8])
def test_the_truth_gives_the_seeing_profile_of_every_star_frame(tmp_path, psf_beta):
    """What truthcheck.measure_point_sources needs to fit the stars with the profile they were drawn with."""
    programme = dataclasses.replace(survey_programme(header_only=True), psf_beta=psf_beta)
    truth = simulate_programme(tmp_path / "root", programme).targets["SIMGAL"]
    on_sky = [e for e in truth["exposures"] if e["kind"] in ("OBJECT", "SKY", "STD")]
    assert on_sky and all(e["psf_beta"] == psf_beta for e in on_sky)
    assert all(e["psf_profile"] == ("gaussian" if psf_beta is None else "moffat beta=2.8") for e in on_sky)


def test_a_star_lights_each_slice_with_its_share_on_both_kinds_of_ifu_boundary():
    """Every second IFU boundary (2m | 2m+1) is where a slice centre falls on a row centre of a full field's cube;
    the stars beside it came out 2-3 % fainter (docs/benchmarks.md). The simulator is not the cause: a star on
    boundary 1|2 or 2|3 gives each slice the Moffat integrated over that slice's sky area (its light summed over
    the slice's CCD pixels, the same share of the star's total in every slice whichever IFU it belongs to)."""
    from scipy.special import erf

    from pymusepipe.simulate.scene import PointSource, psf_components

    model = InstrumentModel(ifus=(1, 2, 3))
    ra0, dec0 = 150.0, 2.0
    exposure = ExposureConditions(ra=ra0, dec=dec0, exptime=600.0, airmass=1.0, seeing=0.84, psf_beta=2.8)
    weights, sigmas = psf_components(exposure.seeing, exposure.psf_beta)
    root2 = np.sqrt(2.0) * sigmas / model.spaxel_scale
    x_star = -112.5                                  # the middle of a slicer stack: no light beyond a slice's ends
    for boundary in (-137.5, -125.0):                # IFUs 1|2 and 2|3 (IFU i spans 12.5 spaxels from -150)
        y_star = boundary + 0.3
        east, north = SkyScene.focal_to_offsets(model, x_star, y_star)
        star = PointSource(ra=ra0 + east / 3600.0 / np.cos(np.radians(dec0)), dec=dec0 + north / 3600.0, vmag=12.0)
        scene = SkyScene(stars=[star], night_sky=False)
        drawn, expected = [], []
        for ifu in model.ifus:
            for k in range(48):
                x, y, _ = model.slice_focal_position(ifu, k)
                if abs(x - x_star) > 1 or abs(y - y_star) > 3:
                    continue
                maps = model.slice_maps(ifu, k)
                box = scene.slice_electrons(model, ifu, k, maps, exposure, lambda *args: None) * maps.illumination
                drawn.append(float(box[1900:2200].sum()))
                half = model.slice_pitch / 2
                expected.append(float(np.sum(weights * 0.5 * (erf((y + half - y_star) / root2)
                                                               - erf((y - half - y_star) / root2)))))
        model.release()
        drawn, expected = np.array(drawn), np.array(expected)
        assert len(drawn) == 6                        # three slices on each side of the boundary
        per_share = drawn / expected                  # electrons per unit share: one value for every slice
        np.testing.assert_allclose(per_share, np.median(per_share), rtol=1e-3)
