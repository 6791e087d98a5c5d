"""Adapter folders the Hugging Face tools understand: a model card (README.md) huggingface_hub parses, a plain
transformers + peft snippet that reproduces tpp's probabilities, no path of the machine in any saved file, the
store covering README.md, and saved backbones without ViT-MAE's masking trap."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_backbone, make_medmnist
from helpers import finetune

from tpp.adapter_dir import make_card, write_adapter_dir
from tpp.adapter_read import read_adapter_dir
from tpp.backbones import load_backbone
from tpp.errors import TppError
from tpp.model import attach_adapter
from tpp.model_card import README, portable_backbone_id, render, snippet_of
from tpp.tasks.classification import ClassificationHead

LABELS = ["benign", "malignant"]


def input_rule(info, image_channels: int = 1, file_resize: bool = False) -> dict:
    rule = {"image_channels": image_channels, "channels": info.channels, "channel_rule": "as trained",
            "image_size": info.input_size, "resize": "bilinear, antialiased, to image_size", "resolution": "native",
            "scale": "uint8 / 255", "mean": info.mean, "std": info.std}
    if file_resize:
        rule["resize"] = rule["file_resize"] = "PIL bilinear to image_size when the file is read"
    return rule


def save_adapter(out: Path, backbone: Path, method: str, options: dict, *, rule: dict | None = None,
                 backbone_id: str | None = None, task: dict | None = None, input_size: int | None = None) -> Path:
    """An adapter folder of ``method`` on ``backbone`` with random (non-identity) tensors and a random head,
    written by tpp's own writer; ``backbone_id`` overrides the id the card records (a hub id)."""
    encoder, info, _ = load_backbone(str(backbone), input_size=input_size)
    if backbone_id:
        info.id = backbone_id
    method_, typed, targets = attach_adapter(encoder, method, options)
    torch.manual_seed(3)
    with torch.no_grad():
        for _, param in encoder.model.named_parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))  # the adapter visibly changes the outputs
    head = ClassificationHead(info.hidden_size, 2)
    task = task or {"type": "classification", "num_classes": 2, "label_names": LABELS, "positive_class": LABELS[1],
                    "head": "linear on the mean of patch tokens",
                    "decision": {"threshold": 0.42, "rule": "youden", "positive_label": LABELS[1]}}
    card = make_card(method=method, options=dict(vars(typed)), targets=targets, backbone=info,
                     input_rule=rule or input_rule(info), site="site_a", modality="ultrasound", task=task,
                     data={"name": "breastmnist", "modality": "ultrasound", "content_sha256": "ab" * 32,
                           "counts": {"train": 60, "val": 20, "test": 20}, "used": {"images": 60}},
                     metrics={"val": 0.61, "test": 0.58}, parent=None, trainable_parameters=123,
                     stage="finetune", kind=method_.kind)
    write_adapter_dir(out, encoder, head, card)
    return out


def run_snippet(adapter: Path, backbone: Path) -> dict:
    """Execute the model card's plain-transformers code block, pointed at ``adapter`` and ``backbone``."""
    code = snippet_of((adapter / README).read_text())
    assert code.count('adapter_dir = "path/to/this/folder"\n') == 1
    lines = [f"backbone = {json.dumps(str(backbone))}" if line.startswith("backbone = ") else line
             for line in code.replace("path/to/this/folder", str(adapter)).splitlines()]
    namespace: dict = {}
    exec(compile("\n".join(lines), f"{adapter}/README.md", "exec"), namespace)  # noqa: S102 (our own card)
    return namespace


def tpp_probabilities(adapter: Path, backbone: Path, images) -> torch.Tensor:
    """tpp's own prediction path: the evaluate recipe's model and the card's input rule, per image."""
    from tpp.recipes.evaluate import load_task_model
    from tpp.serve.images import to_model_input

    model, card, _ = load_task_model(str(adapter), str(backbone))
    with torch.no_grad():
        return torch.cat([model(to_model_input(im, card["input"])).softmax(-1) for im in images])


def images(shape: tuple, n: int = 4, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8))


