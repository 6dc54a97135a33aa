"""Saved trajectory paths of a rollout (for fan charts): joining interval segments and chunks."""

from __future__ import annotations

import numpy as np

from medsim.policies.result import RolloutResult


def compress_segments(paths: list) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Join per-interaction path segments, keeping each time point once per patient.

    Segments repeat the shared end point of consecutive intervals and pad with repeated times; only
    strictly increasing times are kept, and shorter rows repeat their last point, so the saved
    paths depend on the patient alone (not on the chunk it was simulated in).
    """
    if not paths:
        return None, {}
    time = np.concatenate([p[0] for p in paths], axis=1).astype(np.float64)
    values = {o: np.concatenate([p[1][o] for p in paths], axis=1) for o in paths[0][1]}
    keep = np.concatenate([np.ones((time.shape[0], 1), bool), np.diff(time, axis=1) > 0], axis=1)
    count = keep.sum(axis=1)
    rows, cols = np.nonzero(keep)
    pos = np.cumsum(keep, axis=1)[rows, cols] - 1
    index = np.minimum(np.arange(count.max())[None, :], (count - 1)[:, None])

    def compress(a: np.ndarray) -> np.ndarray:
        out = np.zeros((a.shape[0], count.max()), a.dtype)
        out[rows, pos] = a[rows, cols]
        return np.take_along_axis(out, index, axis=1)

    return compress(time), {o: compress(v) for o, v in values.items()}


def join_paths(parts: list[RolloutResult]) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Saved paths of several chunks on one (M, T) grid; shorter rows repeat their last entry."""
    saved = [p for p in parts if p.path_time is not None]
    if not saved:
        return None, {}
    width = max(p.path_time.shape[1] for p in saved)

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), mode="edge") if a.shape[1] < width else a

    time = np.concatenate([pad(p.path_time) for p in saved])
    return time, {o: np.concatenate([pad(p.path[o]) for p in saved]) for o in saved[0].path}
