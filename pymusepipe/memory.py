"""How much memory each recipe run needs, from measurements.

A recipe run's peak resident memory is modelled as

    need = MARGIN x (base + per_ifu x active_ifus + per_ifu_held x ifus + per_ifu_exposure x ifus x exposures)

- ``active_ifus``: the IFUs a per-IFU recipe (muse_bias ... muse_scibasic) holds at once: one when fanned out
  (``--nifu=k``), one per thread in ESO's merged mode (``--nifu=-1``: IFUs are processed in parallel, one per
  OpenMP thread);
- ``ifus``: what a run keeps of every IFU whatever its inputs (muse_twilight accumulates each IFU's combined
  sky flat for its cube, however many sky-flat exposures it combines);
- ``ifus x exposures``: the pixel tables a post-processing recipe (muse_scipost, muse_exp_combine,
  muse_create_sky, muse_standard) loads together.

The coefficients come from the peak RSS of the recipes' processes (``os.wait4``, recorded as ``max_rss_mb`` in the
job tables) on the simulated runs: one IFU through the whole chain (``bash scripts/demo.sh``) and the full field
(``benchmarks/bench_full_field.py``), MUSE 2.8.7 on Debian. :data:`MARGIN` covers what differs between runs (real
data have more bad pixels and cosmic rays; the measured spread between identical runs was under 5%).
The scheduler never starts a job whose need exceeds the memory budget, and ``ifu_mode='auto'`` fans a recipe out
per IFU when its merged run would not fit. The margin is for jobs sharing the machine: a job whose need is above
the whole budget still runs, alone, when its need without the margin (the measured peak its model reproduces)
fits. A model that is only a lower limit (a run killed at that size) keeps its margin.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["MemoryModel", "MARGIN", "MEMORY_MODELS", "memory_advice", "memory_need", "model_name"]

#: Safety factor applied to every modelled need.
MARGIN = 1.3


@dataclass(frozen=True)
class MemoryModel:
    """Coefficients (GB) of one recipe's memory model (see the module documentation)."""

    base: float
    per_ifu: float = 0.0
    per_ifu_exposure: float = 0.0
    per_ifu_held: float = 0.0
    #: The coefficients are a lower limit (the run was killed at that size), not a measured peak.
    lower_limit: bool = False

    def need(self, active_ifus: int = 1, ifus: int = 1, exposures: int = 1, margin: bool = True) -> float:
        """Modelled peak memory (GB), with the safety margin unless ``margin=False`` (a lower limit keeps it)."""
        factor = MARGIN if margin or self.lower_limit else 1.0
        return factor * (self.base + self.per_ifu * max(active_ifus, 0) + self.per_ifu_held * max(ifus, 0)
                         + self.per_ifu_exposure * max(ifus, 0) * max(exposures, 0))


