"""Forged adapters in a store: nothing they hold may reach the shared backbone or another site.

An attacker who can write into the store is modelled by writing version folders directly (with a correct
content hash, so only the checks of what the files *say* stand between them and the backbone)."""
import json

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from serving_fixtures import fine_tuned_sites, forge

from tpp.serve import store
from tpp.adapters import all_methods
from tpp.backbones import backbone_hash
from tpp.serve.bank import AdapterBank
from tpp.cli import main
from tpp.errors import TppError
from tpp.serve.images import to_model_input

GOOD = {"lora_a": ["adapter.r=2", "seed=0"], "lora_b": ["adapter.r=4", "seed=1"],
        "loha": ["adapter={method: loha, r: 2}", "seed=2"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return fine_tuned_sites(tmp_path_factory.mktemp("forged"), {**GOOD, "full": ["adapter={method: full}"]}, images=6)


def with_tensor(files: dict[str, bytes], name: str, extra: dict) -> dict[str, bytes]:
    state = dict(load_bytes(files[name]))
    state.update(extra)
    return dict(files, **{name: save_bytes(state)})


def good_store(world, path):
    for site in GOOD:
        store.publish(world["runs"][site], path, site)
    bank = AdapterBank(str(world["backbone"]), str(path))
    return bank


def predictions(bank, world) -> dict[str, torch.Tensor]:
    out = {}
    for site in GOOD:
        s = bank.site(site)
        x = [to_model_input(im, s.input_rule) for im in world["images"]]
        out[site] = torch.stack(bank.predict([s] * len(x), x))
    return out


@pytest.mark.parametrize("site, key", [
    ("lora_a", "base_model.model.layers.0.attention.q_proj.base_layer.weight"),   # the LoRA group path
    ("loha", "base_model.model.layers.0.attention.q_proj.base_layer.weight"),     # a copy of its own
    ("lora_a", "base_model.model.layers.0.attention.q_proj.lora_A.lora_b__x.weight"),  # another site's name
    ("lora_a", "base_model.model.layers.1.layernorm_before.weight"),
])
def test_a_tensor_outside_the_method_is_refused_before_anything_is_copied(world, tmp_path, site, key):
    bank = good_store(world, tmp_path / "store")
    before = predictions(bank, world)
    _, files = store.read_source(world["runs"][site])
    forged = with_tensor(files, "adapter_model.safetensors", {key: torch.full((32, 32), 7.0)})
    forge(tmp_path / "store", "evil", forged)
    with pytest.raises(TppError, match="not .* target parameters") as err:
        bank.site("evil")
    assert key in str(err.value)
    assert backbone_hash(bank.encoder.model) == bank.info.hash and bank.guard.restores == 0
    after = predictions(bank, world)
    assert all(torch.equal(before[s], after[s]) for s in GOOD)
    assert "evil" in bank.refused and "evil" not in bank.resident


def test_publish_refuses_the_forged_tensor_and_writes_nothing(world, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    _, files = store.read_source(world["runs"]["lora_a"])
    forged = with_tensor(files, "adapter_model.safetensors",
                         {"base_model.model.layers.0.attention.q_proj.base_layer.weight": torch.zeros(32, 32)})
    adapter.mkdir()
    for name, data in forged.items():
        (adapter / name).write_bytes(data)
    assert main(["adapters", "publish", str(adapter), str(tmp_path / "store"), "--site", "x"]) == 2
    assert "not lora target parameters" in capsys.readouterr().err
    assert not (tmp_path / "store" / "x").exists()


def test_a_full_model_relabelled_as_an_adapter_is_refused(world, tmp_path, capsys):
    bank = good_store(world, tmp_path / "store")
    before = predictions(bank, world)
    run = world["runs"]["full"] / "adapter"
    # the full baseline's transformers config.json is no adapter file: a forger drops it to get past that check
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "config.json"}
    assert (run / "config.json").is_file()
    card = json.loads(files["tpp_card.json"])
    assert card["kind"] == "full_model"
    relabelled = dict(files, **{"tpp_card.json": json.dumps(dict(card, kind="adapter")).encode()})
    as_lora = dict(files, **{"tpp_card.json": json.dumps(dict(card, kind="adapter", method="lora", options={},
                                                                weights_file="model.safetensors")).encode()})
    with_config = dict(relabelled, **{"config.json": (run / "config.json").read_bytes()})
    for site, forged, reason in (("relabelled", relabelled, "produces a full_model"),
                                 ("as_lora", as_lora, "not lora target parameters")):
        forge(tmp_path / "store", site, forged)
        with pytest.raises(TppError, match=reason):
            bank.site(site)
        folder = tmp_path / site
        folder.mkdir()
        for name, data in forged.items():
            (folder / name).write_bytes(data)
        assert main(["adapters", "publish", str(folder), str(tmp_path / "other"), "--site", site]) == 2
        assert reason in capsys.readouterr().err
    forge(tmp_path / "store", "with_config", with_config)  # as saved: the store refuses the foreign file first
    with pytest.raises(TppError, match="'config.json', which is not part of an adapter"):
        bank.site("with_config")
    assert backbone_hash(bank.encoder.model) == bank.info.hash
    after = predictions(bank, world)
    assert all(torch.equal(before[s], after[s]) for s in GOOD)


@pytest.mark.parametrize("site", ["lora_a", "loha"])
def test_a_write_into_the_backbone_during_a_load_is_undone_and_the_site_refused(world, tmp_path, monkeypatch, site):
    """Defence in depth: should a load ever write into the backbone (a library bug, a new method), the
    version counters notice, the weights come back from disk and the site is refused."""
    import peft

    import tpp.serve.bank

    bank = good_store(world, tmp_path / "store")
    before = predictions(bank, world)
    for s in GOOD:
        bank.evict(s)
    store.publish(world["runs"][site], tmp_path / "store", "sneaky")
    target = bank.encoder.model.get_submodule("layers.0.attention.q_proj").weight

    def poisoned(real):
        def load(*args, **kwargs):
            out = real(*args, **kwargs)
            with torch.no_grad():
                target.add_(0.5)
            return out
        return load

    monkeypatch.setattr(tpp.serve.bank, "load_adapter_state", poisoned(tpp.serve.bank.load_adapter_state))
    monkeypatch.setattr(peft, "set_peft_model_state_dict", poisoned(peft.set_peft_model_state_dict))
    with pytest.raises(TppError, match="wrote into the shared backbone"):
        bank.site("sneaky")
    assert bank.guard.restores == 1 and backbone_hash(bank.encoder.model) == bank.info.hash
    monkeypatch.undo()
    after = predictions(bank, world)
    assert all(torch.equal(before[s], after[s]) for s in GOOD)


@pytest.mark.parametrize("name", [m.name for m in all_methods() if m.kind == "adapter"])
def test_every_method_key_rule_owns_its_tensors_and_no_backbone_weight(tiny_mae, name):
    from tpp.backbones import is_adapter_key, load_backbone
    from tpp.model import adapter_state, attach_adapter

    encoder, _, _ = load_backbone(str(tiny_mae))
    method, _, _ = attach_adapter(encoder, name, {})
    assert all(method.owns_key(k) for k in adapter_state(encoder))
    backbone_keys = [k for k in encoder.model.state_dict() if not is_adapter_key(k)]
    assert backbone_keys and not any(method.owns_key(k) for k in backbone_keys)
