"""Sticky canary assignment (`gateway.routing.assign`) and the per-request plan of each
traffic mode (`gateway.routing.modes`).

Contract: a key's bucket depends only on (salt, key); a key is in the canary exactly when
its bucket is below ``share * 100``, so shares are met, assignments are the same in every
process, and raising the share only ever moves keys into the canary.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.routing.assign import BUCKETS, bucket, in_canary
from gateway.routing.modes import Plan, plan_for
from gateway.routing.state import RouteState

KEYS = [f"user-{i}" for i in range(20_000)]
CHI2_1DF_P001 = 10.828  # critical value of chi-square with 1 degree of freedom at p = 0.001


def chi2_two_arms(n_canary: int, n: int, share_percent: float) -> float:
    expected_c = n * share_percent / 100
    expected_b = n - expected_c
    return (n_canary - expected_c) ** 2 / expected_c + (n - n_canary - expected_b) ** 2 / expected_b


class TestBucket:
    def test_buckets_are_in_range_and_deterministic(self):
        for key in KEYS[:1000]:
            b = bucket(key, "s")
            assert 0 <= b < BUCKETS
            assert bucket(key, "s") == b

    def test_the_same_key_gets_the_same_bucket_in_another_process(self):
        code = (
            "from gateway.routing.assign import bucket\n"
            "print([bucket(f'user-{i}', 'salt') for i in range(50)])"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == str([bucket(f"user-{i}", "salt") for i in range(50)])

    def test_the_salt_reshuffles_users(self):
        moved = sum(in_canary(k, "a", 50) != in_canary(k, "b", 50) for k in KEYS[:2000])
        assert 800 < moved < 1200  # about half change arm when the salt changes

    def test_buckets_are_uniform(self):
        counts = [0] * 10
        for key in KEYS:
            counts[bucket(key, "") * 10 // BUCKETS] += 1
        expected = len(KEYS) / 10
        chi2 = sum((c - expected) ** 2 / expected for c in counts)
        assert chi2 < 27.877  # 9 degrees of freedom, p = 0.001


class TestInCanary:
    @pytest.mark.parametrize("share", [1, 5, 25, 50, 90])
    def test_arm_shares_match_the_setting(self, share):
        n_canary = sum(in_canary(k, "salt", share) for k in KEYS)
        assert chi2_two_arms(n_canary, len(KEYS), share) < CHI2_1DF_P001

    def test_zero_share_puts_nobody_in_the_canary_and_100_everybody(self):
        assert not any(in_canary(k, "", 0) for k in KEYS[:2000])
        assert all(in_canary(k, "", 100) for k in KEYS[:2000])

    def test_shares_move_in_hundredths_of_a_percent(self):
        in_smallest = [k for k in KEYS if in_canary(k, "", 0.01)]
        assert all(bucket(k, "") == 0 for k in in_smallest)
        assert {bucket(k, "") for k in KEYS if in_canary(k, "", 0.02)} <= {0, 1}

    def test_raising_the_share_only_moves_users_into_the_canary(self):
        shares = [0, 0.5, 5, 10, 10.01, 25, 50, 99.99, 100]
        previous: set[str] = set()
        for share in shares:
            now = {k for k in KEYS if in_canary(k, "salt", share)}
            assert previous <= now, f"users left the canary when the share rose to {share}"
            previous = now
        assert len(previous) == len(KEYS)


class TestPlan:
    base = RouteState(route="bot", baseline="base", candidate="cand")

    def state(self, **changes):
        return RouteState(**{**self.base.public(), **changes})

    def test_off_serves_the_baseline_and_runs_nothing(self):
        assert plan_for(self.state(mode="off"), "u", 0.0) == Plan("baseline", None)

    def test_a_route_without_candidate_serves_the_baseline_whatever_the_mode(self):
        for mode in ("shadow", "canary", "primary"):
            assert plan_for(self.state(mode=mode, candidate=None, share=100), "u", 0.0) == Plan(
                "baseline", None
            )

    def test_shadow_serves_the_baseline_and_samples_the_candidate(self):
        state = self.state(mode="shadow", shadow_rate=0.25)
        assert plan_for(state, "u", 0.1) == Plan("baseline", "candidate")
        assert plan_for(state, "u", 0.3) == Plan("baseline", None)
        assert plan_for(self.state(mode="shadow", shadow_rate=0.0), "u", 0.0) == Plan("baseline", None)

    def test_primary_serves_the_candidate_and_reverse_shadows_the_baseline(self):
        assert plan_for(self.state(mode="primary", shadow_rate=1.0), "u", 0.99) == Plan(
            "candidate", "baseline"
        )
        assert plan_for(self.state(mode="primary", shadow_rate=0.0), "u", 0.0) == Plan("candidate", None)

    def test_canary_follows_the_sticky_hash(self):
        state = self.state(mode="canary", share=30, salt="x")
        for key in KEYS[:500]:
            expected = "candidate" if in_canary(key, "x", 30) else "baseline"
            # the random draw does not matter when there is a sticky key
            assert plan_for(state, key, 0.0).serve == expected
            assert plan_for(state, key, 0.99).serve == expected
            assert plan_for(state, key, 0.5).shadow is None

    def test_canary_without_a_sticky_key_places_the_request_at_random(self):
        state = self.state(mode="canary", share=30)
        assert plan_for(state, None, 0.29).serve == "candidate"
        assert plan_for(state, None, 0.31).serve == "baseline"