#: Measured coefficients per recipe (GB). One IFU of the simulated demo: muse_bias 0.87 GB, muse_flat 0.87,
#: muse_wavecal 0.93, muse_lsf 1.26, muse_twilight 1.36, muse_scibasic 1.37, muse_standard 0.70,
#: muse_create_sky 0.69, muse_scipost 0.69 (no sky) to 1.06 (sky fit), muse_exp_combine 1.72 (2 exposures),
#: muse_exp_align 0.28.
MEMORY_MODELS = MappingProxyType({
    "muse_bias": MemoryModel(base=0.25, per_ifu=0.62),
    "muse_dark": MemoryModel(base=0.25, per_ifu=0.62),
    "muse_flat": MemoryModel(base=0.25, per_ifu=0.62),
    "muse_wavecal": MemoryModel(base=0.25, per_ifu=0.68),
    "muse_lsf": MemoryModel(base=0.25, per_ifu=1.01),
    # muse_twilight loops over the IFUs itself and keeps every IFU's data for the combined cube: 1.36 GB on one
    # IFU, 10.57 GB on 24 (bench_full_field.py), each from 3 sky flats, i.e. 0.96 GB + 0.40 GB per IFU.
    "muse_twilight": MemoryModel(base=0.96, per_ifu_held=0.40),
    "muse_scibasic": MemoryModel(base=0.25, per_ifu=1.12),
    # muse_standard: 0.70 GB on one IFU; on 24, 15.48 GB (bench_full_field.py, Gaussian seeing) and 16.24 GB
    # (bench_standard_psf.py, the same exposure with Moffat seeing).
    "muse_standard": MemoryModel(base=0.25, per_ifu_exposure=0.667),
    # muse_create_sky on an object exposure's 24 tables: 15.48 GB (1 thread), 15.49 GB (2): as muse_standard.
    "muse_create_sky": MemoryModel(base=0.25, per_ifu_exposure=0.635),
    # muse_scipost subtracting a given sky (--skymethod=subtract-model, or none): 15.49 GB on 24 IFUs (both
    # exposures of bench_full_field.py), 0.69 GB on one IFU, as muse_create_sky.
    "muse_scipost": MemoryModel(base=0.25, per_ifu_exposure=0.635),
    # Fitting the sky on the exposure (--skymethod=model, ESO's default) also resamples a white-light cube to find
    # the sky spaxels: 1.06 GB on one IFU; on 24 the kernel killed both runs at 24.2 GB, so the need is above
    # that: at least 1.0 GB per IFU.
    "muse_scipost --skymethod=model": MemoryModel(base=0.25, per_ifu_exposure=1.0, lower_limit=True),
    "muse_exp_align": MemoryModel(base=0.28),
    "muse_exp_combine": MemoryModel(base=0.3, per_ifu_exposure=0.71),
})


def model_name(recipe: str, parameters=None) -> str:
    """The key of a run's model in :data:`MEMORY_MODELS`: a muse_scipost that fits the sky (its
    ``--skymethod=model``, ESO's default) needs more than one that subtracts a given sky or none."""
    if recipe == "muse_scipost" and str((parameters or {}).get("skymethod", "model")) == "model":
        return "muse_scipost --skymethod=model"
    return recipe


def memory_advice(recipe: str, parameters=None) -> str:
    """What, besides more memory, makes a run of ``recipe`` with these parameters need less (empty: nothing)."""
    if recipe in _PER_IFU_RECIPES and (parameters or {}).get("nifu") == -1:
        return "reduce one IFU per job (ifu_mode='fanout')"
    if model_name(recipe, parameters) == "muse_scipost --skymethod=model":
        return ("subtract the sky measured on each exposure without refitting it (run_sky on the exposures, then "
                "run_scipost(skymethod='subtract-model'))")
    return ""


#: Recipes processing one IFU at a time per thread (``--nifu``); the others hold every IFU's tables at once.
_PER_IFU_RECIPES = frozenset({"muse_bias", "muse_dark", "muse_flat", "muse_wavecal", "muse_lsf", "muse_scibasic"})


def memory_need(recipe: str, *, ifus: int, exposures: int = 1, threads: int = 1, merged: bool = False,
                parameters=None, models=MEMORY_MODELS, margin: bool = True) -> float:
    """Modelled peak memory (GB) of one run of ``recipe``.

    Parameters
    ----------
    recipe : str
    ifus : int
        IFUs the run handles (0 or 1 for merged products such as images).
    exposures : int
        Exposures whose data the run loads together.
    threads : int
        Threads it gets (in ESO's merged mode, IFUs run in parallel, one per thread).
    merged : bool
        ESO's in-process mode (``--nifu=-1``).
    parameters : mapping, optional
        The run's recipe parameters, where they change the need (muse_scipost's ``skymethod``).
    margin : bool
        Include the safety margin :data:`MARGIN`. Without it, the need is the peak the measurements give, which
        a job may use when it runs alone (a model that is a lower limit keeps its margin).
    """
    model = models.get(model_name(recipe, parameters), models.get(recipe))
    if model is None:
        return MARGIN * 1.0
    ifus = max(int(ifus), 1)
    if recipe in _PER_IFU_RECIPES:
        active = min(max(int(threads), 1), ifus) if merged else 1
        return model.need(active_ifus=active, ifus=0, exposures=0, margin=margin)
    return model.need(active_ifus=0, ifus=ifus, exposures=max(int(exposures), 1), margin=margin)
