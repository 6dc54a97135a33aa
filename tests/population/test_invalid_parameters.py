"""Invalid individual parameters are named where the population is built, not blamed on dt.

Reported: a negative volume reached the simulator and ended in "a smaller dt usually cures
this" (or, over a short horizon, in finite nonsense reported as a result).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medsim.models import get
from medsim.models.base import ResidualError
from medsim.population import VirtualPopulation


@pytest.mark.parametrize("value", [-5.0, 0.0])
def test_non_positive_structural_parameter_is_named(value):
    model = get("pk_iv_1cmt")
    params = {p.name: np.full(4, p.typical) for p in model.parameters}
    params["V"] = np.array([10.0, value, 10.0, value])
    with pytest.raises(ValueError) as err:
        VirtualPopulation.from_parameters(model, params)
    message = str(err.value)
    assert f"params['V'] is {value:g} for patient 1 (2 of 4 patients)" in message
    assert "must be > 0" in message
    assert "dt" not in message


def test_covariate_effects_may_be_negative():
    model = get("pk_iv_1cmt")
    params = {p.name: np.full(2, p.typical) for p in model.parameters}
    effects = [p.name for p in model.params_of_kind("covariate_effect")]
    assert effects  # the model has one, so the test can fail
    params[effects[0]] = np.array([-0.5, 0.5])
    assert VirtualPopulation.from_parameters(model, params).params[effects[0]][0] == -0.5


@pytest.mark.parametrize(("value", "what"), [(math.nan, "not a number"), (math.inf, "infinite"), (0.0, "not positive")])
def test_residual_error_says_which_parameter_is_wrong_and_how(value, what):
    with pytest.raises(ValueError, match=rf"needs add > 0, got add = {value} \({what}\)"):
        ResidualError("combined", add=value, prop=0.1)
    with pytest.raises(ValueError, match=rf"needs prop > 0, got prop = {value} \({what}\)"):
        ResidualError("combined", add=0.1, prop=value)
