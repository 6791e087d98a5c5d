"""The multi-task cycle does not frame its images yet: a padding visual prompt there would overwrite each image's
border and the card would record no frame, so `tpp validate` / `tpp run multitask` refuse it (naming the option)."""
import pytest

from tpp.config import load_config
from tpp.errors import ConfigError
from tpp.recipes import multitask

POOL = "recipes/configs/multitask/tpp_pool.yaml"


@pytest.mark.parametrize("method", ["adapter={method: visual_prompt}", "adapter={method: movl, pad: 2}",
                                    "adapter.method=[visual_prompt, lora]"])
def test_multitask_refuses_a_padding_prompt(method):
    with pytest.raises(ConfigError, match=r"adapter\.mode=pad .*not supported yet.*Set adapter\.mode=full"):
        multitask.check(load_config(POOL, [method]))


@pytest.mark.parametrize("method", ["adapter={method: visual_prompt, mode: full}", "adapter.method=lora"])
def test_multitask_takes_methods_without_a_frame(method):
    multitask.check(load_config(POOL, [method]))
