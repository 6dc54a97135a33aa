"""Quantile functions of the normal, Student t, beta and binomial distributions.

The risk estimators need four quantile functions (interval half-widths, Clopper–Pearson bounds,
order-statistic ranks). ``scipy.stats`` gives them, but importing it costs about half a second of
CPU on every ``medsim risk`` run; the functions here call the same ``scipy.special`` routines that
``scipy.stats`` calls (``ndtri``, ``stdtrit``, Boost's beta and binomial quantiles) and apply the
same rules around them, so they return the same numbers, bit for bit, as
``scipy.stats.<dist>.ppf``:

* ``q`` strictly inside (0, 1) and valid parameters: the special function's value;
* ``q == 0``: the lower end of the support (``-inf``, ``0`` for beta, ``-1`` for binom);
* ``q == 1``: the upper end (``inf``, ``1`` for beta, ``n`` for binom);
* anything else (``q`` outside [0, 1] or nan, invalid parameters): nan.

Inputs broadcast as numpy arrays do; a 0-d result comes back as a numpy scalar, as from
``scipy.stats``. ``tests/policies/test_risk_quantiles.py`` compares them with ``scipy.stats`` on
many inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import special
from scipy.special import _ufuncs


def _quantile(fn: Callable[..., np.ndarray], q, args: tuple, valid, lower, upper):
    """``fn(q, *args)`` where ``q`` is inside (0, 1) and ``valid``; the support's ends at 0 and 1; else nan."""
    q = np.asarray(q)
    args = tuple(np.asarray(a) for a in args)
    shape = np.broadcast_shapes(q.shape, np.shape(valid), *(a.shape for a in args))
    valid = np.broadcast_to(valid, shape)
    inside = valid & (0 < q) & (q < 1)
    out = np.full(shape, np.nan)
    at_lower, at_upper = valid & (q == 0), valid & (q == 1)
    out[at_lower] = np.broadcast_to(lower, shape)[at_lower]
    out[at_upper] = np.broadcast_to(upper, shape)[at_upper]
    if np.any(inside):
        good = [np.broadcast_to(a, shape)[inside] for a in (q, *args)]
        # scipy.stats adds loc 0 (and multiplies continuous quantiles by scale 1, which changes no
        # bit): -0.0 becomes 0.0.
        out[inside] = fn(*good) + 0
    return out[()] if out.ndim == 0 else out


def norm_ppf(q):
    """``scipy.stats.norm.ppf(q)``: the standard normal quantile."""
    return _quantile(special.ndtri, q, (), True, -np.inf, np.inf)


def t_ppf(q, df):
    """``scipy.stats.t.ppf(q, df)``: Student's t quantile with ``df`` degrees of freedom (> 0)."""
    df = np.asarray(df)
    return _quantile(lambda p, d: special.stdtrit(d, p), q, (df,), df > 0, -np.inf, np.inf)


def beta_ppf(q, a, b):
    """``scipy.stats.beta.ppf(q, a, b)``: the beta quantile (``a``, ``b`` > 0)."""
    a, b = np.asarray(a), np.asarray(b)
    return _quantile(_ufuncs._beta_ppf, q, (a, b), (a > 0) & (b > 0), 0.0, 1.0)


def binom_ppf(q, n, p):
    """``scipy.stats.binom.ppf(q, n, p)``: the smallest ``k`` with ``P(X <= k) >= q``, as a float."""
    n, p = np.asarray(n), np.asarray(p)
    valid = (n >= 0) & (n == np.round(n)) & (p >= 0) & (p <= 1)
    return _quantile(_ufuncs._binom_ppf, q, (n, p), valid, -1, n)
