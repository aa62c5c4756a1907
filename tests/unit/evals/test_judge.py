"""Pairwise judging against the scripted fake provider on a real loopback port."""

from __future__ import annotations

import random

import pytest
from evals_traffic import write_shadow_pairs

from evals.errors import FamilyGuardError, JudgeError
from evals.judge.pairwise import (
    ChatClient,
    Criteria,
    JudgeOptions,
    Pair,
    PriceTable,
    ResponseCache,
    judge,
    parse_verdict,
    shadow_pairs,
)
from gateway.store import LogStore


def make_pairs(n: int, candidate_longer: int, seed: int = 1) -> list[Pair]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        short = f"Answer {i}: yes."
        long = f"Answer {i}: yes, because the invoice total matches the order of {rng.randint(10, 99)} items."
        cand, base = (long, short) if i < candidate_longer else (short, long)
        pairs.append(Pair(f"item-{i:03d}", f"question {i}", base, cand, "gpt-4o-mini", "qwen2.5-0.5b-lora"))
    return pairs


def client(url: str, tmp_path=None) -> ChatClient:
    cache = ResponseCache(tmp_path / "cache.jsonl" if tmp_path else None)
    return ChatClient(url, "test-key", concurrency=8, retries=0, cache=cache)


def test_position_biased_judge_wins_about_half_under_randomized_order(fake_judge):
    _, url = fake_judge
    report = judge(
        make_pairs(100, candidate_longer=100), JudgeOptions(judges=("judge-first",), seed=7), client(url)
    )
    s = report.summary()
    print(f"\nposition-1 judge, one order: win rate {s['win_rate']:.2f}, loss rate {s['loss_rate']:.2f}")
    assert s["n_judged"] == 100
    assert 0.38 <= s["win_rate"] <= 0.62
    assert s["win_rate"] + s["loss_rate"] == pytest.approx(1.0)
    assert s["position_consistency"] is None


def test_position_biased_judge_is_inconsistent_on_every_item_with_both_orders(fake_judge):
    _, url = fake_judge
    opts = JudgeOptions(judges=("judge-first",), both_orders=True, seed=7)
    s = judge(make_pairs(60, candidate_longer=60), opts, client(url)).summary()
    print(f"\nposition-1 judge, both orders: consistency {s['position_consistency']['rate']:.2f}")
    assert s["position_consistency"]["rate"] == 0.0
    assert s["position_consistency"]["inconsistent"] == 60
    assert s["ties"] == 60 and s["wins"] == 0


def test_longer_answer_judge_ranks_the_longer_variant_first(fake_judge):
    _, url = fake_judge
    opts = JudgeOptions(judges=("judge-long",), both_orders=True, seed=3)
    s = judge(make_pairs(50, candidate_longer=40), opts, client(url)).summary()
    assert (s["wins"], s["ties"], s["losses"]) == (40, 0, 10)
    assert s["win_rate"] == pytest.approx(0.8)
    lo, hi = s["win_ci"]
    assert lo < 0.8 < hi and hi - lo < 0.3
    assert s["position_consistency"]["rate"] == 1.0
    assert s["candidate_wins"] is True


def test_jury_majority_follows_the_judge_that_breaks_the_deadlock(fake_judge):
    _, url = fake_judge
    opts = JudgeOptions(judges=("judge-first", "judge-second", "judge-long"), seed=5)
    report = judge(make_pairs(20, candidate_longer=15), opts, client(url))
    s = report.summary()
    assert (s["wins"], s["losses"]) == (15, 5)
    assert s["jury_agreement"] == 0.0  # judge-first and judge-second never agree
    assert all(len(i.votes) == 3 for i in report.items)


def test_identical_answers_are_a_tie_without_a_call(fake_judge):
    provider, url = fake_judge
    before = provider.calls("judge-long")
    pairs = [Pair(f"same-{i}", "q", "Same  answer.", "Same answer.") for i in range(5)]
    pairs.append(Pair("diff", "q", "short", "a much longer answer"))
    report = judge(pairs, JudgeOptions(judges=("judge-long",)), client(url))
    assert provider.calls("judge-long") - before == 1
    s = report.summary()
    assert s["identical"] == 5 and s["ties"] == 5 and s["wins"] == 1


FAMILIES = {"gpt-4o-mini": "openai", "qwen2.5-0.5b-lora": "qwen"}


def test_family_guard_refuses_a_judge_of_a_contestants_family(fake_judge):
    _, url = fake_judge
    pairs = make_pairs(4, candidate_longer=4)
    with pytest.raises(FamilyGuardError) as err:
        judge(
            pairs, JudgeOptions(judges=("gpt-4.1",), families={**FAMILIES, "gpt-4.1": "openai"}), client(url)
        )
    assert err.value.conflicts == [("gpt-4.1", "gpt-4o-mini", "openai")]
    with pytest.raises(FamilyGuardError):
        judge(
            pairs,
            JudgeOptions(judges=("judge-long",), families={**FAMILIES, "judge-long": "qwen"}),
            client(url),
        )


