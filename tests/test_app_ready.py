"""Studio.ready when a load ends between two looks at it: the visitor gets the load's outcome, not "still loading".
(Seen in a full run on a busy machine: a refused config, reported as 'is loading, 1 s so far'.)"""

from __future__ import annotations

import pytest

from app.registry import LoadStatus, ModelUnavailable
from app.studio import ModelLoading, Studio


class EndsBetweenLooks:
    """A load that is running at the first look and over (failed) by the time its Loading is asked for."""

    def __init__(self) -> None:
        self.looks = 0

    def ready_or_status(self, name):
        self.looks += 1
        if self.looks == 1:
            return LoadStatus(name, "loading", 1.0)
        raise ModelUnavailable("config field 'rope_theta' must be a finite number > 1, got 0")

    def loading(self, name):
        return None  # already ended


def test_a_load_that_ended_meanwhile_reports_its_outcome():
    studio = Studio(registry=EndsBetweenLooks())
    with pytest.raises(ModelUnavailable, match="rope_theta") as e:
        studio.ready("m")
    assert not isinstance(e.value, ModelLoading)
