"""The memory model against the peaks measured with the real recipes (MUSE 2.8.7, simulated data)."""
import pytest

from pymusepipe.executors import DEFAULT_MEMORY_FRACTION
from pymusepipe.memory import MARGIN, memory_need

#: Peak RSS (GB) of esorex measured by benchmarks/bench_full_field.py (24 IFUs, ESO merged mode) and the demo
#: (1 IFU), with what each job had: (recipe, IFUs, threads, merged, exposures it read, parameters, measured).
#: muse_twilight read 3 sky flats in both runs.
MEASURED = [
    ("muse_bias", 24, 2, True, 3, None, 1.68), ("muse_flat", 24, 2, True, 3, None, 1.68),
    ("muse_wavecal", 24, 2, True, 3, None, 1.82), ("muse_lsf", 24, 1, True, 3, None, 1.24),
    ("muse_twilight", 24, 1, False, 3, None, 10.57), ("muse_twilight", 1, 2, False, 3, None, 1.36),
    ("muse_bias", 1, 2, False, 3, None, 0.87), ("muse_scibasic", 1, 2, False, 1, None, 1.37),
    ("muse_scibasic", 24, 1, True, 1, None, 1.34), ("muse_standard", 24, 2, False, 1, None, 15.48),
    ("muse_standard", 1, 1, False, 1, None, 0.70),
    ("muse_standard", 24, 2, False, 1, None, 16.24),  # the same exposure with Moffat seeing (bench_standard_psf.py)
    ("muse_create_sky", 24, 1, False, 1, None, 15.48), ("muse_create_sky", 24, 2, False, 1, None, 15.49),
    ("muse_create_sky", 1, 1, False, 1, None, 0.69),
    ("muse_scipost", 24, 2, False, 1, {"skymethod": "subtract-model"}, 15.49),
    ("muse_scipost", 1, 2, False, 1, {"skymethod": "none"}, 0.69),
    ("muse_scipost", 1, 2, False, 1, {"skymethod": "model"}, 1.06),
]


@pytest.mark.parametrize("recipe, ifus, threads, merged, exposures, parameters, measured", MEASURED)
def test_the_model_covers_each_measured_peak_without_wasting_the_budget(recipe, ifus, threads, merged, exposures,
                                                                        parameters, measured):
    need = memory_need(recipe, ifus=ifus, threads=threads, merged=merged, exposures=exposures,
                       parameters=parameters)
    # covers the measurement, and not by more than the margin and a 1.5x model error
    assert measured <= need <= 1.5 * MARGIN * measured, (recipe, ifus, need, measured)


def test_a_full_field_scipost_fitting_the_sky_needs_more_than_the_24_gb_it_was_killed_at():
    # Both 24-IFU muse_scipost runs with --skymethod=model were killed by the kernel at 24.2 GB (dmesg): the model
    # must not let one start on a budget that cannot hold it. ESO's default (no skymethod given) is model.
    killed_at = 24.2
    assert memory_need("muse_scipost", ifus=24, parameters={"skymethod": "model"}) / MARGIN >= killed_at
    assert memory_need("muse_scipost", ifus=24) == memory_need("muse_scipost", ifus=24,
                                                                parameters={"skymethod": "model"})


def test_twilight_holds_every_ifu_whatever_its_threads_and_sky_flats():
    # it loops over the IFUs itself and keeps them all: its need grows with the IFUs, not with threads, nor with
    # the sky flats it combines (3 in both measurements above)
    assert memory_need("muse_twilight", ifus=24, threads=1) == memory_need("muse_twilight", ifus=24, threads=8)
    assert memory_need("muse_twilight", ifus=24, exposures=5) == memory_need("muse_twilight", ifus=24, exposures=1)
    assert memory_need("muse_twilight", ifus=24) > 5 * memory_need("muse_twilight", ifus=1) / 2


@pytest.mark.parametrize("recipe, ifus, threads, merged, exposures, parameters, measured", MEASURED)
def test_without_its_margin_the_model_stays_within_the_room_the_default_budget_leaves(recipe, ifus, threads, merged,
                                                                                     exposures, parameters, measured):
    # A job above the whole budget with the margin runs alone when its need without it fits (the scheduler): the
    # memory the default budget leaves free must then cover what the model may miss of the real peak.
    bare = memory_need(recipe, ifus=ifus, threads=threads, merged=merged, exposures=exposures,
                       parameters=parameters, margin=False)
    assert measured * DEFAULT_MEMORY_FRACTION <= bare, (recipe, ifus, bare, measured)


def test_a_model_that_is_only_a_lower_limit_keeps_its_margin():
    # The refit's 1.0 GB per IFU is where the kernel killed it, not a peak: running it alone without the margin
    # would be running it where it was killed.
    refit = {"skymethod": "model"}
    assert memory_need("muse_scipost", ifus=24, parameters=refit, margin=False) == \
        memory_need("muse_scipost", ifus=24, parameters=refit)
    assert memory_need("muse_standard", ifus=24, margin=False) == \
        pytest.approx(memory_need("muse_standard", ifus=24) / MARGIN)
