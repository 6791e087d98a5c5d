"""Label-mapping adapters (classification.output_mapping) in the deployment path: a card cannot size the mapping
head freely or name an unknown pooling / kind; mean-pooled and CLS-pooled mapping heads are published and served
by the adapter bank with the predictions of the evaluate path."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_medmnist
from helpers import FINETUNE_CONFIG, recipe_args, run_cli
from test_output_mapping import hub_backbone, pool_backbone

import tpp.tasks.classification as classification
from tpp.adapter_dir import CARD, HEAD
from tpp.errors import TppError
from tpp.model import build_head
from tpp.recipes.evaluate import load_task_model
from tpp.serve import store
from tpp.serve.bank import AdapterBank
from tpp.serve.images import to_model_input
from tpp.serve.integrity import check_adapter, parse_tensors


def mapped_run(backbone, root, out, *extra):
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, backbone, root, out, "train.max_steps=2",
                                "train.batch_size=16", "adapter.method=visual_prompt", "adapter.mode=full",
                                "classification.output_mapping=rlm", *extra)) == 0
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("mapped")
    root = make_medmnist(base / "data")
    pool, _ = pool_backbone(base / "pool")
    hub, _ = hub_backbone(base / "hub")
    return {"root": root, "pool": pool, "hub": hub,
            "mean": mapped_run(pool, root, base / "mean", "classification.source_head=organa"),
            "cls": mapped_run(hub, root, base / "cls")}


def with_mapping(files: dict[str, bytes], **changes) -> dict[str, bytes]:
    card = json.loads(files[CARD])
    card["task"]["output_mapping"].update(changes)
    return dict(files, **{CARD: json.dumps(card).encode()})


def test_a_mean_pooled_mapping_adapter_is_published_and_served(world, tmp_path):
    store.publish(world["mean"], tmp_path / "store", "mapped")  # its int64 mapping passes the tensor checks
    bank = AdapterBank(str(world["pool"]), str(tmp_path / "store"))
    site = bank.site("mapped")
    images = np.load(world["root"] / "breastmnist.npz")["test_images"][:3]
    out = torch.stack(bank.predict([site] * 3, [to_model_input(im, site.input_rule) for im in images]))
    assert out.shape == (3, 2) and torch.allclose(out.sum(1), torch.ones(3))


def test_a_cls_pooled_mapping_adapter_is_served_as_the_evaluate_path_predicts(world, tmp_path):
    """The bank hands a CLS-reading head every token (it handed heads patch tokens only, and refused such an
    adapter): the served probabilities equal those of the TaskModel that ``tpp run evaluate`` builds."""
    store.publish(world["cls"], tmp_path / "store", "cls")
    bank = AdapterBank(str(world["hub"]), str(tmp_path / "store"))
    site = bank.site("cls")
    assert site.head.reads_prefix_tokens
    images = np.load(world["root"] / "breastmnist.npz")["test_images"][:4]
    inputs = [to_model_input(im, site.input_rule) for im in images]
    served = torch.stack(bank.predict([site] * 4, inputs))
    model, card, _ = load_task_model(str(world["cls"] / "adapter"), str(world["hub"]))
    with torch.no_grad():
        expected = model(torch.cat(inputs)).softmax(-1)
    assert served.shape == (4, 2) and torch.allclose(served, expected, atol=1e-5)


def test_one_batch_mixing_a_cls_pooled_site_and_a_lora_group_site_serves_each_its_own(world, tmp_path):
    """The bank's token buffer holds every token; each head gets what its TaskModel gives it (the LoRA site runs
    in the mixed-batch group, the prompt site through its own encoder)."""
    lora = tmp_path / "lora"
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, world["hub"], world["root"], lora, "train.max_steps=2",
                                "train.batch_size=16", "adapter.r=2")) == 0
    store.publish(world["cls"], tmp_path / "store", "cls")
    store.publish(lora, tmp_path / "store", "lora")
    bank = AdapterBank(str(world["hub"]), str(tmp_path / "store"))
    sites = [bank.site(name) for name in ("cls", "lora", "cls", "lora")]
    assert sites[1].group is not None and sites[0].group is None
    images = np.load(world["root"] / "breastmnist.npz")["test_images"][:4]
    served = bank.predict(sites, [to_model_input(im, s.input_rule) for im, s in zip(images, sites)])
    for name, rows in (("cls", [0, 2]), ("lora", [1, 3])):
        model, _, _ = load_task_model(str(world[name] / "adapter" if name == "cls" else lora / "adapter"),
                                      str(world["hub"]))
        with torch.no_grad():
            expected = model(torch.cat([to_model_input(images[r], sites[r].input_rule) for r in rows])).softmax(-1)
        assert torch.allclose(torch.stack([served[r] for r in rows]), expected, atol=1e-5)


@pytest.mark.parametrize("changes, says", [
    ({"source_classes": 10 ** 7}, "source_classes must be an integer in 2..100000"),
    ({"source_classes": "5"}, "source_classes must be an integer"),
    ({"pooling": "max"}, "pooling must be one of mean_patch_tokens, cls_token"),
    ({"kind": "xlm"}, "kind must be one of rlm, flm, ilm"),
])
def test_a_forged_mapping_entry_is_refused_before_the_head_is_built(world, monkeypatch, changes, says):
    files = with_mapping(store.read_source(world["mean"])[1], **changes)
    with pytest.raises(TppError, match=says):
        check_adapter(files, "forged")
    built = []
    monkeypatch.setattr(classification, "LabelMappingHead", lambda *a, **k: built.append(a))
    card, state = json.loads(files[CARD]), parse_tensors(files, HEAD, "forged", integer=("mapping",))
    with pytest.raises(TppError, match=says):
        build_head(card, 32, state, "forged")
    assert not built  # nothing allocated from the card's numbers


def test_evaluate_sizes_the_mapping_head_from_the_file_not_the_card(world, tmp_path, monkeypatch):
    adapter = tmp_path / "adapter"
    shutil.copytree(world["mean"] / "adapter", adapter)
    (adapter / CARD).write_bytes(with_mapping({CARD: (adapter / CARD).read_bytes()}, source_classes=90_000)[CARD])
    built = []
    monkeypatch.setattr(classification, "LabelMappingHead", lambda *a, **k: built.append(a))
    with pytest.raises(TppError, match="does not fit the card.*90000 source classes"):
        load_task_model(str(adapter), str(world["pool"]))
    assert not built