def test_family_guard_override_runs_and_flags_the_report(fake_judge):
    _, url = fake_judge
    opts = JudgeOptions(
        judges=("judge-long",), families={**FAMILIES, "judge-long": "qwen"}, allow_same_family=True
    )
    s = judge(make_pairs(4, candidate_longer=4), opts, client(url)).summary()
    assert s["wins"] == 4
    assert any("qwen" in f and "override" in f for f in s["flags"])
    # one judge: nothing to measure its own-family preference against, and the report says so
    assert s["self_preference"] == {
        "judge-long": {"family": "qwen", "measurable": False, "why": "no judge of another known family"}
    }


def test_families_are_never_guessed_from_names_and_unknown_ones_are_reported(fake_judge):
    _, url = fake_judge
    pairs = [
        Pair(f"i{i}", "q", "short", "a longer answer", "philosopher-7b", "support-ft-7") for i in range(3)
    ]
    s = judge(pairs, JudgeOptions(judges=("gpt-4o-judge",)), client(url)).summary()  # the fake's length judge
    assert s["families"] == {"gpt-4o-judge": None, "philosopher-7b": None, "support-ft-7": None}
    assert s["unknown_families"] == ["gpt-4o-judge", "philosopher-7b", "support-ft-7"]
    assert any("family unknown for gpt-4o-judge, philosopher-7b, support-ft-7" in f for f in s["flags"])
    nameless = judge([Pair("x", "q", "a", "bb")], JudgeOptions(judges=("judge-long",)), client(url)).summary()
    assert any("2 contestant answer(s) name no model" in f for f in nameless["flags"])
    # configured families are looked up by exact name (upstream first), so the guard now applies
    named = [Pair("y", "q", "a", "bb", "m-1", "m-2", baseline_upstream="up-1", candidate_upstream="up-2")]
    with pytest.raises(FamilyGuardError) as err:
        judge(
            named,
            JudgeOptions(judges=("judge-long",), families={"up-2": "llama", "judge-long": "llama"}),
            client(url),
        )
    assert err.value.conflicts == [("judge-long", "up-2", "llama")]


def test_a_jury_of_two_position_biased_judges_and_an_honest_one_recovers_the_honest_verdict(fake_judge):
    _, url = fake_judge
    pairs = make_pairs(40, candidate_longer=30, seed=4)
    honest = judge(
        pairs, JudgeOptions(judges=("judge-long",), both_orders=True, seed=2), client(url)
    ).summary()
    opts = JudgeOptions(judges=("judge-first", "judge-second", "judge-long"), both_orders=True, seed=2)
    report = judge(pairs, opts, client(url))
    s = report.summary()
    print(
        f"\njury of two position-biased judges and one honest: {s['wins']} wins, {s['ties']} ties, {s['losses']} losses"
    )
    assert (
        (s["wins"], s["ties"], s["losses"])
        == (honest["wins"], honest["ties"], honest["losses"])
        == (30, 0, 10)
    )
    assert s["per_judge"]["judge-first"]["abstentions"] == 40
    assert s["per_judge"]["judge-second"]["abstentions"] == 40
    assert s["per_judge"]["judge-long"]["abstentions"] == 0
    assert all(i.votes["judge-first"] == "abstain" for i in report.items)
    assert s["abstained_items"] == 0


def test_a_jury_that_all_abstains_is_a_tie_nobody_could_call(fake_judge):
    _, url = fake_judge
    opts = JudgeOptions(judges=("judge-first", "judge-second"), both_orders=True, seed=2)
    s = judge(make_pairs(10, candidate_longer=10), opts, client(url)).summary()
    assert (s["wins"], s["ties"], s["losses"]) == (0, 10, 0)
    assert s["abstained_items"] == 10


def test_a_consistent_tie_is_a_vote_and_equal_top_counts_are_a_tie():
    from evals.judge.jury import item_verdict, tally

    assert tally(["candidate", "tie", "tie"]) == "tie"
    assert tally(["candidate", "baseline"]) == "tie"
    assert tally(["candidate", "baseline", "candidate", "abstain", "abstain"]) == "candidate"
    assert tally(["abstain", "baseline"]) == "baseline"
    assert tally([]) == "tie"
    from evals.judge.jury import Judgement

    pair = Pair("p", "q", "a", "b")
    js = [
        Judgement("p", "j1", "candidate_first", "tie"),
        Judgement("p", "j1", "baseline_first", "tie"),
        Judgement("p", "j2", "candidate_first", "candidate"),
        Judgement("p", "j2", "baseline_first", "baseline"),
        Judgement("p", "j3", "candidate_first", "candidate", error="HTTP 503"),
    ]
    v = item_verdict(pair, js, ["j1", "j2", "j3"])
    assert v.votes == {"j1": "tie", "j2": "abstain"} and v.outcome == "tie" and not v.abstained
    assert v.consistency == {"j1": True, "j2": False} and v.position_consistent is False