@pytest.mark.parametrize("family, method, options, image_shape, image_channels, file_resize, input_size", [
    ("vit_mae", "lora", {"r": 2}, (40, 36), 1, False, None),      # gray arrays resized by torch
    ("vit_mae", "lora", {"r": 2}, (33, 30, 3), 3, True, None),    # RGB files: PIL resize when read
    ("vit_mae", "lora", {"r": 2}, (28, 28), 1, False, 32),        # 32-px input: interpolated positions
    ("vit_mae", "ia3", {}, (28, 28, 3), 1, False, None),          # RGB given to a gray-trained adapter: luma
    ("vit_mae", "full", {}, (28, 28), 1, False, None),            # the full baseline: AutoModel of the folder
    ("vit_mae", "linear_probe", {}, (28, 28), 1, False, None),    # a probe: the plain backbone + head
    ("vit", "lora", {"r": 2}, (28, 28), 1, False, None),
    ("dinov2", "loha", {"r": 2}, (30, 30), 1, False, None),
])
def test_card_snippet_reproduces_tpp_probabilities(tiny_mae, tmp_path, family, method, options, image_shape,
                                                   image_channels, file_resize, input_size):
    backbone = tiny_mae if family == "vit_mae" else make_backbone(tmp_path / family, family)
    info = load_backbone(str(backbone), input_size=input_size)[1]
    adapter = save_adapter(tmp_path / "adapter", backbone, method, options, input_size=input_size,
                           rule=input_rule(info, image_channels, file_resize))
    batch = images(image_shape)
    namespace = run_snippet(adapter, backbone)
    ours = torch.stack([namespace["predict"](im) for im in batch])
    reference = tpp_probabilities(adapter, backbone, batch)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0), (ours, reference)
    assert reference[:, 0].std() > 1e-4  # the images give different outputs: the comparison means something
    decided = [namespace["decide"](p) for p in reference]
    assert decided == [LABELS[1] if p[1] >= 0.42 else LABELS[0] for p in reference]


def test_card_front_matter_reads_with_huggingface_hub(tiny_mae, tmp_path):
    from huggingface_hub import ModelCard

    adapter = save_adapter(tmp_path / "adapter", tiny_mae, "lora", {"r": 2})
    card = ModelCard.load(adapter / README)
    data = card.data.to_dict()
    assert "base_model" not in data and data["library_name"] == "peft"  # a folder name is no Hub repo id
    assert data["tags"] == ["tpp", "medical-imaging", "lora", "ultrasound", "classification"]
    assert data["pipeline_tag"] == "image-classification"
    tpp_block = data["tpp"]
    assert tpp_block["data"]["content_sha256"] == "ab" * 32 and tpp_block["data"]["counts"]["train"] == 60
    assert tpp_block["metrics"] == {"val": 0.61, "test": 0.58}
    assert tpp_block["decision"] == {"positive_class": "malignant", "threshold": 0.42, "rule": "youden"}
    assert tpp_block["backbone_sha256"] == read_adapter_dir(adapter).card["backbone"]["hash"]
    for text in ("## Intended use and limitations", "not a medical device", "PeftModel.from_pretrained",
                 "p(malignant) >= 0.42"):
        assert text in card.text


def test_tpp_methods_say_tpp_is_needed(tiny_mae, tmp_path):
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModel

    adapter = save_adapter(tmp_path / "adapter", tiny_mae, "bitfit", {})
    assert not (adapter / "adapter_config.json").exists()
    card = ModelCard.load(adapter / README)
    assert "library_name" not in card.data.to_dict() and "bitfit" in card.data.tags
    assert "`bitfit` is tpp's own method" in card.text and "tpp.load(" in card.text and "tpp predict" in card.text
    assert snippet_of(card.content) == ""  # no plain-transformers block that could not work
    with pytest.raises((ValueError, OSError)):  # what peft does with the folder: the card explains it
        PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_mae)), str(adapter))


def test_segmentation_and_tpp_stage_cards_say_tpp_is_needed(tiny_mae, tmp_path):
    from huggingface_hub import ModelCard

    seg = {"type": "segmentation", "num_classes": 2, "label_names": ["background", "lesion"]}
    adapter = save_adapter(tmp_path / "seg", tiny_mae, "lora", {"r": 2}, task=seg)
    card = ModelCard.load(adapter / README)
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "image-segmentation"
    assert "predictions need tpp" in card.text and snippet_of(card.content) == ""
    tpp_card = dict(read_adapter_dir(adapter).card, stage="tpp", task={"type": "none"})
    text = render(tpp_card, uses_peft=True)
    assert "adapter.init_from=path/to/this/folder" in text and "target-parameter-pretraining" in text


