"""Visual prompts and MoVL (adapters/visual_prompt): what trains, where the prompt lies, the discrepancy term.

The method table of test_methods.py also runs both methods (every family, 1 and 3 channels: only prompt tensors
train, the backbone hash never moves, save -> load gives identical outputs, TPP hand-off and site switching)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_backbone

from tpp.adapter_dir import CARD, HEAD, write_adapter_dir
from tpp.adapter_read import read_tensors, read_weights
from tpp.adapters.visual_prompt import PromptedEmbeddings, auxiliary_loss, encoder_output, prompt_modules
from tpp.backbones import backbone_hash, load_backbone
from tpp.errors import ConfigError, TppError
from tpp.data.images import to_model_input
from tpp.data.stream import ModelInputs
from tpp.data.tensors import to_model_tensor
from tpp.model import TaskModel, attach_adapter, input_frame, load_adapter_state


class MeanHead(torch.nn.Module):
    """A linear probe on mean patch tokens: (B, N, D) -> (B, 2)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 2)

    def forward(self, tokens, grid, pixel_values):
        return self.linear(tokens.mean(1))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return str(make_backbone(tmp_path_factory.mktemp("vp") / "bb", "vit_mae"))


def prompted_model(backbone, method="visual_prompt", **options):
    encoder, info, _ = load_backbone(backbone, input_size=options.get("input_size"))
    attach_adapter(encoder, method, options)
    torch.manual_seed(0)
    return TaskModel(encoder, MeanHead(info.hidden_size)), info


@pytest.mark.parametrize("method, options", [("visual_prompt", {}), ("visual_prompt", {"mode": "full"}),
                                             ("movl", {"discrepancy": "cosine"})])
def test_only_prompt_and_head_train_and_the_backbone_stays_bit_identical(backbone, method, options):
    model, info = prompted_model(backbone, method, **options)
    model.train()
    before = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + auxiliary_loss(model, x)
        loss.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"encoder.model.embeddings.tpp_visual_prompt", "head.linear.weight", "head.linear.bias"}
    assert backbone_hash(model.encoder.model) == info.hash


@pytest.mark.parametrize("size, pad", [(36, 4), (28, 2)])
def test_the_padding_prompt_leaves_the_inner_image_untouched(backbone, size, pad):
    """Stored uint8 images through the input pipeline (as the recipes and serving build it) and the prompt: the
    frame holds the prompt, the inside is the stored image exactly as the backbone alone would get it; at
    input_size 28 + 2 x pad a 28-px image is not resampled at all."""
    model, info = prompted_model(backbone, pad=pad, input_size=size)
    info.frame = input_frame(model.encoder.model)
    assert info.frame == pad
    module = prompt_modules(model)[0]
    with torch.no_grad():
        module.tpp_visual_prompt.normal_()
    stored = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    x = ModelInputs.for_backbone(stored, info)[np.arange(2)]
    assert x.shape[-1] == size
    out = module.prompt(x)
    inner = size - 2 * pad
    plain = to_model_tensor(stored, info.channels, inner, info.mean, info.std)  # no frame
    assert torch.equal(out[..., pad:size - pad, pad:size - pad], plain)
    if inner == 28:  # the stored pixels themselves, never resampled
        raw = torch.from_numpy(stored).float().div(255)[:, None].expand(-1, 3, -1, -1)
        mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
        assert torch.equal(out[..., pad:size - pad, pad:size - pad], ((raw - mean) / std).contiguous())
    frame = torch.ones(size, size, dtype=torch.bool)
    frame[pad:size - pad, pad:size - pad] = False
    assert torch.equal(out[..., frame], module.tpp_visual_prompt.detach()[:, frame].expand(2, -1, -1))
    rule = {"image_channels": 1, "channels": info.channels, "image_size": size, "mean": info.mean,
            "std": info.std, "frame": pad}  # serving: the card's input rule gives the same tensor
    assert torch.equal(to_model_input(stored[0], rule), x[:1])


def test_only_a_padding_prompt_reserves_a_frame(backbone):
    assert input_frame(prompted_model(backbone, mode="full")[0].encoder.model) == 0
    assert input_frame(load_backbone(backbone)[0].model) == 0


def test_the_full_prompt_is_added_to_every_pixel(backbone):
    model, _ = prompted_model(backbone, mode="full")
    module = prompt_modules(model)[0]
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(module.prompt(x), x)  # zeros at initialisation: the backbone's own input
    with torch.no_grad():
        module.tpp_visual_prompt.fill_(0.5)
    torch.testing.assert_close(module.prompt(x), x + 0.5)


def test_save_then_load_gives_identical_outputs(backbone, tmp_path):
    model, info = prompted_model(backbone, "movl", pad=3)
    with torch.no_grad():
        prompt_modules(model)[0].tpp_visual_prompt.normal_()
    model.eval()
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        out = model(x)
    options = {"mode": "pad", "pad": 3, "input_size": None, "discrepancy_weight": 0.1, "discrepancy": "mse"}
    write_adapter_dir(tmp_path / "a", model.encoder, model.head, {"kind": "adapter", "method": "movl",
                                                                   "options": options})
    card = json.loads((tmp_path / "a" / CARD).read_text())
    assert set(read_weights(tmp_path / "a", card)) == {"embeddings.tpp_visual_prompt"}
    encoder, _, _ = load_backbone(backbone)
    attach_adapter(encoder, "movl", card["options"])
    load_adapter_state(encoder, read_weights(tmp_path / "a", card), "test")
    head = MeanHead(info.hidden_size)
    head.load_state_dict(read_tensors(tmp_path / "a", HEAD))
    with torch.no_grad():
        assert torch.equal(TaskModel(encoder, head).eval()(x), out)


