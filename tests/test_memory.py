"""The memory model against the peaks measured with the real recipes (MUSE 2.8.7, simulated data)."""
import pytest

from pymusepipe.memory import MARGIN, memory_need

#: Peak RSS (GB) of esorex measured by benchmarks/bench_full_field.py (24 IFUs, ESO merged mode) and the demo
#: (1 IFU), with the threads each job had: (recipe, IFUs, threads, merged, measured).
MEASURED = [
    ("muse_bias", 24, 2, True, 1.68), ("muse_flat", 24, 2, True, 1.68), ("muse_wavecal", 24, 2, True, 1.82),
    ("muse_lsf", 24, 1, True, 1.24), ("muse_twilight", 24, 1, False, 10.57), ("muse_twilight", 1, 2, False, 1.36),
    ("muse_bias", 1, 2, False, 0.87), ("muse_scibasic", 1, 2, False, 1.37),
    ("muse_scibasic", 24, 1, True, 1.34), ("muse_standard", 24, 2, False, 15.48), ("muse_standard", 1, 1, False, 0.70),
    ("muse_standard", 24, 2, False, 16.24),  # the same standard exposure with Moffat seeing (bench_standard_psf.py)
    ("muse_create_sky", 24, 1, False, 15.48), ("muse_create_sky", 24, 2, False, 15.49),
    ("muse_create_sky", 1, 1, False, 0.69),
    ("muse_scipost", 24, 2, False, 15.49),   # --skymethod=subtract-model; with model it was killed at 23.1 GB
]


@pytest.mark.parametrize("recipe, ifus, threads, merged, measured", MEASURED)
def test_the_model_covers_each_measured_peak_without_wasting_the_budget(recipe, ifus, threads, merged, measured):
    need = memory_need(recipe, ifus=ifus, threads=threads, merged=merged)
    # covers the measurement, and not by more than the margin and a 1.5x model error
    assert measured <= need <= 1.5 * MARGIN * measured, (recipe, ifus, need, measured)


def test_twilight_holds_every_ifu_whatever_its_threads():
    # it loops over the IFUs itself and keeps them all: its need grows with the IFUs, not with threads
    assert memory_need("muse_twilight", ifus=24, threads=1) == memory_need("muse_twilight", ifus=24, threads=8)
    assert memory_need("muse_twilight", ifus=24) > 5 * memory_need("muse_twilight", ifus=1) / 2
