"""No variant of a test input is trained on: the split key leaves the system prompt out, near
variants (an appended sentence, a changed word) share their original's side, and dedup keeps
near duplicates whose answers differ (the hard cases)."""

from __future__ import annotations

import random

from click.testing import CliRunner

from tests.support.tiny_model import call_record, event_record, write_log
from trainer._dedup import conversation_text, jaccard, shingles
from trainer.cli import dataset
from trainer.dataset import build_dataset
from trainer.split import split_key

START = 1_700_000_000_000_000
_VOCABULARY = (
    "account invoice refund shipping parcel courier warehouse password login email address billing "
    "card subscription renewal upgrade downgrade discount coupon voucher receipt tracking delivery "
    "return exchange damaged missing broken late early weekend monday friday morning evening store "
    "branch manager agent ticket escalation priority urgent question problem error message screen "
    "mobile laptop tablet printer router battery charger cable screen keyboard mouse speaker camera "
    "warranty repair replacement credit debit transfer balance statement overdraft limit fee charge "
    "plan family business student premium basic annual monthly cancel pause resume transfer contact"
)
WORDS = _VOCABULARY.split(" ")
SYSTEM_A = "You are the support assistant of ACME. Answer briefly and politely."
SYSTEM_B = "You are ACME's support assistant (v2 prompt). Be brief, be polite, cite the policy."


def text(rng: random.Random, n: int = 28) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "?"