def test_the_discrepancy_term_compares_prompted_and_plain_features(backbone):
    x = torch.randn(4, 3, 28, 28)
    plain_model, _ = prompted_model(backbone, "visual_prompt")  # weight 0: no term, nothing computed
    plain_model.train()
    assert auxiliary_loss(plain_model, x) == 0.0
    model, _ = prompted_model(backbone, "movl", mode="full", discrepancy_weight=2.0)
    model.train()
    assert float(auxiliary_loss(model, x).detach()) == 0.0  # a zero prompt: prompted == plain
    with torch.no_grad():
        prompt_modules(model)[0].tpp_visual_prompt.fill_(1.0)
    loss = auxiliary_loss(model, x)
    encoder = model.encoder
    with torch.no_grad():
        prompted = encoder.patch_tokens(encoder(x)).mean(1)
        for m in prompt_modules(model):
            m.enabled = False
        plain = encoder.patch_tokens(encoder(x)).mean(1)
        for m in prompt_modules(model):
            m.enabled = True
    torch.testing.assert_close(loss.detach(), 2.0 * F.mse_loss(prompted, plain))
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"encoder.model.embeddings.tpp_visual_prompt"}
    model.eval()
    assert auxiliary_loss(model, x) == 0.0  # evaluation never adds it


def test_the_discrepancy_re_uses_the_task_forward_pass(backbone):
    """With the task pass's encoder output (encoder_output) the term and its gradients are the same as with a
    second prompted pass, and the backbone runs twice per step (task, plain) instead of three times."""
    x, y = torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 0, 1])
    results = []
    for reuse in (False, True):
        model, _ = prompted_model(backbone, "movl", mode="full", discrepancy_weight=2.0)
        with torch.no_grad():
            prompt_modules(model)[0].tpp_visual_prompt.normal_(generator=torch.Generator().manual_seed(1))
        model.train()
        calls = []
        model.encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
        with encoder_output(model if reuse else torch.nn.Identity()) as seen:
            logits = model(x)
        term = auxiliary_loss(model, x, seen.get("tokens"))
        (F.cross_entropy(logits, y) + term).backward()
        results.append((len(calls), term.detach(), prompt_modules(model)[0].tpp_visual_prompt.grad.clone()))
    (calls_twice, term, grad), (calls_reused, term_reused, grad_reused) = results
    assert (calls_twice, calls_reused) == (3, 2)
    torch.testing.assert_close(term_reused, term)
    torch.testing.assert_close(grad_reused, grad)
    assert float(term) > 0


def test_only_a_model_with_a_discrepancy_term_is_hooked(backbone):
    """encoder_output keeps nothing (no hook) for a model whose prompt has no discrepancy weight."""
    x = torch.randn(2, 3, 28, 28)
    for method, weight, kept in (("visual_prompt", 0.0, False), ("movl", 1.0, True)):
        model, _ = prompted_model(backbone, method, mode="full", discrepancy_weight=weight)
        with encoder_output(model) as seen:
            model(x)
        assert ("tokens" in seen) is kept
        assert not model.encoder._forward_hooks  # removed on leaving the block


@pytest.mark.parametrize("options, message", [({"pad": 0}, "adapter.pad"), ({"mode": "frame"}, "adapter.mode"),
                                              ({"discrepancy": "kl"}, "adapter.discrepancy"),
                                              ({"discrepancy_weight": -1}, "discrepancy_weight"),
                                              ({"pad": 14, "input_size": 28}, "leaves no image")])
def test_bad_options_are_config_errors(options, message):
    from tpp.adapters import get_method

    with pytest.raises(ConfigError, match=message):
        get_method("visual_prompt").options_cls(**options)


def test_an_input_of_another_size_names_the_setting(backbone):
    model, _ = prompted_model(backbone)
    with pytest.raises(TppError, match="adapter.input_size"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("part", ["visual_prompt", "movl"])
def test_a_composed_prompts_size_error_names_its_section(backbone, part):
    """The run-time backstop (the config checks refuse this first) names the key a composed method sets."""
    encoder, info, _ = load_backbone(backbone)
    attach_adapter(encoder, f"{part}+lora", {part: {"input_size": 36}, "lora": {"r": 2}})
    model = TaskModel(encoder, MeanHead(info.hidden_size))
    with pytest.raises(TppError, match=rf"adapter\.{part}\.input_size .*must equal backbone\.input_size"):
        model(torch.randn(1, 3, 28, 28))


def test_the_wrapper_is_the_only_module_that_sees_pixels_first(backbone):
    model, _ = prompted_model(backbone)
    assert isinstance(model.encoder.model.embeddings, PromptedEmbeddings)
    assert model.encoder.model.embeddings.patch_embeddings is model.encoder.model.embeddings.base_layer.patch_embeddings
