"""Label mapping for visual reprogramming (tpp/label_mapping.py): one-to-one, and ILM follows the data."""
import numpy as np
import pytest
import torch

from tpp.errors import TppError
from tpp.label_mapping import (apply_mapping, frequency_mapping, iterative_mapping, random_mapping)


def logits_predicting(top: list[int], num_source: int) -> torch.Tensor:
    """(N, S) logits whose argmax is ``top``."""
    out = torch.zeros(len(top), num_source)
    out[torch.arange(len(top)), torch.tensor(top)] = 5.0
    return out


@pytest.mark.parametrize("seed", range(5))
def test_random_mapping_is_one_to_one_and_seeded(seed):
    mapping = random_mapping(10, 4, seed)
    assert len(set(mapping.tolist())) == 4 and mapping.min() >= 0 and mapping.max() < 10
    assert np.array_equal(mapping, random_mapping(10, 4, seed))


def test_frequency_mapping_takes_the_most_frequent_source_class_one_to_one():
    # target 0 is mostly predicted as source 3, target 1 also mostly as 3 but less often, then as 7
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    logits = logits_predicting([3, 3, 3, 1, 3, 3, 7, 7, 2], 8)
    mapping = frequency_mapping(logits, labels, 2)
    assert mapping.tolist() == [3, 7]  # source 3 is taken by target 0 (3 images), so target 1 gets 7, not 3
    assert len(set(mapping.tolist())) == 2


def test_ilm_changes_the_mapping_when_the_predictions_change():
    labels = torch.tensor([0, 0, 1, 1])
    before = iterative_mapping(logits_predicting([2, 2, 5, 5], 6), labels, 2)
    after = iterative_mapping(logits_predicting([4, 4, 1, 1], 6), labels, 2)  # the prompt moved the predictions
    assert before.tolist() == [2, 5] and after.tolist() == [4, 1]
    same = iterative_mapping(logits_predicting([2, 2, 5, 1], 6), labels, 2)  # a tie (5 and 1): lower index
    assert same.tolist() == [2, 1]


def test_apply_mapping_reads_the_mapped_source_logits():
    logits = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(apply_mapping(logits, np.array([4, 0])), torch.tensor([[4.0, 0.0], [10.0, 6.0]]))
    with pytest.raises(TppError, match="two target classes"):
        apply_mapping(logits, np.array([1, 1]))
    with pytest.raises(TppError, match="at least as many source classes"):
        random_mapping(2, 3)
