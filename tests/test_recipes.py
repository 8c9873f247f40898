"""The recipe table against the installed pipeline, and its override mechanism."""
import re
import subprocess

import pytest

from pymusepipe.recipes import (CalibrationInput, ProductOutput, default_recipe_table, format_parameter)

CHAIN = ("muse_bias", "muse_flat", "muse_wavecal", "muse_lsf", "muse_twilight", "muse_scibasic", "muse_standard",
         "muse_create_sky", "muse_scipost", "muse_exp_align", "muse_exp_combine")


def _esorex(tmp_path, *args):
    # esorex writes a log even for --params/--man-page: keep it in tmp_path.
    result = subprocess.run(["esorex", f"--log-dir={tmp_path}", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _recipe_parameters(tmp_path, recipe):
    text = _esorex(tmp_path, "--params", recipe).split("Recipe Parameters :", 1)[1]
    return {match.group(1) for match in re.finditer(r"^\s+(\w+)\s+:", text, re.M)}


def _frame_tags(tmp_path, recipe):
    """Every tag of the recipe's input and product frame lists in ``--man-page``."""
    text = _esorex(tmp_path, "--man-page", recipe)
    tags = set()
    for block in re.findall(r"-{10,} -{3,}.*?\n(.*?)\n\s*\n", text, re.S):
        for line in block.splitlines():
            words = line.split()
            if words and re.fullmatch(r"[A-Z][A-Z0-9_]+", words[0]):
                tags.add(words[0])
    return tags


def test_table_holds_the_whole_chain():
    table = default_recipe_table()
    assert set(CHAIN) <= set(table)
    assert not table["muse_twilight"].takes_nifu  # it loops over IFUs itself
    assert table["muse_bias"].takes_nifu and table["muse_bias"].takes_merge
    assert table["muse_bias"].min_raw == 3 and table["muse_wavecal"].min_raw == 1


@pytest.mark.esorex
@pytest.mark.parametrize("recipe", CHAIN)
def test_parameters_and_tags_exist_in_installed_pipeline(tmp_path, recipe):
    spec = default_recipe_table()[recipe]
    parameters = _recipe_parameters(tmp_path, recipe)
    assert parameters, f"no parameter parsed for {recipe}"
    assert set(spec.default_parameters) <= parameters
    for option, flag in (("nifu", spec.takes_nifu), ("merge", spec.takes_merge)):
        assert (option in parameters) == flag, f"{recipe}: takes_{option}={flag} but esorex says otherwise"
    for product in spec.products:
        if product.enabled_by is not None:
            assert product.enabled_by[0] in parameters, f"{recipe}: {product.tag} enabled by unknown parameter"
    tags = _frame_tags(tmp_path, recipe)
    used = set(spec.raw_tags) | {calibration.tag for calibration in spec.calibrations}
    for raw_tag in spec.raw_tags:
        used |= {product.tag.replace("{raw}", raw_tag) for product in spec.products}
    assert used <= tags, f"{recipe}: tags not in its frame list: {sorted(used - tags)}"


def test_override_changes_only_the_copy():
    table = default_recipe_table()
    mine = table.copy()
    mine.override("muse_scipost", skymethod="none", save=None)
    assert mine["muse_scipost"].default_parameters == {"filter": "white", "skymethod": "none"}
    assert table["muse_scipost"].default_parameters["save"] == "cube,skymodel"
    assert default_recipe_table()["muse_scipost"].default_parameters.get("skymethod") is None


def test_override_refuses_engine_owned_and_unknown_recipes():
    table = default_recipe_table()
    with pytest.raises(ValueError, match="nifu/merge"):
        table.override("muse_bias", nifu=-1)
    with pytest.raises(KeyError, match="unknown recipe 'muse_bais'"):
        table["muse_bais"]


def test_products_follow_parameters():
    spec = default_recipe_table()["muse_scipost"]
    tags = {product.tag for product in spec.products_for({"save": "cube,individual"})}
    assert {"DATACUBE_FINAL", "IMAGE_FOV", "PIXTABLE_REDUCED"} <= tags
    assert "PIXTABLE_COMBINED" not in tags
    flat = default_recipe_table()["muse_flat"]
    assert "TRACE_SAMPLES" not in {p.tag for p in flat.products_for({})}
    assert "TRACE_SAMPLES" in {p.tag for p in flat.products_for({"samples": True})}


def test_format_parameter():
    assert format_parameter(True) == "true"
    assert format_parameter([4000, 9000.5]) == "4000,9000.5"
    assert format_parameter("cube") == "cube"


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="source="):
        CalibrationInput("MASTER_BIAS", source="archive")
    with pytest.raises(ValueError, match="naming="):
        ProductOutput("MASTER_BIAS", naming="daily")
