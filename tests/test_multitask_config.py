"""What `tpp validate` and `tpp run multitask` refuse of a multitask config before any data or backbone is
loaded: pool keys the recipe never reads, unusable weights and learning rates, every pool problem at once."""
import pytest

from tpp.config import load_config
from tpp.errors import ConfigError

POOL = "recipes/configs/multitask/tpp_pool.yaml"


@pytest.mark.parametrize("value", ["-1e-3", "0", ".nan", ".inf"])
def test_head_lr_must_be_a_positive_finite_number(value):
    """A negative head_lr ended in torch's raw 'Invalid learning rate' traceback; 0 fell back to train.lr."""
    with pytest.raises(ConfigError, match=r"multitask\.head_lr must be a positive finite number"):
        load_config(POOL, [f"multitask.head_lr={value}"])
    assert load_config(POOL, ["multitask.head_lr=1e-4"]).multitask.head_lr == 1e-4
