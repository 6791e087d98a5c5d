"""Label mapping as the classification head's output mapping (classification.output_mapping: rlm | flm | ilm):
a backbone's saved source classifier (pretrain_backbone's pool heads, or a hub-style ViTForImageClassification)
read with the pooling recorded beside it, one-to-one, ILM recomputed after every epoch."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, _save_processor, make_medmnist
from helpers import FINETUNE_CONFIG, recipe_args, run_cli

from tpp.adapter_dir import CARD, HEAD
from tpp.adapter_read import read_tensors
from tpp.backbones import load_backbone
from tpp.data.stream import ModelInputs
from tpp.errors import TppError
from tpp.label_mapping import prepare_output_mapping
from tpp.model import TaskModel, attach_adapter, build_head
from tpp.source_classifier import load_source_classifier, source_logits
from tpp.tasks.classification import ClassificationOptions, mapping_head


def pool_backbone(path):
    """pretrain_backbone's objective (tiny ViT-MAE, two supervised pool heads: 5 and 3 classes, one unsupervised
    entry) written as the recipe writes it; returns (path, objective)."""
    from transformers import ViTMAEConfig

    from tpp.recipes.pretrain_backbone import PoolObjective, build_model, source_heads, write_backbone

    cfg = SimpleNamespace(**TINY, num_channels=3, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    assert set(vars(cfg)) - {"mean", "std"} <= set(ViTMAEConfig().to_dict())
    model = build_model(cfg, 0.75, False, seed=0)
    objective = PoolObjective(model, [5, 0, 3], 0.75, 1.0)
    with torch.no_grad():
        for head in (objective.heads[0], objective.heads[2]):
            head.weight.normal_()
            head.bias.normal_()
    entries = [{"name": "organa", "classes": list("abcde")}, {"name": "unlabelled", "classes": []},
               {"name": "blood", "classes": list("xyz")}]
    tensors, entry = source_heads(objective, entries, [5, 0, 3])
    model.eval()
    path.mkdir()
    write_backbone(path, model, cfg, {"source_classifier": entry}, tensors)
    return path, objective


def hub_backbone(path, num_labels=4):
    """A tiny transformers ViTForImageClassification checkpoint (hub style); returns (path, model)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(1)
    model = ViTForImageClassification(ViTConfig(**TINY, num_channels=3, num_labels=num_labels,
                                                id2label={i: f"class{i}" for i in range(num_labels)}))
    with torch.no_grad():
        model.classifier.bias.normal_()
    model.save_pretrained(path)
    _save_processor(path, 3)
    return path, model.eval()


def test_pool_heads_are_kept_and_tpp_reads_them_as_the_saved_format_says(tmp_path):
    path, objective = pool_backbone(tmp_path / "pool")
    card = json.loads((path / "tpp_backbone_card.json").read_text())["source_classifier"]
    assert card["pooling"] == "mean_patch_tokens" and list(card["heads"]) == ["organa", "blood"]
    x = torch.randn(3, 3, 28, 28)
    encoder, _, _ = load_backbone(str(path))
    for name, index in (("organa", 0), ("blood", 2)):
        classifier = load_source_classifier(str(path), name)
        assert classifier.label_names == card["heads"][name]["label_names"]
        ours = source_logits(encoder, classifier, x)
        with torch.no_grad():  # what the pool objective trained: its head on its encoder's mean patch tokens
            trained = objective.heads[index](objective.encoder.patch_tokens(objective.encoder(x)).mean(1))
        torch.testing.assert_close(ours, trained)
        # the saved format alone: plain transformers + safetensors + the recorded pooling (mean of the patch tokens)
        from safetensors.torch import load_file
        from transformers import AutoModel

        plain = AutoModel.from_pretrained(path).eval()
        heads = load_file(path / card["file"])
        with torch.no_grad():
            tokens = plain(pixel_values=x).last_hidden_state  # ViT-MAE shuffles patches: the mean does not care
            pooled = tokens[:, 1:].mean(1) if card["pooling"] == "mean_patch_tokens" else tokens[:, 0]
            saved = pooled @ heads[f"{name}.weight"].T + heads[f"{name}.bias"]
        torch.testing.assert_close(ours, saved, rtol=1e-5, atol=1e-5)


def test_a_hub_classifier_reads_the_cls_token_as_transformers_does(tmp_path):
    path, model = hub_backbone(tmp_path / "hub")
    classifier = load_source_classifier(str(path))
    assert classifier.pooling == "cls_token" and classifier.label_names == [f"class{i}" for i in range(4)]
    encoder, _, _ = load_backbone(str(path))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(source_logits(encoder, classifier, x), model(pixel_values=x).logits)


def test_a_backbone_without_a_classifier_is_a_clear_error(tiny_mae):
    with pytest.raises(TppError, match="saves no classification head.*output_mapping=probe"):
        load_source_classifier(str(tiny_mae))


def mapped_model(path, kind, num_target=2, seed=0):
    encoder, info, _ = load_backbone(str(path))
    attach_adapter(encoder, "visual_prompt", {"mode": "full"})
    torch.manual_seed(seed)
    return TaskModel(encoder, mapping_head(ClassificationOptions(output_mapping=kind), info, num_target)), info


