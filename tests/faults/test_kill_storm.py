"""20 SIGKILLs at random moments, several inside a checkpoint write, each followed by --resume latest: the
run ends bit-identical to one never stopped (weights, EMA, optimizer, generator, log rows, grids, pipeline),
with no temporary folder left behind. The kills are timed from how long the uninterrupted run took to write its
first checkpoint, so they fall along the run on a slow machine too. About 4 minutes on 2 fast CPU cores, 8 on a
slow one."""

import pytest
from storm import kill_storm


@pytest.mark.slow
def test_twenty_kills_change_nothing(tmp_path, record_property):
    storm = kill_storm(tmp_path, kills=20, seed=0)
    for name in ("kills", "kills_while_writing", "steps_at_kills", "differences", "leftovers", "seconds"):
        record_property(name, getattr(storm, name))  # benchmarks/faults.py reports these
    assert storm.kills == 20
    assert storm.kills_while_writing >= 3, storm
    assert len(set(storm.steps_at_kills)) > 5, storm  # the kills fell all along the run, not in one place
    assert storm.differences == [] and storm.leftovers == [], storm
