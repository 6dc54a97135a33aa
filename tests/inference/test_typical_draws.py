"""PRED (typical draws) of a posterior that stores its subjects' filtered states."""

from __future__ import annotations

import numpy as np

from medsim.population import PosteriorDraws
from tests.population.test_population_sampling import fitted_draws


def test_typical_draws_of_draws_with_filtered_states():
    # `medsim demo` / `medsim check --report` failed on posteriors that store the subjects'
    # filtered states: the typical draws kept the (D, S) states of the D posterior draws.
    from medsim.inference.checks.gof import typical_draws

    d = 3
    draws = fitted_draws(n_draws=d)
    states = {k: np.ones((d, 3)) for k in draws.model.state_names}
    n_states = len(draws.model.state_names)
    draws = PosteriorDraws(
        **{**vars(draws), "state": states, "state_cov": np.zeros((d, 3, n_states, n_states)), "state_time": np.ones(3)}
    )
    typical = typical_draws(draws)
    assert typical.n_draws == 1 and not typical.state and typical.state_cov is None
