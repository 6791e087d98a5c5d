import pytest
import torch

from tpp.metrics import classification_metrics


def test_metrics_binary_and_multiclass():
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4], [0.8, 0.2]])
    m = classification_metrics(probs, labels)
    assert m["auroc"] == pytest.approx(1.0) and m["accuracy"] == pytest.approx(5 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == [[3, 0], [1, 2]]
    labels3 = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2])
    probs3 = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 1, 0, 0, 1, 2]), 3).float() * 0.8 + 0.2 / 3
    m3 = classification_metrics(probs3, labels3)
    assert m3["accuracy"] == pytest.approx(8 / 9) and 0.5 < m3["auroc"] <= 1.0
    assert len(m3["confusion_matrix"]) == 3 and m3["auroc_ci95"][0] <= m3["auroc_ci95"][1]