def test_portable_backbone_id():
    assert portable_backbone_id("facebook/vit-mae-base") == "facebook/vit-mae-base"  # a hub id stays
    assert portable_backbone_id("/abs/models/mae-vit-tiny-med/") == "mae-vit-tiny-med"
    assert portable_backbone_id("../shared/models/mae-vit-tiny-med") == "mae-vit-tiny-med"


def test_hub_id_backbone_is_kept(tiny_mae, tmp_path):
    adapter = save_adapter(tmp_path / "adapter", tiny_mae, "lora", {"r": 2}, backbone_id="org/mae-vit-tiny")
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/mae-vit-tiny"
    assert read_adapter_dir(adapter).card["backbone"]["id"] == "org/mae-vit-tiny"
    assert "base_model: org/mae-vit-tiny\n" in (adapter / README).read_text()


def test_builtin_backbone_is_no_base_model_and_the_snippet_says_where_it_is(tiny_mae, tmp_path):
    """``builtin:NAME`` is no Hub repo id (the Hub refuses it as base_model): the front matter leaves it out and
    the snippet names the folder to pass, with the line that prints it."""
    from huggingface_hub import ModelCard

    adapter = save_adapter(tmp_path / "adapter", tiny_mae, "lora", {"r": 2}, backbone_id="builtin:mae-vit-tiny-med")
    readme = (adapter / README).read_text()
    assert "base_model" not in ModelCard.load(adapter / README).data.to_dict()
    assert 'backbone = "path/to/mae-vit-tiny-med"' in readme
    assert "resolve_backbone('builtin:mae-vit-tiny-med')" in readme


def test_hostile_label_names_stay_data_in_the_snippet(tiny_mae, tmp_path):
    """Class names come from folders and CSV files: one crafted to close the docstring of ``decide`` must not
    become code when the card's snippet runs."""
    evil = 'b""" + str(__import__("builtins").setattr(__import__("builtins"), "PWNED", 1)) + """'
    labels = ["a", evil]
    task = {"type": "classification", "num_classes": 2, "label_names": labels, "positive_class": evil,
            "head": "linear on the mean of patch tokens", "decision": {"threshold": 0.5, "positive_label": evil}}
    adapter = save_adapter(tmp_path / "adapter", tiny_mae, "lora", {"r": 2}, task=task)
    namespace = run_snippet(adapter, tiny_mae)
    assert namespace["decide"]([0.2, 0.8]) == evil and namespace["LABELS"] == labels
    assert not hasattr(__import__("builtins"), "PWNED")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A real tiny fine-tuning run through the CLI: backbone and data under an absolute temporary path."""
    base = tmp_path_factory.mktemp("hf_run")
    backbone = make_backbone(base / "my-backbone", "vit_mae")
    root = make_medmnist(base / "data")
    assert finetune(backbone, root, base / "run", "train.max_steps=2") == 0
    return SimpleNamespace(base=base, backbone=backbone, adapter=base / "run" / "adapter")


def test_no_machine_path_in_saved_adapter(finetuned):
    files = sorted(p for p in finetuned.adapter.iterdir() if p.is_file())
    assert {p.name for p in files} == {"adapter_config.json", "adapter_model.safetensors", "head.safetensors",
                                       "tpp_card.json", README}
    for needle in {str(finetuned.base), str(finetuned.base.resolve()), "/tmp"}:
        hits = [p.name for p in files if needle.encode() in p.read_bytes()]
        assert not hits, f"{needle} appears in {hits}"
    config = json.loads((finetuned.adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "my-backbone"
    assert read_adapter_dir(finetuned.adapter).card["backbone"]["id"] == "my-backbone"


def test_store_covers_readme(finetuned, tmp_path):
    from tpp.serve import store

    published = store.publish(finetuned.base / "run", tmp_path / "store", "site_a")
    assert (published.path / README).is_file()
    assert store.open_version(tmp_path / "store", "site_a").version == published.version  # verifies as published
    readme = published.path / README
    readme.write_text(readme.read_text().replace("not a medical device", "a certified medical device"))
    with pytest.raises(TppError, match="content hash does not match"):
        store.open_version(tmp_path / "store", "site_a")
    # an adapter saved before tpp wrote model cards (no README.md) still publishes and verifies
    old = tmp_path / "old_adapter"
    shutil.copytree(finetuned.adapter, old)
    (old / README).unlink()
    version = store.publish(old, tmp_path / "store", "site_b").version
    assert store.open_version(tmp_path / "store", "site_b").version == version
    assert version != published.version


# -- saved backbones: no masking trap ------------------------------------------------------------------------

def _two_calls(folder: Path, raster: bool = False) -> list[torch.Tensor]:
    """Two calls of a plain ``AutoModel`` of ``folder`` on one image: tokens (1, 1 + N, D), patches put back in
    raster order (ViT-MAE returns them shuffled unless ``noise`` is given; ``raster``: pass raster-order noise)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder)).eval()
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    kwargs = {"noise": torch.arange(49, dtype=torch.float32)[None]} if raster else {}
    outputs = []
    with torch.no_grad():
        for _ in range(2):
            out = model(pixel_values=x, **kwargs)
            tokens = out.last_hidden_state
            if tokens.shape[1] == 50:  # every patch kept: undo the shuffle
                order = out.ids_restore[..., None].expand(-1, -1, tokens.shape[-1])
                tokens = torch.cat([tokens[:, :1], torch.gather(tokens[:, 1:], 1, order)], dim=1)
            outputs.append(tokens)
    return outputs


