"""Every registered method declares what it adapts (``touches``), and every pair the registry calls compatible
really composes: both parts attach, only their tensors train, one adapter directory saves and loads them all."""
import itertools
import json

import pytest
import torch
from conftest import make_backbone

from tpp.adapter_dir import CARD, write_adapter_dir
from tpp.adapter_read import read_weights
from tpp.adapters import all_methods, get_method
from tpp.adapters.compose import _conflict
from tpp.backbones import backbone_hash, load_backbone
from tpp.errors import ConfigError
from tpp.model import adapter_state, attach_adapter, load_adapter_state

METHODS = all_methods()
PAIRS = [(a.name, b.name) for a, b in itertools.combinations(METHODS, 2) if _conflict(a, b) is None]
REFUSED = [(a.name, b.name) for a, b in itertools.combinations(METHODS, 2) if _conflict(a, b) is not None]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return str(make_backbone(tmp_path_factory.mktemp("compose_registry") / "bb", "vit_mae"))


def test_every_registered_method_declares_what_it_touches():
    assert [m.name for m in METHODS if m.touches is None] == []
    assert len(PAIRS) >= 15  # the registry declares many compatible pairs, not only the prompt ones
    assert ("lora", "vpt") in PAIRS and ("bottleneck", "lora") in PAIRS and ("ln_tuning", "visual_prompt") in PAIRS


@pytest.mark.parametrize("pair", REFUSED, ids="+".join)
def test_every_incompatible_pair_is_a_config_error_naming_both(pair):
    with pytest.raises(ConfigError) as info:
        get_method(list(pair))
    assert all(f"'{name}'" in str(info.value) for name in pair), str(info.value)


@pytest.mark.parametrize("pair", PAIRS, ids="+".join)
def test_every_compatible_pair_attaches_saves_and_loads(backbone, tmp_path, pair):
    encoder, info, _ = load_backbone(backbone)
    method, typed, targets = attach_adapter(encoder, list(pair), {})
    state = adapter_state(encoder)
    for part in method.parts:  # each part contributes tensors of its own
        assert any(part.owns_key(k) for k in state), (part.name, sorted(state)[:4])
    trainable = {n for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert sum(encoder.model.get_parameter(n).numel() for n in trainable) == sum(v.numel() for v in state.values())
    with torch.no_grad():
        for p in encoder.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        x = torch.randn(2, 3, 28, 28)
        out = encoder(x)
    assert backbone_hash(encoder.model) == info.hash
    card = {"kind": "adapter", "method": method.name, "options": dict(vars(typed)), "target_modules": targets}
    write_adapter_dir(tmp_path / "a", encoder, None, card)
    card = json.loads((tmp_path / "a" / CARD).read_text())
    fresh, _, _ = load_backbone(backbone)
    attach_adapter(fresh, card["method"], card["options"], card["target_modules"])
    load_adapter_state(fresh, read_weights(tmp_path / "a", card), "test")
    with torch.no_grad():
        assert torch.equal(fresh(x), out)
