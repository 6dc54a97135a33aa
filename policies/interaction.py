"""The record of one interaction of a chunk of patients, as the option loops keep it.

The host loop (:mod:`medsim.policies.rollout`) appends one :class:`Interaction` per pass of its
option loop, the compiled loop (:mod:`medsim.policies.device_loop`) fills a block of them per
call, and :func:`medsim.policies.rollout_assemble.assemble` stacks them into the
:class:`~medsim.policies.result.RolloutResult` arrays of the same names. The field list is
declared once, here, with the per-bound statistics taken from
:data:`medsim.policies.result.PER_BOUND`; an :class:`Interaction` is a named tuple, so JAX treats
it as a pytree inside the compiled loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from medsim.policies.result import PER_BOUND

#: Fields of an :class:`Interaction` other than the per-bound statistics, with what each holds
#: (``n`` patients of the chunk, ``J`` rollout bounds).
_FIELDS: tuple[tuple[str, str], ...] = (
    ("t_start", "(n,) float: the interaction's time, start of its interval"),
    ("t_end", "(n,) float: end of the interval (the next interaction)"),
    ("mask", "(n,) bool: the patient was before its horizon (the entries are real)"),
    ("measured", "observable -> (n,) float: the noisy measurement the policy saw (NaN: none)"),
    ("true_start", "observable -> (n,) float: the noise-free observable at t_start"),
    ("obs_min", "observable -> (n,) float: running minimum over the interval's sub-step grid"),
    ("obs_max", "observable -> (n,) float: running maximum over the interval's sub-step grid"),
    ("treatment", "name -> (n,) float: what the policy gave ('bolus_cmt<c>', 'rate_cmt<c>')"),
    (
        "out_of_support",
        "(n,) float: fraction of the interval outside the cohort's support; in the compiled loop's "
        "raw records, the (n, S) time outside each support bound, which "
        ":func:`medsim.policies.rollout_assemble.support_fraction` turns into that fraction",
    ),
)

#: Every field of an :class:`Interaction`, in order: :data:`_FIELDS`, then the per-bound
#: statistics ``(n, J)`` of :data:`medsim.policies.result.PER_BOUND`.
INTERACTION_FIELDS: tuple[str, ...] = tuple(name for name, _ in _FIELDS) + PER_BOUND

Interaction = NamedTuple("Interaction", [(name, Any) for name in INTERACTION_FIELDS])
Interaction.__doc__ = "One interaction of every patient of a chunk.\n\nFields\n------\n" + "\n".join(
    [f"{name} : {what}" for name, what in _FIELDS]
    + [f"{name} : (n, J), as in :class:`medsim.simulate.types.IntervalStats`" for name in PER_BOUND]
)
