"""Reproduction ``learned-guidance`` (arXiv 2510.00815) at ci size: every claim asserted, the one that does not
hold at this size, asserted as the tie it is, and the record's files.

Held: on the exact denoiser ω stays near 0 and sampling matches γ = 1; on the under-conditioned denoiser (class
information under-fitted, differently per class) the learned weights beat the best constant γ and the best
interval by more than half, track the ideal ω* and differ per class; on the few-step MLP they beat no guidance
and stay within 5% of the grid-searched baselines; under an injected score error (no guidance helps) they learn
ω ≈ 0 and do no harm. Not held at ci size: a strict win over the best interval on the few-step MLP (a tie
within noise; it holds at paper size, ``pytest -m slow``).
"""

from __future__ import annotations

import json

import pytest

from guidelab.experiments.reproductions.learned_guidance import learned_guidance

HOLDS = (
    "all_distances_finite",
    "exact_learned_omega_near_zero",
    "exact_learned_matches_gamma1",
    "under-conditioned_learned_beats_best_constant_by_half",
    "under-conditioned_learned_beats_best_interval_by_half",
    "under-conditioned_class_schedules_differ",
    "under-conditioned_learned_tracks_ideal_at_high_noise",
    "under-trained_learned_beats_gamma1",
    "under-trained_learned_within_5pct_of_best_baseline",
    "under-trained_learned_beats_best_constant",
    "score-error_learned_does_no_harm",
    "score-error_learned_omega_near_zero",
)
FAILS_AT_CI = {
    "under-trained_learned_beats_best_interval": "ratio 1.02-1.04 at ci size (seeds 21-24); 0.95 at paper size",
}


@pytest.fixture(scope="module")
def ci(tmp_path_factory):
    out = tmp_path_factory.mktemp("learned-guidance")
    return learned_guidance("ci", out), out


def test_every_claim_is_listed(ci) -> None:
    record, _ = ci
    assert set(record["claims"]) == set(HOLDS) | set(FAILS_AT_CI)


@pytest.mark.parametrize("claim", HOLDS)
def test_claim_holds(ci, claim: str) -> None:
    record, _ = ci
    assert record["claims"][claim], (claim, record["results"]["measures"], record["results"]["table"])


@pytest.mark.parametrize("claim", list(FAILS_AT_CI))
def test_claim_not_reproduced_at_ci_is_a_tie(ci, claim: str) -> None:
    """At ci size the few-step MLP's learned weights stay within 5% of the best interval; the strict win is
    asserted at paper size (``pytest -m slow``)."""
    record, _ = ci
    row = record["results"]["table"]["under-trained"]
    assert row["learned"] <= 1.05 * row["best interval"], row
    assert row["learned"] < row["gamma=1"], row


def test_record_files_and_table(ci) -> None:
    record, out = ci
    assert json.loads((out / "learned-guidance.json").read_text())["claims"] == record["claims"]
    assert record["figures"] == ["learned-guidance-omega.png"]
    assert (out / "learned-guidance-omega.png").stat().st_size > 10_000
    table = record["results"]["table"]
    assert set(table) == {"exact", "score-error", "under-conditioned", "under-trained"}
    assert all(set(row) == {"gamma=1", "best constant", "best interval", "learned"} for row in table.values())
    assert (out / "weights" / "under-trained" / "weights.pt").is_file()  # loadable by the learned guider


@pytest.mark.slow
def test_paper_size(tmp_path) -> None:
    record = learned_guidance("paper", tmp_path)
    failed = [claim for claim, ok in record["claims"].items() if not ok]
    assert not failed, (failed, record["results"]["measures"])