def test_a_same_family_judges_own_family_preference_is_measured_against_the_other_judges(fake_judge):
    _, url = fake_judge
    families = {**FAMILIES, "judge-long": "qwen", "judge-first": "mistral"}
    opts = JudgeOptions(
        judges=("judge-long", "judge-first"), families=families, allow_same_family=True, seed=1
    )
    s = judge(make_pairs(60, candidate_longer=60, seed=8), opts, client(url)).summary()
    pref = s["self_preference"]["judge-long"]
    print(f"\nown-family preference of judge-long (qwen, like the candidate): {pref}")
    assert pref["measurable"] is True and pref["n"] == 60
    assert pref["own_family_rate"] == 1.0  # the candidate (qwen) is always the longer answer here
    assert 0.3 < pref["other_judges_rate"] < 0.7  # judge-first picks whatever is shown first
    assert pref["preference"] == pytest.approx(1.0 - pref["other_judges_rate"])
    assert pref["se"] is not None and pref["se"] < 0.1
    assert "judge-first" not in s["self_preference"]  # of no contestant's family


def test_rerun_is_answered_from_the_cache_and_costs_nothing(fake_judge, tmp_path):
    provider, url = fake_judge
    prices = PriceTable({"judge-long": (1.0, 2.0)})
    opts = JudgeOptions(judges=("judge-long",), both_orders=True, prices=prices)
    pairs = make_pairs(10, candidate_longer=6, seed=9)
    before = provider.calls("judge-long")
    first = judge(pairs, opts, client(url, tmp_path)).summary()
    assert provider.calls("judge-long") - before == 20
    assert first["cost"]["calls"] == 20 and first["cost"]["actual_usd"] > 0
    assert first["cost"]["estimated_usd"] > 0
    assert 0.3 < first["cost"]["estimated_usd"] / first["cost"]["actual_usd"] < 3
    second = judge(pairs, opts, client(url, tmp_path)).summary()
    assert provider.calls("judge-long") - before == 20
    assert second["cost"]["estimated_usd"] == 0 and second["cost"]["actual_usd"] == 0
    assert second["cost"]["cached_calls"] == 20
    assert (second["wins"], second["losses"]) == (first["wins"], first["losses"]) == (6, 4)


def test_rubric_criteria_come_from_a_file_and_are_scored_per_variant(fake_judge, tmp_path):
    provider, url = fake_judge
    path = tmp_path / "rubric.yaml"
    path.write_text(
        "rubric: Prefer complete answers.\ncriteria:\n  - name: complete\n    description: Says why.\n"
    )
    criteria = Criteria.from_file(path)
    assert criteria.rubric == "Prefer complete answers." and criteria.checks[0].name == "complete"
    opts = JudgeOptions(judges=("judge-long",), criteria=criteria)
    report = judge(make_pairs(10, candidate_longer=10), opts, client(url))
    assert report.summary()["criteria"] == {"complete": {"baseline": 0.0, "candidate": 1.0}}
    system = provider.requests[-1]["messages"][0]["content"]
    assert "Prefer complete answers." in system and '"criteria"' in system


def test_a_judge_that_never_answers_readably_fails_the_run(fake_judge):
    _, url = fake_judge
    with pytest.raises(JudgeError, match="judge-garbage"):
        judge(make_pairs(3, 3), JudgeOptions(judges=("judge-garbage",)), client(url))
    with pytest.raises(JudgeError, match="HTTP 503"):
        judge(make_pairs(2, 2), JudgeOptions(judges=("judge-down",)), client(url))


def test_a_juror_that_never_answers_fails_the_run(fake_judge):
    _, url = fake_judge
    with pytest.raises(JudgeError):
        judge(make_pairs(2, 2), JudgeOptions(judges=("judge-long", "judge-down")), client(url))


@pytest.mark.parametrize(
    ("text", "winner"),
    [
        ('{"reason": "A is right", "winner": "A"}', "A"),
        ('```json\n{"winner": "answer b", "reason": "x"}\n```', "B"),
        ('Reasoning...\n{"winner": "tie"}', "tie"),
        ("Both fine. Final verdict: [[B]]", "B"),
        ("winner: A", "A"),
    ],
)
def test_parse_verdict(text, winner):
    assert parse_verdict(text)[0] == winner


def test_shadow_pairs_join_baseline_rows_with_their_shadow_candidates(log_dir):
    ids = write_shadow_pairs(log_dir, "support", [("q1", "b1", "c1"), ("q2", "b2", "c2")])
    write_shadow_pairs(log_dir, "other", [("q3", "b3", "c3")])
    with LogStore.open(log_dir) as store:
        pairs = shadow_pairs(store, "support")
    assert [p.call_id for p in pairs] == ids
    assert [(p.prompt, p.baseline, p.candidate) for p in pairs] == [
        ("user: q1", "b1", "c1"),
        ("user: q2", "b2", "c2"),
    ]
    assert pairs[0].baseline_model == "gpt-4o-mini" and pairs[0].candidate_model == "qwen2.5-0.5b-lora"
