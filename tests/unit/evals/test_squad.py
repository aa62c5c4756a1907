"""SQuAD v1.1 answer normalisation, exact match and token F1."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evals.golden.metrics import compute_metrics
from evals.golden.squad import normalize_answer, squad_exact_match, token_f1


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Paris.", "paris"),
        ("The Eiffel  Tower!", "eiffel tower"),
        ("an apple, a pear", "apple pear"),
        ("  Theory of the 'Big Bang' ", "theory of big bang"),
        ("", ""),
    ],
)
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_ignores_punctuation_articles_and_case():
    assert squad_exact_match("Paris.", "paris")
    assert squad_exact_match("the Big Apple", "Big Apple!")
    assert not squad_exact_match("Paris, France", "Paris")
    assert not squad_exact_match(None, "Paris")


@pytest.mark.parametrize(
    ("pred", "ref", "f1"),
    [
        ("the cat sat", "a cat sat down", 0.8),  # P 2/2, R 2/3
        ("Paris", "Paris.", 1.0),
        ("red red blue", "red blue blue", 2 / 3),  # shared tokens counted with multiplicity
        ("green", "red", 0.0),
        ("", "", 1.0),
        ("the", "red", 0.0),  # nothing left of the prediction after normalisation
    ],
)
def test_token_f1(pred, ref, f1):
    assert token_f1(pred, ref) == pytest.approx(f1)


@given(st.text(max_size=40), st.text(max_size=40))
def test_token_f1_is_a_symmetric_score_in_the_unit_interval(a, b):
    f = token_f1(a, b)
    assert 0.0 <= f <= 1.0
    assert f == pytest.approx(token_f1(b, a))
    assert (f == 1.0) == (
        normalize_answer(a).split() == normalize_answer(b).split()
        or sorted(normalize_answer(a).split()) == sorted(normalize_answer(b).split())
    )


def test_metrics_are_registered_beside_the_others_and_skip_examples_without_reference():
    got = compute_metrics(
        ["exact_match", "squad_exact_match", "token_f1"], ["Paris", "x", "y"], ["Paris.", None, "y z"]
    )
    assert got == {
        "exact_match": {"exact_match": 0.0},
        "squad_exact_match": {"squad_exact_match": 0.5},
        "token_f1": {"token_f1": pytest.approx((1.0 + 2 / 3) / 2)},
    }