def msgs(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def variants(original: str, rng: random.Random) -> dict[str, list[dict[str, str]]]:
    words = original.rstrip("?").split()
    i = rng.randrange(1, len(words))
    changed = [*words[:i], "zebra" if words[i] != "zebra" else "yak", *words[i + 1 :]]
    return {
        "system_prompt_edit": msgs(SYSTEM_B, original),
        "appended_sentence": msgs(SYSTEM_A, original + " Thanks a lot for your help today."),
        "one_word_change": msgs(SYSTEM_A, " ".join(changed) + "?"),
    }


def test_the_split_key_is_the_user_visible_input():
    assert split_key(msgs(SYSTEM_A, "hello")) == split_key(msgs(SYSTEM_B, "hello"))
    assert split_key(msgs(SYSTEM_A, "hello")) == split_key([{"role": "user", "content": " hello "}])
    assert split_key(msgs(SYSTEM_A, "hello")) != split_key(msgs(SYSTEM_A, "hello there"))


def test_variants_of_an_input_land_on_its_side_and_rebuilds_keep_every_side(log_dir):
    rng = random.Random(12)
    originals = [text(rng) for _ in range(150)]
    rows = [call_record(msgs(SYSTEM_A, t), f"answer {i}", ts_us=START + i) for i, t in enumerate(originals)]
    write_log(log_dir, rows)
    v1 = build_dataset(log_dir, "ex", test_fraction=0.3)
    side = {e.call_id: e.split for e in v1.examples()}
    assert len(side) == 150
    test_originals = [r for r in rows if side[r["call_id"]] == "test"]
    assert len(test_originals) >= 25

    later, kinds = [], {}
    for n, (r, t) in enumerate(zip(rows, originals, strict=True)):
        for kind, m in variants(t, rng).items():
            v = call_record(m, f"answer {n} ({kind})", ts_us=START + 10**9 + len(later))
            later.append(v)
            kinds[v["call_id"]] = (kind, r["call_id"])
    write_log(log_dir, later)
    v2 = build_dataset(log_dir, "ex", test_fraction=0.3)
    side2 = {e.call_id: e.split for e in v2.examples()}
    assert {c: side2[c] for c in side} == side  # every earlier input keeps its side
    assert v2.manifest["split"]["moved_to_test"] == 0
    leaked = {"system_prompt_edit": 0, "appended_sentence": 0, "one_word_change": 0}
    for call_id, (kind, original) in kinds.items():
        assert call_id in side2, f"{kind} variant removed"  # different answers: nothing deduplicated
        if side[original] == "test" and side2[call_id] != "test":
            leaked[kind] += 1
        assert side2[call_id] == side[original], kind
    print(f"\nvariants of {len(test_originals)} test inputs that landed in train: {leaked}")
    assert leaked == {"system_prompt_edit": 0, "appended_sentence": 0, "one_word_change": 0}
    assert v2.manifest["removed"]["near_duplicates"] == 0

    # without grouping, only the system-prompt edit is caught (by the split key): the check can fail
    ungrouped = build_dataset(log_dir, "flat", test_fraction=0.3, group_threshold=None)
    side3 = {e.call_id: e.split for e in ungrouped.examples()}
    flat = {k: 0 for k in leaked}
    for call_id, (kind, original) in kinds.items():
        flat[kind] += side3[original] == "test" and side3[call_id] != "test"
    print(f"without near-duplicate clusters: {flat}")
    assert flat["system_prompt_edit"] == 0
    assert flat["appended_sentence"] > 10 and flat["one_word_change"] > 10


def test_two_transcripts_with_different_due_dates_are_both_kept(log_dir):
    transcript = (
        "Agent: Thanks for calling, how can I help?\nCustomer: I need to confirm my invoice for the "
        "quarterly maintenance contract, reference 88231, for the Lyon warehouse.\nAgent: I see it "
        "here. The total is 4,250 euros and the invoice is due on {due}.\nCustomer: Great, and can I "
        "pay by bank transfer?\nAgent: Yes, the details are on the second page."
    )
    a = transcript.format(due="14 March 2025")
    b = transcript.format(due="2 April 2025")
    sim = jaccard(
        shingles(conversation_text(msgs(SYSTEM_A, a))), shingles(conversation_text(msgs(SYSTEM_A, b)))
    )
    assert 0.9 <= sim < 0.94, sim
    rows = [
        call_record(msgs(SYSTEM_A, a + "\nWhen is it due?"), "It is due on 14 March 2025.", ts_us=START),
        call_record(msgs(SYSTEM_A, b + "\nWhen is it due?"), "It is due on 2 April 2025.", ts_us=START + 1),
        call_record(msgs(SYSTEM_A, a + "\nWhen is it due?"), "it is due on 14 March 2025. ", ts_us=START + 2),
    ]
    write_log(log_dir, rows)
    dv = build_dataset(log_dir, "ex")
    kept = {e.call_id: e for e in dv.examples()}
    assert set(kept) == {rows[0]["call_id"], rows[1]["call_id"]}
    assert dv.manifest["removed"]["exact_duplicates"] == 1  # the same input and the same answer
    assert dv.manifest["removed"]["near_duplicates"] == 0
    assert dv.manifest["dedup"]["kept_with_another_label"]["near"] == 1
    assert len({e.split for e in kept.values()}) == 1


def test_a_near_variant_of_a_golden_input_is_left_out(log_dir):
    rng = random.Random(3)
    base = text(rng)
    golden = call_record(msgs(SYSTEM_A, base), "the golden answer", ts_us=START)
    variant = call_record(msgs(SYSTEM_B, base + " Please hurry."), "another answer", ts_us=START + 1)
    other = call_record(msgs(SYSTEM_A, text(rng)), "unrelated", ts_us=START + 2)
    write_log(log_dir, [golden, variant, other])
    dv = build_dataset(log_dir, "ex", golden_call_ids=[golden["call_id"]])
    assert {e.call_id: e.split for e in dv.examples()}.keys() == {golden["call_id"], other["call_id"]}
    assert dv.manifest["removed"]["near_golden"] == 1


def test_the_build_prints_what_each_step_removed_and_why(log_dir):
    rows = [
        call_record(
            msgs(SYSTEM_A, "How do I reset my password on the mobile app?"), "Tap Reset.", ts_us=START
        ),
        call_record(
            msgs(SYSTEM_B, "How do I reset my password on the mobile app?"), "Tap Reset.", ts_us=START + 1
        ),
        call_record(
            msgs(SYSTEM_A, "How do I reset my password on the mobile app?"), "Tap Reset.", ts_us=START + 2
        ),
        call_record(
            msgs(SYSTEM_A, "Something else entirely, about invoices."), "b", ts_us=START + 3, status=500
        ),
    ]
    write_log(log_dir, rows)
    out = CliRunner().invoke(dataset, ["build", "ex", "--log-dir", log_dir])
    assert out.exit_code == 0, out.output
    assert "removed: errors 1, exact_duplicates 1, near_duplicates 1" in out.output
    assert "  exact_duplicates 1: the same input and the same label as an example kept" in out.output
    assert "  near_duplicates 1: a near duplicate" in out.output
    assert "  errors 1: the call failed" in out.output


def test_preference_pairs_of_a_near_golden_variant_never_reach_train(log_dir):
    # The variant's example is left out (near_golden), but its relabel still makes a DPO pair:
    # that pair must not land in train (or test) by its own hash.
    rng = random.Random(5)
    base = text(rng)
    golden = call_record(msgs(SYSTEM_A, base), "the golden answer", ts_us=START)
    rows, events = [golden], []
    for i in range(20):
        v = call_record(msgs(SYSTEM_A, f"{base} Attempt {i}."), f"served {i}", ts_us=START + 1 + i)
        rows.append(v)
        events.append(event_record(v["call_id"], "relabel", f"corrected {i}"))
    write_log(log_dir, rows, events)
    dv = build_dataset(log_dir, "ex", golden_call_ids=[golden["call_id"]], warn=False)
    assert dv.manifest["removed"]["near_golden"] == 20
    assert dv.preferences("train") == [] and dv.preferences("test") == []
