"""Control paths through a subject's irregular record, for the neural-CDE encoder.

A neural CDE ``dh = F(h) dX(t)`` needs the record as a continuous path ``X`` through the knots
``(t_k, x_k)`` (Kidger et al. 2020, "Neural controlled differential equations for irregular
time series", NeurIPS). Two interpolations are offered:

* ``"linear"``: piecewise linear; on segment ``k`` the path moves at the constant rate
  ``D_k = x_{k+1} - x_k`` per unit of the segment parameter ``s = (t - t_k) / (t_{k+1} - t_k)``.
* ``"hermite"``: cubic Hermite with backward differences (Morrill et al. 2021, "Neural CDEs for
  online prediction tasks", §3): the slope at ``t_k`` is that of the previous segment and the slope
  at ``t_{k+1}`` that of the current one, so the path is C1 and segment ``k`` is known as soon as
  ``x_{k+1}`` is (it never looks past the next knot). Where the previous segment has zero length
  (repeated times) or does not exist, the current segment's slope is used, which makes that
  segment linear.

Paths are parametrised per segment by ``s`` in ``[0, 1]`` and the encoder integrates in ``s``,
so a segment of zero duration (two records at the same time) is an ordinary jump of the path and
never divides by a time difference. Padding knots repeat the last knot: zero increments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medsim.models.neural.config import Interpolation


@dataclass(frozen=True)
class ControlPath:
    """Interpolated path through knots ``(t_k, x_k)`` of a batch of records.

    Attributes
    ----------
    times : (B, K) tensor
        Knot times (model time unit), non-decreasing; padding repeats the last time.
    values : (B, K, C) tensor
        Channel values at the knots; padding repeats the last values.
    kind : {"linear", "hermite"}
    start_slope : (B, K - 1, C) tensor
        ``dX/ds`` at the start of each segment.
    """

    times: torch.Tensor
    values: torch.Tensor
    kind: Interpolation
    start_slope: torch.Tensor

    @classmethod
    def build(cls, times: torch.Tensor, values: torch.Tensor, kind: Interpolation = "linear") -> ControlPath:
        """Interpolate ``values`` (B, K, C) at ``times`` (B, K).

        Raises
        ------
        ValueError
            If shapes disagree, fewer than one knot is given or ``kind`` is unknown.
        """
        if values.ndim != 3 or times.shape != values.shape[:2]:
            raise ValueError(
                f"control path: times (B, K) and values (B, K, C) expected, got {times.shape}, {values.shape}"
            )
        if kind not in ("linear", "hermite"):
            raise ValueError(f"control path: interpolation must be 'linear' or 'hermite', got {kind!r}")
        increments = values[:, 1:] - values[:, :-1]  # (B, K-1, C)
        if kind == "linear" or values.shape[1] < 3:
            start = increments
        else:
            dt = times[:, 1:] - times[:, :-1]  # (B, K-1)
            prev_dt = dt[:, :-1]
            ok = prev_dt > 0
            # Backward slope of the previous segment, rescaled to the current segment's length.
            ratio = torch.where(ok, dt[:, 1:] / torch.where(ok, prev_dt, torch.ones_like(prev_dt)), 0.0)
            backward = increments[:, :-1] * ratio[..., None]
            start = torch.cat([increments[:, :1], torch.where(ok[..., None], backward, increments[:, 1:])], dim=1)
        return cls(times=times, values=values, kind=kind, start_slope=start)

    @property
    def n_segments(self) -> int:
        return int(self.values.shape[1]) - 1

    def evaluate(self, segment: int, s: float) -> torch.Tensor:
        """Path value ``X`` at parameter ``s`` of ``segment``, shape (B, C)."""
        x0 = self.values[:, segment]
        d = self.values[:, segment + 1] - x0
        if self.kind == "linear":
            return x0 + s * d
        m0 = self.start_slope[:, segment]
        # Cubic Hermite basis with end slope equal to the segment's own increment.
        h10 = s**3 - 2 * s**2 + s
        h01 = -2 * s**3 + 3 * s**2
        h11 = s**3 - s**2
        return x0 + h10 * m0 + h01 * d + h11 * d

    def derivative(self, segment: int, s: float) -> torch.Tensor:
        """``dX/ds`` on ``segment`` at parameter ``s`` in [0, 1], shape (B, C)."""
        d = self.values[:, segment + 1] - self.values[:, segment]
        if self.kind == "linear":
            return d
        m0 = self.start_slope[:, segment]
        # Derivatives of the Hermite basis: h10' = 3s^2 - 4s + 1, h01' = 6s - 6s^2, h11' = 3s^2 - 2s.
        return (3 * s**2 - 4 * s + 1) * m0 + (6 * s - 6 * s**2) * d + (3 * s**2 - 2 * s) * d
