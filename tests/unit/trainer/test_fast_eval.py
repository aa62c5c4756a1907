"""Field match: the share of a JSON label's fields an answer gets right, broken JSON included."""

import json

from trainer.fast_eval import field_match, scores

LABEL = json.dumps({"name": "Frank", "qty": 3, "city": "Lima", "date": "2024-03-13"})


def test_a_whole_object_and_text_after_it():
    assert field_match(LABEL, LABEL) == 1.0
    assert field_match(LABEL + ' {"name"', LABEL) == 1.0
    assert field_match('{"name": "Frank", "qty": 4, "city": "Lima", "date": "2023-03-13"}', LABEL) == 0.5


def test_broken_json_gets_the_fields_it_holds():
    broken = '{"name": "Frank", "qty": ": "item", "lamp", "city": "Lima", "date": "2024-03-13"}'
    assert field_match(broken, LABEL) == 0.75
    assert field_match("no idea", LABEL) == 0.0


def test_labels_that_are_not_objects_need_the_exact_text():
    assert field_match(" hello ", "hello") == 1.0
    assert field_match("[1, 2]", "[1, 2, 3]") == 0.0


def test_scores_average_both_metrics():
    got = scores([LABEL, '{"name": "Frank"}'], [LABEL, LABEL])
    assert got == {"exact_match": 0.5, "field_match": 0.625}
