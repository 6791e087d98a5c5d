"""Pretext pieces on tiny in-code backbones: masking, decoders, DINO teacher, what trains."""
import pytest
import torch
from conftest import make_backbone

from tpp.backbones import base_state_dict, load_backbone
from tpp.errors import TppError
from tpp.model import attach_adapter
from tpp.pretext import build_pretext
from tpp.pretext.dino import dino_loss, random_views
from tpp.pretext.mae import blank_patches, masked_mse, patchify, random_mask


def test_patchify_matches_transformers(tiny_mae):
    from transformers import ViTMAEForPreTraining

    hf = ViTMAEForPreTraining.from_pretrained(tiny_mae)
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(patchify(x, 4), hf.patchify(x))


def test_random_mask_follows_vit_mae_rule(tiny_mae):
    from transformers import ViTMAEModel

    hf = ViTMAEModel.from_pretrained(tiny_mae)
    noise = torch.rand(3, 49)
    assert torch.equal(random_mask(noise, 0.75), hf(torch.randn(3, 3, 28, 28), noise=noise).mask)


def test_blank_patches_zeroes_exactly_the_masked_patches():
    x = torch.randn(2, 1, 8, 8) + 5
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0]])
    patches = patchify(blank_patches(x, mask, 4), 4)
    assert torch.all(patches[0, [0, 3]] == 0) and torch.equal(patches[0, [1, 2]], patchify(x, 4)[0, [1, 2]])
    assert torch.equal(patches[1], patchify(x, 4)[1])


def test_masked_mse_counts_only_masked_patches():
    target = torch.zeros(1, 4, 3)
    pred = torch.tensor([[[1.0] * 3, [2.0] * 3, [0.0] * 3, [0.0] * 3]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert masked_mse(pred, target, mask, norm_pix=False) == pytest.approx(2.0)  # (4 + 0) / 2


CASES = [("vit_mae", "mae", "checkpoint"), ("vit_mae", "mae", "fresh"), ("vit", "mae", "auto"),
         ("dinov2", "mae", "auto"), ("vit_mae", "dino", "auto"), ("dinov2", "dino", "auto")]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("family,name,decoder", CASES)
def test_pretext_trains_only_target_parameters_and_its_own_head(tmp_path, family, name, decoder, channels):
    path = make_backbone(tmp_path / "b", family, channels=channels)
    encoder, _, checkpoint_decoder = load_backbone(str(path), with_decoder=True)
    attach_adapter(encoder, "lora", {"r": 2})
    before = {k: v.clone() for k, v in base_state_dict(encoder.model).items()}
    pretext = build_pretext(name, encoder, checkpoint_decoder, **({"decoder": decoder} if name == "mae" else {}))
    frozen_decoder = {k: v.clone() for k, v in checkpoint_decoder.state_dict().items()} if checkpoint_decoder else {}
    optimizer = torch.optim.SGD([p for p in pretext.parameters() if p.requires_grad], lr=0.5)
    pretext.train()
    for _ in range(2):
        loss = pretext(torch.randn(4, channels, 28, 28))
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = {n for n, p in pretext.named_parameters() if p.requires_grad}
    own_head = {"mae": "decoder.net.", "dino": "student.head."}[name]
    assert any("lora_" in n for n in trained)
    assert all("lora_" in n or n.startswith(own_head) for n in trained)
    assert any(n.startswith(own_head) for n in trained) == (decoder != "checkpoint")
    assert all(torch.equal(v, before[k]) for k, v in base_state_dict(encoder.model).items())
    assert all(torch.equal(v, frozen_decoder[k]) for k, v in checkpoint_decoder.state_dict().items()) \
        if checkpoint_decoder else True
    assert encoder(torch.randn(1, channels, 28, 28)).shape[1] == 50  # no masking outside the pretext


def test_checkpoint_decoder_refused_without_one(tmp_path):
    encoder, _, decoder = load_backbone(str(make_backbone(tmp_path / "vit", "vit")), with_decoder=True)
    assert decoder is None
    with pytest.raises(TppError, match="pretext.decoder=fresh"):
        build_pretext("mae", encoder, decoder, decoder="checkpoint")


def test_dino_teacher_is_an_ema_of_the_trainable_tensors(tiny_mae):
    encoder, _, _ = load_backbone(tiny_mae)
    attach_adapter(encoder, "lora", {"r": 2})
    pretext = build_pretext("dino", encoder, None, dino_ema=0.5)
    student = dict(pretext.student.named_parameters())
    assert set(pretext.teacher) == {n for n, p in student.items() if p.requires_grad}
    x = torch.randn(3, 3, 28, 28)
    assert torch.allclose(pretext.teacher_logits(x), pretext.student(x))  # starts equal
    old = {k: v.clone() for k, v in pretext.teacher.items()}
    with torch.no_grad():
        for name in pretext.teacher:
            student[name].add_(1.0)
    pretext.update_teacher()
    assert all(torch.allclose(pretext.teacher[k], 0.5 * old[k] + 0.5 * student[k]) for k in old)
    assert not torch.allclose(pretext.teacher_logits(x), pretext.student(x))


def test_dino_loss_is_cross_view_and_views_are_augmented():
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    center = torch.zeros(1, 8)
    manual = -(torch.softmax(b / 0.04, -1) * torch.log_softmax(a / 0.1, -1)).sum(-1).mean()
    manual2 = -(torch.softmax(a / 0.04, -1) * torch.log_softmax(b / 0.1, -1)).sum(-1).mean()
    assert dino_loss([a, b], [a, b], center, 0.1, 0.04) == pytest.approx(((manual + manual2) / 2).item(), rel=1e-5)
    x = torch.randn(2, 3, 28, 28)
    gen = torch.Generator().manual_seed(0)
    views = random_views(x, 0.4, gen)
    assert views.shape == x.shape and not torch.allclose(views, x)
    assert torch.equal(views, random_views(x, 0.4, torch.Generator().manual_seed(0)))
