"""Composed methods (adapters/compose.py): ``adapter.method: [visual_prompt, lora]`` is one method whose adapter
directory holds every part; compatibility comes from the registry."""
import csv
import json
import re

import numpy as np
import pytest
import torch
from conftest import make_backbone, make_medmnist
from helpers import run_cli
from serving_fixtures import pixels

from tpp.adapter_dir import CARD, FORMAT, WEIGHTS, write_adapter_dir
from tpp.adapter_read import read_tensors, read_weights
from tpp.adapters import get_method
from tpp.backbones import backbone_hash, is_adapter_key, load_backbone
from tpp.config import load_config
from tpp.errors import ConfigError
from tpp.model import adapter_state, attach_adapter, load_adapter_state

PAIRS = [(["visual_prompt", "lora"], {"lora": {"r": 2}}, {"tpp_visual_prompt", "lora_A", "lora_B"}),
         (["vpt", "lora"], {"vpt": {"length": 3}}, {"tpp_prompt", "lora_A", "lora_B"}),
         (["visual_prompt", "vpt"], {"visual_prompt": {"mode": "full"}}, {"tpp_visual_prompt", "tpp_prompt"})]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return str(make_backbone(tmp_path_factory.mktemp("compose") / "bb", "vit_mae"))


def kinds(keys) -> set[str]:
    """The tensor kinds among saved keys: 'lora_A', 'tpp_prompt' ..."""
    return {part for k in keys for part in k.split(".") if part.startswith(("lora_", "tpp_"))}


@pytest.mark.parametrize("names, options, expected", PAIRS)
def test_composed_methods_save_and_load_every_part(backbone, tmp_path, names, options, expected):
    encoder, info, _ = load_backbone(backbone)
    x = torch.randn(2, 3, 28, 28)
    method, typed, targets = attach_adapter(encoder, names, options)
    assert method.name == "+".join(names) and [p.name for p in method.parts] == names
    trainable = [n for n, p in encoder.model.named_parameters() if p.requires_grad]
    state = adapter_state(encoder)
    assert kinds(state) == expected and all(is_adapter_key(n) for n in trainable)
    assert sum(encoder.model.get_parameter(n).numel() for n in trainable) == sum(v.numel() for v in state.values())
    with torch.no_grad():
        for p in encoder.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        out = encoder(x)
    assert backbone_hash(encoder.model) == info.hash
    card = {"kind": "adapter", "method": method.name, "options": dict(vars(typed)), "target_modules": targets}
    write_adapter_dir(tmp_path / "a", encoder, None, card)
    card = json.loads((tmp_path / "a" / CARD).read_text())  # plain JSON: each part's options in its section
    assert set(card["options"]) == set(names) and card["weights_file"] == WEIGHTS
    saved = read_weights(tmp_path / "a", card)
    assert kinds(saved) == expected
    fresh, _, _ = load_backbone(backbone)
    attach_adapter(fresh, card["method"], card["options"], card["target_modules"])
    load_adapter_state(fresh, saved, "test")
    with torch.no_grad():
        assert torch.equal(fresh(x), out)
    part = next(iter(saved))  # a file missing one part's tensor does not load
    with pytest.raises(Exception, match="missing"):
        load_adapter_state(fresh, {k: v for k, v in saved.items() if k != part}, "test")


@pytest.mark.parametrize("pair", [["lora", "ia3"], ["ssf", "lora"], ["lora", "linear_probe"], ["lora", "full"],
                                  ["visual_prompt", "movl"], ["lora", "lora"]])
def test_an_incompatible_pair_is_refused_naming_both(pair):
    with pytest.raises(ConfigError) as info:
        get_method("+".join(pair))
    message = str(info.value)
    assert all(f"'{name}'" in message or f"{name}+" in message for name in pair), message


def test_the_config_takes_a_list_and_sections_per_part(tmp_path):
    cfg = load_config({"recipe": "finetune", "adapter": {"method": ["visual_prompt", "lora"],
                                                         "visual_prompt": {"pad": 2}, "lora": {"r": 4}}})
    assert cfg.adapter.method == "visual_prompt+lora"
    options = cfg.adapter.resolved_options()
    assert options["visual_prompt"]["pad"] == 2 and options["lora"]["r"] == 4 and options["lora"]["alpha"] == 16
    with pytest.raises(ConfigError, match="adapter.lora"):
        load_config({"recipe": "finetune", "adapter": {"method": "visual_prompt+lora", "lora": 4}})
    with pytest.raises(ConfigError, match=r"adapter\.lora\.rr"):
        load_config({"recipe": "finetune", "adapter": {"method": "visual_prompt+lora", "lora": {"rr": 4}}})
    with pytest.raises(ConfigError, match=r"adapter\.lora\.r"):  # types too
        load_config({"recipe": "finetune", "adapter": {"method": "visual_prompt+lora", "lora": {"r": "four"}}})
    with pytest.raises(ConfigError, match=r"adapter\.visual_prompt\.pad must be a positive"):  # the part's check
        load_config({"recipe": "finetune", "adapter": {"method": "visual_prompt+lora", "visual_prompt": {"pad": 0}}})
    with pytest.raises(ConfigError, match="'lora'.*'ia3'"):
        load_config({"recipe": "finetune", "adapter": {"method": ["lora", "ia3"]}})


