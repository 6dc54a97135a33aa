"""A folder given as a posterior file is named a folder, not "does not exist"."""

from __future__ import annotations

import pytest

from medsim.inference.posterior import Posterior, PosteriorFormatError


def test_folder_is_named_a_folder(tmp_path):
    with pytest.raises(PosteriorFormatError, match="is a folder; expected a posterior file"):
        Posterior.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Posterior.load(tmp_path / "absent.nc")