def assert_deterministic(folder: Path) -> None:
    """Same image, same outputs: every token within float rounding (the shuffled order changes summation
    order), bit-identical with raster-order noise, as the model card's snippet passes."""
    first, second = _two_calls(folder)
    assert first.shape == (1, 50, 32) and torch.allclose(first, second, atol=1e-5, rtol=0)
    assert torch.equal(*_two_calls(folder, raster=True))


def test_pretrained_backbone_has_no_masking_trap(tmp_path):
    from conftest import TINY
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from tpp.recipes.pretrain_backbone import write_backbone

    model = ViTMAEForPreTraining(ViTMAEConfig(**TINY, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                              decoder_num_attention_heads=2, decoder_intermediate_size=32,
                                              mask_ratio=0.75))
    model_cfg = SimpleNamespace(image_size=28, mean=[0.5] * 3, std=[0.25] * 3)
    (tmp_path / "backbone").mkdir()
    write_backbone(tmp_path / "backbone", model, model_cfg, {"objective": {"mae": {"mask_ratio": 0.75}}})
    assert json.loads((tmp_path / "backbone" / "config.json").read_text())["mask_ratio"] == 0.0
    assert_deterministic(tmp_path / "backbone")
    shutil.copytree(tmp_path / "backbone", tmp_path / "masking")  # the trap this avoids: a 0.75 config
    config = json.loads((tmp_path / "masking" / "config.json").read_text())
    (tmp_path / "masking" / "config.json").write_text(json.dumps(dict(config, mask_ratio=0.75)))
    first, second = _two_calls(tmp_path / "masking")
    assert first.shape[1] == 1 + 12 and (first[:, 1:].mean(1) - second[:, 1:].mean(1)).abs().max() > 1e-2


def test_full_finetune_folder_has_no_masking_trap(tiny_mae, tmp_path):
    adapter = save_adapter(tmp_path / "full", tiny_mae, "full", {})
    assert json.loads((adapter / "config.json").read_text())["mask_ratio"] == 0.0
    for needle in (str(tiny_mae), str(tmp_path), str(tiny_mae.parent)):  # no machine path here either
        assert not [p.name for p in adapter.iterdir() if needle.encode() in p.read_bytes()]
    assert_deterministic(adapter)


def test_mae_pretext_ignores_the_saved_mask_ratio(tiny_mae, tmp_path):
    """tpp's MAE pretext passes its own ratio: a backbone saved with mask_ratio 0.0 trains exactly as one with 0.75."""
    from tpp.pretext.mae import MAEPretext

    zero = shutil.copytree(tiny_mae, tmp_path / "zero")
    config = json.loads((zero / "config.json").read_text())
    assert config["mask_ratio"] == 0.75
    (zero / "config.json").write_text(json.dumps(dict(config, mask_ratio=0.0)))
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 49, generator=torch.Generator().manual_seed(2))
    losses, hashes = [], []
    for folder in (tiny_mae, zero):
        encoder, info, decoder = load_backbone(str(folder), with_decoder=True)
        pretext = MAEPretext(encoder, decoder, fresh=False, mask_ratio=0.75, norm_pix_loss=False).eval()
        with torch.no_grad():
            losses.append(pretext(x, noise))
        hashes.append(info.hash)
    assert hashes[0] == hashes[1] and torch.equal(losses[0], losses[1])
