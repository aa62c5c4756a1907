"""The split is a pure function of the input: stable, proportional, monotonic in the fraction."""

from __future__ import annotations

import pytest

from trainer.split import assign_split, input_key, unit_interval


def key(i: int) -> str:
    return input_key([{"role": "user", "content": f"question number {i}"}])


def test_same_input_always_gets_the_same_split():
    assert [assign_split(key(i)) for i in range(500)] == [assign_split(key(i)) for i in range(500)]


def test_about_the_configured_share_of_inputs_is_in_test():
    share = sum(assign_split(key(i), 0.1) == "test" for i in range(5000)) / 5000
    assert 0.085 < share < 0.115


def test_growing_the_fraction_only_moves_inputs_from_train_to_test():
    small = {i for i in range(2000) if assign_split(key(i), 0.1) == "test"}
    large = {i for i in range(2000) if assign_split(key(i), 0.2) == "test"}
    assert small < large


def test_a_different_salt_draws_an_independent_split():
    a = {i for i in range(2000) if assign_split(key(i), 0.5, salt="a") == "test"}
    b = {i for i in range(2000) if assign_split(key(i), 0.5, salt="b") == "test"}
    assert 0.4 < len(a & b) / len(a) < 0.6


def test_input_key_ignores_fields_that_do_not_change_the_input():
    plain = [{"role": "user", "content": "hi"}]
    noisy = [{"role": "user", "content": "hi", "name": None, "extra_field": 1}]
    assert input_key(plain) == input_key(noisy)
    assert input_key(plain) != input_key([{"role": "user", "content": "hi!"}])
    assert input_key(plain) != input_key(plain, tools=[{"type": "function", "function": {"name": "f"}}])


def test_unit_interval_is_in_range_and_fraction_is_checked():
    assert all(0 <= unit_interval(key(i)) < 1 for i in range(100))
    with pytest.raises(ValueError):
        assign_split(key(1), 1.0)
