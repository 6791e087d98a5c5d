"""One test table over every adapter method (the ``full`` baseline is a full model and exempt).

In-code part, for each family (ViT, ViT-MAE, DINOv2) x channels (1, 3) x method: only the method's
tensors train, the adapter starts as the backbone where the method says so, it is live (changing its
tensors changes the output), the backbone hash never moves, and save (the adapter directory's writer)
-> load gives identical outputs.
CLI part, per method: TPP -> fine-tune hand-off, publish two sites, switch A -> B -> A exactly.
"""
import json

import numpy as np
import pytest
import torch
from conftest import make_backbone, make_medmnist
from serving_fixtures import pixels

from tpp.serve import store
from tpp.adapter_dir import CARD, WEIGHTS, write_adapter_dir
from tpp.adapter_read import read_tensors, read_weights
from tpp.adapters import all_methods, get_method
from tpp.backbones import backbone_hash, is_adapter_key, load_backbone
from tpp.model import adapter_state, attach_adapter, load_adapter_state, trainable_parameters

METHODS = [m.name for m in all_methods() if m.kind == "adapter"]
PRETRAINABLE = [m for m in METHODS if get_method(m).pretrainable]
# option variants that change the adapter's structure, run through the same table
VARIANTS = [("lora", {"use_dora": True}), ("lora", {"use_rslora": True}), ("bottleneck", {"style": "sequential"}),
            ("bottleneck", {"style": "sequential", "target_modules": ["attention", "mlp"]}),  # Houlsby
            ("lokr", {"decompose_both": True}), ("vpt", {"deep": True}), ("vpt", {"layers": [1]}),
            ("ssf", {"target_modules": ["norms", "fc2"]})]
CASES = [pytest.param(m, {}, id=m) for m in METHODS] + [
    pytest.param(m, o, id=f"{m}-{'-'.join(o)}") for m, o in VARIANTS]
HAND_OFF_CASES = [pytest.param(m, {}, id=m) for m in PRETRAINABLE] + [
    pytest.param(m, o, id=f"{m}-{'-'.join(o)}") for m, o in VARIANTS]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("method_backbones")
    return {(fam, ch): make_backbone(root / f"{fam}_{ch}", fam, channels=ch)
            for fam in ("vit", "vit_mae", "dinov2") for ch in (1, 3)}


def test_registry_holds_the_expected_methods():
    # a new method is added here on purpose, a lost one fails
    assert set(METHODS) == {"lora", "loha", "lokr", "ia3", "bottleneck", "vpt", "ssf", "bitfit", "ln_tuning",
                            "linear_probe", "visual_prompt", "movl"}
    assert get_method("full").kind == "full_model" and not get_method("linear_probe").pretrainable


