"""The binary decision threshold: the rules against a brute-force search, the few-validation-images
fallback, metrics at the threshold, and the threshold flowing from a card through the task into the
service's and ``tpp predict``'s outputs (older cards: 0.5, said so)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tpp.adapter_dir import check_card
from tpp.config import build_config
from tpp.errors import ConfigError, TppError
from tpp.metrics import classification_metrics
from tpp.tasks import get_task, task_of_card
from tpp.threshold import MIN_PER_CLASS, choose_threshold, parse_rule

NAMES = ["malignant", "benign"]


def scores(n=120, seed=0):
    """Validation-like scores: positives higher on average, with overlap and ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p1 = np.round(np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.2, n), 0, 1), 2)
    return p1, labels


def operating_point(p1, labels, t):
    called = p1 >= t
    return called[labels == 1].mean(), (~called[labels == 0]).mean()


def candidates(p1):
    return np.unique(p1)


def test_youden_maximises_sensitivity_plus_specificity():
    p1, labels = scores()
    d = choose_threshold(p1, labels, "youden")
    best = max(sum(operating_point(p1, labels, t)) for t in candidates(p1))
    sens, spec = operating_point(p1, labels, d["threshold"])
    assert sens + spec == pytest.approx(best)
    assert (d["val_sensitivity"], d["val_specificity"]) == pytest.approx((sens, spec))
    assert d["val_positives"] == int(labels.sum()) and d["val_negatives"] == int((1 - labels).sum())
    assert d["rule"] == "youden" and "validation" in d["chosen_by"]
    # halfway between two validation scores: no validation score sits on the threshold
    assert not np.isclose(p1, d["threshold"]).any()


@pytest.mark.parametrize("target", [0.8, 0.95, 1.0])
def test_target_sensitivity_keeps_the_best_specificity_reaching_it(target):
    p1, labels = scores(seed=1)
    d = choose_threshold(p1, labels, f"sensitivity:{target}")
    sens, spec = operating_point(p1, labels, d["threshold"])
    assert sens >= target
    best_spec = max(operating_point(p1, labels, t)[1] for t in candidates(p1)
                    if operating_point(p1, labels, t)[0] >= target)
    assert spec == pytest.approx(best_spec) and d["rule"] == f"sensitivity:{target:g}"


def test_target_specificity_and_a_fixed_value():
    p1, labels = scores(seed=2)
    d = choose_threshold(p1, labels, "specificity:0.9")
    sens, spec = operating_point(p1, labels, d["threshold"])
    assert spec >= 0.9
    assert sens == pytest.approx(max(operating_point(p1, labels, t)[0] for t in candidates(p1)
                                     if operating_point(p1, labels, t)[1] >= 0.9))
    fixed = choose_threshold(p1, labels, 0.3)
    assert fixed["threshold"] == 0.3 and fixed["rule"] == "fixed 0.3" and "val_sensitivity" not in fixed


def test_too_few_validation_images_of_a_class_keep_one_half_and_say_so():
    p1, labels = scores()
    keep = np.r_[np.nonzero(labels == 1)[0][:MIN_PER_CLASS - 1], np.nonzero(labels == 0)[0][:30]]
    d = choose_threshold(p1[keep], labels[keep], "sensitivity:0.9")
    assert d["threshold"] == 0.5 and d["val_positives"] == MIN_PER_CLASS - 1
    assert "fewer than 5" in d["chosen_by"] and "sensitivity:0.9" in d["chosen_by"]
    enough = np.r_[np.nonzero(labels == 1)[0][:MIN_PER_CLASS], np.nonzero(labels == 0)[0][:MIN_PER_CLASS]]
    assert "validation split" in choose_threshold(p1[enough], labels[enough])["chosen_by"]


@pytest.mark.parametrize("rule", ["yuden", "sensitivity:1.5", "recall:0.9", "sensitivity:", -0.1, 1.2, True,
                                  float("nan")])
def test_a_rule_that_is_not_one_is_a_config_error_naming_the_forms(rule):
    with pytest.raises(ConfigError, match="youden, sensitivity:T or specificity:T"):
        parse_rule(rule)


def test_the_config_section_checks_the_rule_and_the_bootstrap_count():
    cfg = build_config({"classification": {"threshold": "sensitivity:0.9", "bootstrap_resamples": 50}})
    assert cfg.task_options.threshold == "sensitivity:0.9" and cfg.task_options.bootstrap_resamples == 50
    assert build_config({"classification": {"threshold": 0.25}}).task_options.threshold == 0.25
    with pytest.raises(ConfigError, match="classification.threshold='median' is not a rule"):
        build_config({"classification": {"threshold": "median"}})
    with pytest.raises(ConfigError, match="bootstrap_resamples must be in 0..100000"):
        build_config({"classification": {"bootstrap_resamples": -1}})


def test_metrics_decide_at_the_threshold_inclusively_and_record_the_bootstrap():
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]])
    at_half = classification_metrics(probs, labels)
    assert (at_half["sensitivity"], at_half["specificity"]) == pytest.approx((2 / 3, 2 / 3))
    low = classification_metrics(probs, labels, threshold=0.3, resamples=17)  # p1 == 0.3 counts as positive
    assert (low["sensitivity"], low["specificity"]) == pytest.approx((1.0, 1 / 3))
    assert low["confusion_matrix"] == [[1, 2], [0, 3]] and low["threshold"] == 0.3
    assert low["bootstrap_resamples"] == 17 and low["auroc"] == at_half["auroc"]
    assert classification_metrics(probs, labels, resamples=0)["auroc_ci95"] is None


def card(decision=None, names=NAMES) -> dict:
    entry = {"type": "classification", "num_classes": len(names), "label_names": names}
    return {"task": entry if decision is None else dict(entry, decision=decision)}


