import pytest
import torch
from conftest import make_backbone

from tpp.backbones import load_backbone
from tpp.config import PretextConfig
from tpp.errors import TppError
from tpp.metrics import classification_metrics
from tpp.model import attach_adapter, trainable_parameters
from tpp.pretext import build_pretext
from tpp.pretext.mae import masked_mse, patchify


def test_patchify_matches_transformers(tiny_mae):
    from transformers import ViTMAEForPreTraining

    hf = ViTMAEForPreTraining.from_pretrained(tiny_mae)
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(patchify(x, 4), hf.patchify(x))


def test_masked_mse_counts_only_masked_patches():
    target = torch.zeros(1, 4, 3)
    pred = torch.tensor([[[1.0] * 3, [2.0] * 3, [0.0] * 3, [0.0] * 3]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert masked_mse(pred, target, mask, norm_pix=False) == pytest.approx(2.0)  # (4 + 0) / 2


@pytest.mark.parametrize("channels", [1, 3])
def test_mae_pretext_trains_only_target_parameters(tmp_path, channels):
    path = make_backbone(tmp_path / f"mae{channels}", "vit_mae", channels=channels)
    encoder, _, decoder = load_backbone(str(path), with_decoder=True)
    attach_adapter(encoder, "lora", {"r": 2})
    pretext = build_pretext("mae", encoder, decoder, PretextConfig())
    loss = pretext(torch.randn(4, channels, 28, 28))
    loss.backward()
    grads = {n for n, p in pretext.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert trainable_parameters(pretext) == sum(p.numel() for n, p in pretext.named_parameters() if "lora_" in n)
    # masking is on only inside the pretext: the plain encoder call still sees all 49 patches
    assert encoder(torch.randn(1, channels, 28, 28)).shape[1] == 50


def test_mae_pretext_refuses_backbones_without_decoder(tmp_path):
    encoder, _, decoder = load_backbone(str(make_backbone(tmp_path / "vit", "vit")), with_decoder=True)
    with pytest.raises(TppError, match="needs a ViT-MAE checkpoint"):
        build_pretext("mae", encoder, decoder, PretextConfig())


def test_metrics_binary_and_multiclass():
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4], [0.8, 0.2]])
    m = classification_metrics(probs, labels)
    assert m["auroc"] == pytest.approx(1.0) and m["accuracy"] == pytest.approx(5 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == [[3, 0], [1, 2]]
    labels3 = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2])
    probs3 = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 1, 0, 0, 1, 2]), 3).float() * 0.8 + 0.2 / 3
    m3 = classification_metrics(probs3, labels3)
    assert m3["accuracy"] == pytest.approx(8 / 9) and 0.5 < m3["auroc"] <= 1.0
    assert len(m3["confusion_matrix"]) == 3 and m3["auroc_ci95"][0] <= m3["auroc_ci95"][1]