def test_every_method_folder_is_registered_and_installed():
    """Method folders are found automatically; setup.cfg must still list each as a package of the wheel."""
    import configparser
    from pathlib import Path

    import tpp.adapters

    folders = {p.parent.name for p in Path(tpp.adapters.__file__).parent.glob("*/__init__.py")}
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[1] / "setup.cfg")
    packages = set(cfg["options"]["packages"].split())
    assert {f"tpp.adapters.{f}" for f in folders} <= packages, "add the new method folder to setup.cfg packages"
    root = Path(__file__).parents[1] / "tpp"  # every tpp sub-package too (the wheel lacked tpp.incontext once)
    subpackages = {".".join(p.parent.relative_to(root.parent).parts) for p in root.rglob("__init__.py")}
    assert subpackages - {"tpp.adapters", "tpp.recipes"} <= packages, "add the sub-package to setup.cfg packages"
    assert {get_method(m).attach.__module__.split(".")[2] for m in METHODS} <= folders


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("family", ["vit", "vit_mae", "dinov2"])
@pytest.mark.parametrize("method, options", CASES)
def test_method_contract(backbones, tmp_path, family, channels, method, options):
    path = str(backbones[(family, channels)])
    encoder, info, _ = load_backbone(path)
    x = torch.randn(2, channels, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = encoder(x)
    spec, _, targets = attach_adapter(encoder, method, options)
    trainable = [n for n, p in encoder.model.named_parameters() if p.requires_grad]
    assert all(is_adapter_key(n) for n in trainable)
    state = adapter_state(encoder)
    if method == "linear_probe":
        assert not trainable and not state
        return
    assert trainable and trainable_parameters(encoder) == sum(v.numel() for v in state.values())
    assert all(is_adapter_key(k) for k in state)  # what the adapter directory saves: no backbone tensor
    assert targets and all(not t.startswith("decoder") for t in targets)
    with torch.no_grad():
        if spec.identity_at_init:
            torch.testing.assert_close(encoder(x), base, atol=1e-6, rtol=0)
        for p in encoder.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        adapted = encoder(x)
    assert not torch.allclose(adapted, base, atol=1e-4)  # the adapter is live, not a silent no-op
    assert backbone_hash(encoder.model) == info.hash
    write_adapter_dir(tmp_path / "saved", encoder, None, {"kind": "adapter"})  # the real writer (peft's for peft)
    card = json.loads((tmp_path / "saved" / CARD).read_text())
    fresh, _, _ = load_backbone(path)
    attach_adapter(fresh, method, options, targets)
    load_adapter_state(fresh, read_weights(tmp_path / "saved", card), "test")
    with torch.no_grad():
        assert torch.equal(fresh(x), adapted)


@pytest.mark.parametrize("method, options", HAND_OFF_CASES)
def test_tpp_hand_off_and_site_switching(tmp_path, monkeypatch, method, options):
    from tpp.serve.bank import AdapterBank
    from tpp.cli import main
    from tpp.recipes import finetune

    started = {}  # the target tensors fine-tuning starts from, captured before its first step
    real_attach = finetune.attach_target_parameters

    def spy(cfg, encoder, *args):
        result = real_attach(cfg, encoder, *args)
        started[cfg.output_dir] = {k: v.clone() for k, v in adapter_state(encoder).items()}
        return result

    monkeypatch.setattr(finetune, "attach_target_parameters", spy)

    backbone = make_backbone(tmp_path / "bb", "vit_mae")
    root = make_medmnist(tmp_path / "data")
    common = [f"backbone.path={backbone}", f"data.root={root}", "train.batch_size=16", "train.max_steps=4",
              "adapter=" + json.dumps({"method": method, **options})]
    assert main(["run", "tpp", "--config", "breast_us/mae_vit_tiny_lora_tpp.yaml", *common,
                 f"output_dir={tmp_path / 'tpp'}"]) == 0
    for site, extra in {"a": [f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}"], "b": ["seed=1"]}.items():
        assert main(["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml", *common,
                     "train.lr=1e-2", f"output_dir={tmp_path / site}", *extra]) == 0
        store.publish(tmp_path / site, tmp_path / "store", site)
    parent = read_tensors(tmp_path / "tpp" / "adapter", WEIGHTS)
    start_a, start_b = started[str(tmp_path / "a")], started[str(tmp_path / "b")]
    assert parent and start_a.keys() == parent.keys()  # every target tensor of the TPP run, and only those
    assert all(torch.equal(start_a[k], parent[k]) for k in parent)
    assert any(not torch.equal(start_b[k], parent[k]) for k in parent)  # site b (random init) does differ
    card = json.loads((tmp_path / "a" / "adapter" / "tpp_card.json").read_text())
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert card["parent"]["stage"] == "tpp" and card["method"] == method
    assert all(card["options"][k] == v for k, v in options.items())
    for site in ("a", "b"):  # on disk, not only in memory: the adapter files hold no backbone tensor
        saved = read_tensors(tmp_path / site / "adapter", WEIGHTS)
        assert saved and all(is_adapter_key(k) for k in saved), [k for k in saved if not is_adapter_key(k)]
    assert metrics["trainable_parameters"] > 0 and metrics["adapter_bytes"] > 0
    bank = AdapterBank(str(backbone), str(tmp_path / "store"))
    x = pixels(np.load(root / "breastmnist.npz")["test_images"][:4], card)
    outs = [torch.stack(bank.predict([bank.site(s)] * 4, x)) for s in ("a", "b", "a")]
    assert torch.equal(outs[0], outs[2]) and not torch.allclose(outs[0], outs[1], atol=1e-5)
    assert backbone_hash(bank.encoder.model) == bank.info.hash


@pytest.mark.parametrize("options, prompted", [({}, [0]), ({"deep": True}, [0, 1]), ({"layers": [1]}, [1]),
                                               ({"deep": True, "layers": [1]}, [1])])
def test_vpt_prompts_never_reach_heads_or_decoders(backbones, options, prompted):
    encoder, info, _ = load_backbone(str(backbones[("vit_mae", 3)]))
    x = torch.randn(2, 3, 28, 28)
    attach_adapter(encoder, "vpt", {"length": 5, **options})
    state = adapter_state(encoder)
    assert sorted(int(k.split(".")[1]) for k in state) == prompted  # 'layers.<i>.tpp_prompt'
    assert sum(v.numel() for v in state.values()) == len(prompted) * 5 * info.hidden_size
    seen = []
    for i in range(info.num_layers):  # inside the encoder the prompts are there from the first prompted layer ...
        encoder.model.get_submodule(f"layers.{i}.base_layer").register_forward_hook(
            lambda m, args, out: seen.append((out[0] if isinstance(out, tuple) else out).shape[1]))
    tokens = encoder(x)
    assert seen == [1 + 49 + (5 if i >= prompted[0] else 0) for i in range(info.num_layers)]
    assert tokens.shape == (2, 1 + 49, info.hidden_size)  # ... and gone from its output: CLS + 49 patches
    assert encoder.patch_tokens(tokens).shape == (2, 49, info.hidden_size)


def test_vpt_layers_outside_the_encoder_are_an_error(backbones):
    from tpp.errors import TppError

    encoder, info, _ = load_backbone(str(backbones[("vit", 3)]))
    with pytest.raises(TppError, match=r"adapter.layers \[2\].*layers 0..1"):
        attach_adapter(encoder, "vpt", {"layers": [0, 2]})


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_bottleneck_targets_attention_and_mlp_sub_layers(backbones, family):
    encoder, info, _ = load_backbone(str(backbones[(family, 3)]))
    _, _, targets = attach_adapter(encoder, "bottleneck", {"target_modules": ["attention", "mlp"]})
    assert len(targets) == 2 * info.num_layers and {t.rsplit(".", 1)[-1] for t in targets} == {"attention", "mlp"}
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        before = encoder(x)
        for name, p in encoder.model.named_parameters():
            if ".attention.tpp_up" in name:  # only the adapters on the attention sub-layers (not a uniform
                p.add_(torch.randn(p.shape) * 0.1)  # shift: the next LayerNorm would remove that)
        assert not torch.allclose(encoder(x), before, atol=1e-4)  # adapted on the attention's (tuple) output


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_ssf_targets_layernorms_by_leaf_name_or_all_norms(backbones, family):
    """'norms' finds each layer's two LayerNorms whatever the family calls them; leaf names work too."""
    import torch.nn as nn

    from tpp.errors import TppError

    encoder, info, _ = load_backbone(str(backbones[(family, 3)]))
    norm_leaves = {"vit": {"layernorm_before", "layernorm_after"}, "dinov2": {"norm1", "norm2"}}[family]
    _, _, targets = attach_adapter(encoder, "ssf", {"target_modules": ["norms"]})
    assert len(targets) == 2 * info.num_layers and {t.rsplit(".", 1)[-1] for t in targets} == norm_leaves
    assert all(isinstance(encoder.model.get_submodule(f"{t}.base_layer"), nn.LayerNorm) for t in targets)
    encoder, _, _ = load_backbone(str(backbones[(family, 3)]))
    leaf = sorted(norm_leaves)[0]
    _, _, targets = attach_adapter(encoder, "ssf", {"target_modules": [leaf, "fc1"]})
    assert {t.rsplit(".", 1)[-1] for t in targets} == {leaf, "fc1"}
    encoder, _, _ = load_backbone(str(backbones[(family, 3)]))
    with pytest.raises(TppError, match="norm3"):
        attach_adapter(encoder, "ssf", {"target_modules": ["norms", "norm3"]})