def test_the_cards_threshold_decides_what_predict_and_serve_return():
    from tpp.serve.bank import Site

    decision = {"threshold": 0.3, "rule": "youden", "chosen_by": "youden on the validation split",
                "val_positives": 9, "val_negatives": 11}
    task = Site("north", "v1", card(decision), head=None, encoder=None).task  # what the service uses
    result = [0.65, 0.35]  # argmax would say malignant
    entry = task.json_entry(result, NAMES)
    assert entry["label"] == "benign" and entry["threshold"] == 0.3 and "youden" in entry["threshold_source"]
    row, files = task.csv_entry(result, NAMES, "00000_x")
    assert row["label"] == "benign" and float(row["threshold"]) == 0.3 and files == {}
    assert task.json_entry([0.71, 0.29], NAMES)["label"] == "malignant"
    m = task.metrics(torch.tensor([[0.65, 0.35], [0.9, 0.1]]), torch.tensor([1, 0]), None, 0)
    assert m["threshold"] == 0.3 and m["accuracy"] == 1.0


def test_an_older_card_without_a_threshold_decides_at_one_half_and_says_so():
    task = task_of_card(card())
    entry = task.json_entry([0.55, 0.45], NAMES)
    assert entry["label"] == "malignant" and entry["threshold"] == 0.5
    assert "records no threshold" in entry["threshold_source"]
    assert "default" in task.decision_line() and task.json_entry([0.5, 0.5], NAMES)["label"] == "benign"
    multi = task_of_card(card(names=["a", "b", "c"]))
    assert multi.decision_line() is None  # argmax: nothing to say about a threshold
    assert multi.json_entry([0.2, 0.5, 0.3], ["a", "b", "c"]) == {"label": "b",
                                                                  "probabilities": {"a": 0.2, "b": 0.5, "c": 0.3}}
    assert get_task("classification").threshold == 0.5  # binding a card leaves the registered task alone


def test_a_hand_written_decision_needs_only_its_threshold():
    task = task_of_card(card({"threshold": 0.4, "chosen_by": "x" * 5000}))
    assert task.json_entry([0.55, 0.45], NAMES)["label"] == "benign"
    assert len(task.json_entry([0.55, 0.45], NAMES)["threshold_source"]) == 200  # a card is not trusted to be brief
    bare = task_of_card(card({"threshold": 0.4}))
    assert bare.csv_entry([0.55, 0.45], NAMES, "s")[0]["threshold_source"] == "recorded in the adapter card"
    assert "threshold 0.4000 (recorded in the adapter card)" in bare.decision_line()


@pytest.mark.parametrize("value", ["0.3", float("nan"), 1.5, None, True])
def test_a_forged_threshold_is_refused_naming_the_card(value, tmp_path):
    forged = dict(card({"threshold": value, "rule": "youden"}), format="tpp-adapter/1", kind="adapter")
    path = tmp_path / "tpp_card.json"
    path.write_text(json.dumps(forged))
    with pytest.raises(TppError, match=r"tpp_card.json'.*task.decision.threshold must be a number in \[0, 1\]"):
        check_card(json.loads(path.read_text()), path)
    assert get_task("classification").check_entry(forged["task"])  # the service's integrity check says so too


def test_the_positive_class_can_be_the_first_label():
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]])
    m = classification_metrics(probs, labels, threshold=0.55, positive=0)  # class 0 when p0 >= 0.55
    assert (m["sensitivity"], m["specificity"]) == pytest.approx((2 / 3, 2 / 3))  # recall of class 0, of class 1
    assert m["confusion_matrix"] == [[2, 1], [1, 2]] and m["positive_class_index"] == 0
    assert m["auroc"] == classification_metrics(probs, labels)["auroc"]
    task = task_of_card(dict(card({"threshold": 0.65}), task=dict(card({"threshold": 0.65})["task"],
                                                                  positive_class="malignant")))
    assert task.json_entry([0.66, 0.34], NAMES)["label"] == "malignant"
    assert task.json_entry([0.64, 0.36], NAMES)["label"] == "benign"
    assert task.csv_entry([0.64, 0.36], NAMES, "s")[0]["positive_class"] == "malignant"
    assert "positive class 'malignant'" in task.decision_line()


def test_a_positive_class_the_data_lacks_is_an_error_naming_the_option():
    from types import SimpleNamespace

    task, options = get_task("classification"), get_task("classification").options_cls(positive_class="tumour")
    data = SimpleNamespace(name="breastmnist", class_names=NAMES, num_classes=2)
    with pytest.raises(TppError, match=r"classification.positive_class='tumour' must be one of \['malignant'"):
        task.card_entry(options, data, None, None)
    assert task.card_entry(get_task("classification").options_cls(), data, None, None)["positive_class"] == "benign"
    three = SimpleNamespace(name="derma", class_names=["a", "b", "c"], num_classes=3)
    with pytest.raises(TppError, match="unset: dataset 'derma' has 3 classes"):
        task.card_entry(get_task("classification").options_cls(positive_class="a"), three, None, None)


def test_a_forged_positive_class_is_refused(tmp_path):
    forged = dict(card(), format="tpp-adapter/1", kind="adapter", method="lora", options={}, target_modules=[],
                  site="s", created="2026-12-01")
    forged["task"]["positive_class"] = "everything"
    with pytest.raises(TppError, match=r"task.positive_class 'everything' is not one of the label names \['mal"):
        check_card(forged, tmp_path / "tpp_card.json")
    forged["task"].update(label_names=["a", "b", "c"], num_classes=3)  # argmax decides; the head check judges it
    check_card(forged, tmp_path / "tpp_card.json")
    assert task_of_card(forged).decision_line() is None