@pytest.mark.integration
def test_tpp_hand_off_site_swap_and_predict_with_a_composed_method(tmp_path, capsys):
    from PIL import Image

    from tpp.serve import store
    from tpp.serve.bank import AdapterBank

    backbone = make_backbone(tmp_path / "bb", "vit_mae")
    root = make_medmnist(tmp_path / "data")
    adapter = json.dumps({"method": ["visual_prompt", "lora"], "lora": {"r": 2}})
    common = [f"backbone.path={backbone}", f"data.root={root}", "train.batch_size=16", "train.max_steps=3",
              f"adapter={adapter}"]
    assert run_cli("run", "tpp", "--config", "breast_us/mae_vit_tiny_lora_tpp.yaml", *common,
                   f"output_dir={tmp_path / 'tpp'}") == 0
    parent = read_tensors(tmp_path / "tpp" / "adapter", WEIGHTS)
    assert kinds(parent) == {"tpp_visual_prompt", "lora_A", "lora_B"}
    for site, extra in {"a": [f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}"], "b": ["seed=1"]}.items():
        assert run_cli("run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml", *common,
                       "train.lr=1e-2", f"output_dir={tmp_path / site}", *extra) == 0
        store.publish(tmp_path / site, tmp_path / "store", site)
    card = json.loads((tmp_path / "a" / "adapter" / CARD).read_text())
    assert card["method"] == "visual_prompt+lora" and card["parent"]["method"] == "visual_prompt+lora"
    assert card["input"]["frame"] == 4  # the padding prompt's frame: inference places images inside it too
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [e["loaded_tensors"] for e in log if e.get("event") == "init_from"] == [len(parent)]
    bank = AdapterBank(str(backbone), str(tmp_path / "store"))
    x = pixels(np.load(root / "breastmnist.npz")["test_images"][:4], card)
    outs = [torch.stack(bank.predict([bank.site(s)] * 4, x)) for s in ("a", "b", "a")]
    assert torch.equal(outs[0], outs[2]) and not torch.allclose(outs[0], outs[1], atol=1e-5)
    assert backbone_hash(bank.encoder.model) == bank.info.hash
    image = tmp_path / "x.png"
    Image.fromarray(np.load(root / "breastmnist.npz")["test_images"][0]).save(image)
    assert run_cli("predict", "--backbone", backbone, "--store", tmp_path / "store", "--site", "a", image,
                   "--out", tmp_path / "p.csv") == 0
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["site"] == "a"


@pytest.mark.parametrize("edit, says", [
    (lambda card: card.update(target_modules=["embeddings"]), "one list per part, 2 for 'visual_prompt+lora'"),
    (lambda card: card.pop("options"), "field 'options' (the method's options) must be an object"),
    (lambda card: card["options"].pop("lora"), "options lack the section of part 'lora'"),  # loaded with r=8
    (lambda card: card["target_modules"].reverse(), "cannot be attached with the card's target_modules")])
def test_an_edited_composed_card_is_one_message_naming_it(backbone, tmp_path, edit, says):
    """Flattened or swapped part targets and a card without options had reached peft / torch as a traceback."""
    from tpp.adapter_read import read_adapter_dir
    from tpp.errors import TppError
    from tpp.adapter_checks import attach_from_card

    encoder, _, _ = load_backbone(backbone)
    method, typed, targets = attach_adapter(encoder, ["visual_prompt", "lora"], {"lora": {"r": 2}})
    card = {"format": FORMAT, "kind": "adapter", "method": method.name, "options": dict(vars(typed)),
            "target_modules": targets, "site": "s", "created": "now"}
    write_adapter_dir(tmp_path / "a", encoder, None, card)
    path = tmp_path / "a" / CARD
    card = json.loads(path.read_text())
    edit(card)
    path.write_text(json.dumps(card))
    with pytest.raises(TppError, match=re.escape(says)):
        card = read_adapter_dir(tmp_path / "a").card
        attach_from_card(load_backbone(backbone)[0], card, str(tmp_path / "a"))
