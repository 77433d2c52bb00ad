"""The integration tests' probe measures outage as the experiments do (experiments.analysis.measures)."""

from __future__ import annotations

import pytest

from tests.support.probes import Answer, HttpProbe


def _probe(log: list[tuple[float, float, bool]]) -> HttpProbe:
    probe = HttpProbe(dep=None, url="http://192.0.2.1/")
    probe.log = [Answer(s, d, ok, b"x" if ok else b"") for s, d, ok in log]
    return probe


def test_the_longest_gap_counts_not_the_first_success_after_the_fault():
    # Served until 1.0, the fault at 1.05, one answer slips through at 1.2 (sent after the
    # fault), then nothing until 1.6: the outage is the 0.4 s gap, not the 0.19 s before the slip.
    probe = _probe([(0.9, 0.91, True), (1.0, 1.01, True), (1.1, 1.2, True), (1.3, 1.35, False),
                    (1.5, 1.6, True), (1.7, 1.71, True)])
    assert probe.outage_after(1.05) == pytest.approx(0.4)
    assert probe.served_since(1.5) and not probe.served_since(1.8)
    assert [a.sent for a in probe.failures_after(1.0)] == [1.3]


def test_no_answer_after_the_fault_is_no_measure():
    assert _probe([(0.9, 0.91, True), (1.1, 1.4, False)]).outage_after(1.0) is None
