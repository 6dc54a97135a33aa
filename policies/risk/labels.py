"""Reader names and units of the quantities in a risk report, taken from the model's declarations.

Reports never show an internal key (``total_dose_cmt1``) or a number without its unit: each
observable's unit comes from its :class:`medsim.models.base.Observable`, each treatment's name and
unit from the model's ``dose_labels`` and ``dose_units``, and the efficacy shares are fractions of
the horizon (shown in percent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_SHARES = {
    "time_in_range": "time in target range",
    "time_below_range": "time below target range",
    "time_above_range": "time above target range",
}


def quantity_names(model: Any, efficacy_keys: Sequence[str], target: Sequence | None) -> tuple[dict, dict]:
    """``(units, labels)``: unit and reader name of each observable and efficacy metric.

    Parameters
    ----------
    model : PhysiologyModel or None
        Declares observable units, dose labels and units; None gives units of shares only.
    efficacy_keys : sequence of str
        The rollouts' efficacy metric names.
    target : (observable, low, high) or None
        The efficacy target range, named in the time-in-range labels.
    """
    units: dict[str, str] = {}
    labels: dict[str, str] = {}
    if model is not None:
        for o in model.observables:
            units[o.name] = o.unit
    where = ""
    if target is not None:
        obs, lo, hi = target
        where = f" {float(lo):g}-{float(hi):g} {units.get(str(obs), '')}".rstrip()
    for key in efficacy_keys:
        if key in _SHARES:
            units[key], labels[key] = "%", _SHARES[key] + where
        elif key.startswith("total_dose_cmt") and model is not None:
            cmt = int(key.removeprefix("total_dose_cmt"))
            labels[key] = "total " + (model.dose_labels.get(cmt) or f"dose into {model.dose_targets.get(cmt, cmt)}")
            units[key] = model.dose_units.get(cmt, "")
        else:
            labels[key] = key.replace("_", " ")
    return units, labels


def twin_subject(subjects: Sequence[Any]) -> str:
    """The fitted subject a personalized population twins ("" for a population of new patients)."""
    names = sorted({str(s) for s in subjects if str(s)})
    return ", ".join(names)
