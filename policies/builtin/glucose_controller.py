"""What the built-in glucose controllers (``pid``, ``basal_bolus``) share: the glucose they measure.

The observable a controller measures is the user's ``observable=`` when given, else the model's
declared :attr:`~medsim.models.base.PhysiologyModel.glucose_observable`, filled in when the
policy meets its model (:func:`medsim.policies.protocol.for_model`: spec parsing with a model in
the context, the rollout, the environment). A model without glucose gets a
:class:`~medsim.policies.protocol.MissingObservableError` naming the policy and its observables.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from medsim.models.base import PhysiologyModel
from medsim.policies.protocol import (
    MissingObservableError,
    PolicyContext,
    for_model,
    spec_params,
    spec_string,
)


class GlucoseController:
    """Mixin of a frozen-dataclass glucose controller with the fields ``observable`` (the user's;
    ``None``: the model's) and ``model_observable`` (the model's, metadata
    :data:`~medsim.policies.protocol.FROM_MODEL`); ``kind`` is its spec name."""

    kind: ClassVar[str]
    observable: str | None
    model_observable: str | None

    @classmethod
    def from_spec(cls, raw: dict[str, str], context: PolicyContext) -> Any:
        """The policy of spec parameters ``raw``, for ``context.model`` when the context has one.

        Raises
        ------
        PolicySpecError
            For a bad parameter; :class:`MissingObservableError` when the model has no glucose
            observable and ``observable`` is not given.
        """
        from medsim.policies.loading import build_dataclass

        return for_model(build_dataclass(cls, cls.kind, raw), context.model)

    def for_model(self, model: PhysiologyModel) -> Any:
        """This policy measuring ``model``'s glucose observable unless ``observable`` is given.

        Raises
        ------
        MissingObservableError
            When ``observable`` is not given and ``model`` declares no glucose observable.
        """
        if self.observable is not None:
            return self
        name = model.glucose_observable
        if name is None:
            raise MissingObservableError(self.kind, "glucose", model)
        return self if name == self.model_observable else replace(self, model_observable=name)

    @property
    def glucose(self) -> str:
        """The observable measured: ``observable``, else the model's glucose observable.

        Raises
        ------
        MissingObservableError
            When neither is known (the policy was built without a model and without ``observable``).
        """
        if self.observable is not None:
            return self.observable
        if self.model_observable is None:
            raise MissingObservableError(self.kind, "glucose")
        return self.model_observable

    @property
    def name(self) -> str:
        return spec_string(self.kind, spec_params(self))