def test_the_mapping_head_is_one_to_one_frozen_and_saved_with_its_mapping(tmp_path):
    path, hub = hub_backbone(tmp_path / "hub")
    model, info = mapped_model(path, "rlm", num_target=3)
    mapping = model.head.mapping.tolist()
    assert len(set(mapping)) == 3 and all(0 <= m < 4 for m in mapping)
    assert not any(p.requires_grad for p in model.head.parameters())
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hub(pixel_values=x).logits[:, mapping])
    entry = {"type": "classification", "num_classes": 3, "label_names": ["a", "b", "c"],
             "output_mapping": {"kind": "rlm", "source_head": "classifier", "pooling": "cls_token",
                                "source_classes": 4}}
    card = {"task": entry, "input": {"channels": 3}}
    state = {k: v.clone() for k, v in model.head.state_dict().items()}
    loaded = build_head(card, info.hidden_size, state, "test")
    assert loaded.mapping.tolist() == mapping and loaded.reads_prefix_tokens
    from tpp.tasks import get_task

    task = get_task("classification")
    assert task.check_head(entry, state) is None
    for bad in (torch.tensor([1, 1, 2]), torch.tensor([0, 1, 4]), torch.tensor([0, 1])):  # one-to-one, in range
        assert task.check_head(entry, dict(state, mapping=bad)) is not None
    with pytest.raises(TppError, match="one-to-one"):
        mapped_model(path, "flm", num_target=5)  # more target than source classes


def test_flm_follows_the_data_once_and_ilm_again_after_every_epoch(tmp_path):
    path, _ = hub_backbone(tmp_path / "hub", num_labels=6)
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = torch.tensor([0, 1] * 6)
    for kind in ("flm", "ilm"):
        model, info = mapped_model(path, kind)
        inputs = ModelInputs.for_backbone(images, info)
        head = model.head

        def favour(source):  # the model predicts ``source`` for every image
            with torch.no_grad():
                head.source.weight.zero_()
                head.source.bias.zero_()
                head.source.bias[source] = 5.0

        favour(4)
        prepare_output_mapping(model, inputs, labels, steps_per_epoch=3, eval_batch_size=8)
        first = head.mapping.tolist()
        assert first[0] == 4 and len(set(first)) == 2
        favour(3)  # the model now predicts source class 3 for everything: the frequency mapping moves
        for _ in range(3):
            model.after_optimizer_step()
        if kind == "ilm":
            assert head.mapping.tolist()[0] == 3 and [h["changed"] for h in head.history] == [True, True]
        else:
            assert head.mapping.tolist() == first and len(head.history) == 1


@pytest.mark.integration
def test_finetune_with_ilm_on_a_hub_classifier_then_evaluate(tmp_path):
    path, _ = hub_backbone(tmp_path / "hub")
    data = make_medmnist(tmp_path / "data")
    extra = ["train.max_steps=8", "train.batch_size=16", "adapter.method=visual_prompt",
             "classification.output_mapping=ilm"]
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, path, data, tmp_path / "ft", *extra)) == 0
    card = json.loads((tmp_path / "ft" / "adapter" / CARD).read_text())
    assert card["task"]["output_mapping"]["kind"] == "ilm" and card["task"]["output_mapping"]["pooling"] == "cls_token"
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    history = next(e["history"] for e in log if e.get("event") == "output_mapping")
    assert len(history) >= 3  # before training, then after each of the >= 2 epochs (60 images, batch 16: 4 steps)
    mapping = read_tensors(tmp_path / "ft" / "adapter", HEAD)["mapping"].tolist()
    best = json.loads((tmp_path / "ft" / "metrics.json").read_text())["best_step"]
    in_effect = [h["mapping"] for h in history if h["step"] <= best][-1]  # best-on-validation keeps its mapping
    assert mapping == in_effect and len(set(mapping)) == 2
    assert run_cli("run", "evaluate", "--config", FINETUNE_CONFIG, f"backbone.path={path}", f"data.root={data}",
                   f"adapter.path={tmp_path / 'ft' / 'adapter'}", f"output_dir={tmp_path / 'ev'}") == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["test"]["auroc"] <= 1


def test_label_mapping_with_nothing_to_train_is_a_config_error():
    from tpp.config import load_config
    from tpp.errors import ConfigError
    from tpp.tasks import get_task

    cfg = load_config({"recipe": "finetune", "adapter": {"method": "linear_probe"},
                       "classification": {"output_mapping": "flm"}})
    with pytest.raises(ConfigError, match="linear_probe trains nothing"):
        get_task("classification").check_config(cfg)
    with pytest.raises(ConfigError, match="output_mapping must be one of"):
        load_config({"recipe": "finetune", "classification": {"output_mapping": "lm"}})


def test_a_hub_classifier_checkpoint_loads_to_the_same_backbone_hash_every_time(tmp_path):
    """ViTForImageClassification stores no pooler; AutoModel drew one at random per load, so the hash adapters
    are verified against changed between loads (every adapter on such a backbone was refused at serve time)."""
    path, _ = hub_backbone(tmp_path / "hub")
    first, second = load_backbone(str(path)), load_backbone(str(path))
    assert first[1].hash == second[1].hash
    assert not any("pooler" in name for name in first[0].model.state_dict())


def test_a_pooler_the_checkpoint_stores_is_kept_so_adapters_saved_on_it_still_verify(tmp_path):
    """Only a pooler drawn at random is dropped: a plain ViTModel checkpoint (in21k style) keeps its stored
    pooler and the hash it had before, which the adapters trained on it record."""
    from transformers import AutoModel, ViTConfig, ViTModel

    from tpp.backbones import backbone_hash

    torch.manual_seed(2)
    ViTModel(ViTConfig(**TINY, num_channels=3)).save_pretrained(tmp_path / "vit")
    _save_processor(tmp_path / "vit", 3)
    encoder, info, _ = load_backbone(str(tmp_path / "vit"))
    assert "pooler.dense.weight" in encoder.model.state_dict()
    assert info.hash == backbone_hash(AutoModel.from_pretrained(tmp_path / "vit"))  # as every earlier load hashed
