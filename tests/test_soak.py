"""The short reliability soak: chaos on both paths, then nothing lost, nothing twice.

Runs ``benchmarks.soak`` for about 20 seconds of chaos (worker and pool-process
SIGKILLs, 503/429/HTML 502 outages, slow and lost responses, Redis SIGKILLed and
restarted from its AOF, retries refused by a broker at ``maxclients``) while events are
buffered and sent directly, then waits for the drain. ``python -m benchmarks.soak
--seconds 60`` is the long version.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from conftest import REDIS_KILLED

from benchmarks.soak import FAULTS, SoakConfig, run


@pytest.mark.slow
@pytest.mark.timeout(170)
@REDIS_KILLED
class TestSoak:
    """Every accepted event is processed exactly once, whatever the chaos did."""

    def test_no_event_lost_or_processed_twice(self) -> None:
        """Lost and processed-twice are 0 after a drain, with every kind of chaos applied."""
        report = run(SoakConfig(seconds=21, rate=30, chaos_interval=2.5, drain_timeout=90, seed=6))
        summary = "\n".join(report.lines()) + f"\nlost: {report.lost_keys}\nlogs: {report.logdir}"
        assert report.lost == 0, summary
        assert report.processed_twice == 0, summary
        assert report.drained, summary
        assert report.accepted_buffered > 100 and report.accepted_direct > 100, summary
        assert report.processed_accepted + report.dead_letters >= report.accepted, summary
        assert report.worker_kills >= 1 and report.pool_kills >= 1, summary
        assert report.redis_restarts >= 1, summary
        assert report.publish_refusals >= 1, summary
        assert set(report.faults) == set(FAULTS), summary

    def test_on_a_redis_cluster(self) -> None:
        """``--cluster``: the buffer over 3 shards of a 3-master cluster, one node SIGKILLed
        and restarted from its AOF among the chaos; 0 lost and 0 processed twice."""
        report = run(
            SoakConfig(
                seconds=8, rate=40, chaos_interval=1.5, drain_timeout=60, seed=6, cluster=True
            )
        )
        summary = "\n".join(report.lines()) + f"\nlost: {report.lost_keys}\nlogs: {report.logdir}"
        assert report.lost == 0, summary
        assert report.processed_twice == 0, summary
        assert report.drained, summary
        assert report.accepted_buffered > 100 and report.accepted_direct > 100, summary
        assert report.redis_restarts >= 1 and report.worker_kills >= 1, summary
