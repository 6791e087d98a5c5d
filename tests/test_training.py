"""Gradient accumulation: the same trainable tensors as one pass over the whole batch; hooks once per step."""
import pytest
import torch
from helpers import finetune, tpp
from safetensors.torch import load_file

from tpp.cli import main


@pytest.mark.parametrize("parts", [4, 3])  # 3 gives uneven micro-batches (6, 5, 5 of 16)
def test_grad_accumulation_matches_the_full_batch(tiny_mae, data_root, tmp_path, parts):
    common = ["data.hflip=false", "train.select_best=false", "train.max_steps=3"]
    assert finetune(tiny_mae, data_root, tmp_path / "one", *common) == 0
    assert finetune(tiny_mae, data_root, tmp_path / "acc", *common, f"train.grad_accum_steps={parts}") == 0
    for name in ("adapter_model.safetensors", "head.safetensors"):
        a, b = (load_file(tmp_path / run / "adapter" / name) for run in ("one", "acc"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
        assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a)


def test_dino_teacher_moves_once_per_optimiser_step(tiny_mae, data_root, tmp_path, monkeypatch):
    from tpp.pretext.dino import DINOPretext

    calls = []
    real = DINOPretext.update_teacher
    monkeypatch.setattr(DINOPretext, "update_teacher", lambda self: (calls.append(1), real(self)))
    assert tpp(tiny_mae, data_root, tmp_path / "d", "pretext.name=dino", "train.max_steps=3",
               "train.grad_accum_steps=2") == 0
    assert len(calls) == 3


def test_grad_accum_steps_is_checked(tiny_mae, tmp_path, capsys):
    assert main(["validate", "breast_us/mae_vit_tiny_lora_finetune.yaml", "train.grad_accum_steps=0"]) == 2
    assert "grad_accum_steps" in capsys.readouterr().err


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_accumulated_gradients_equal_the_full_batch_gradient(parts):
    from accelerate import Accelerator

    from tpp.training import accumulated_loss

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    full = loss_fn(model, [x, y])
    expected = torch.autograd.grad(full, list(model.parameters()))
    value = accumulated_loss(Accelerator(cpu=True), model, loss_fn, [x, y], parts, step=1)
    assert value == pytest.approx(full.item(), abs=1e-6)
    for g, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=0)


def test_step_bar_in_a_log_ends_its_line(capsys):
    """In a log (stderr not a terminal) the finished bar stays as a line of its own: what is printed next (the
    recipe's closing lines) used to continue the cleared bar's line."""
    from tpp.training import step_bar

    for _ in step_bar(1, 3, "finetune x"):
        pass
    err = capsys.readouterr().err
    assert err.endswith("\n") and "3/3" in err.splitlines()[-1]


def test_a_long_prediction_pass_shows_a_bar_on_a_terminal_only(capsys, monkeypatch):
    """Evaluating thousands of images sat silent for a minute; a pass of 20 batches or more shows a bar on a
    terminal (none in a log, none for a short validation pass)."""
    import sys

    import torch
    from accelerate import Accelerator

    from tpp.training import predict_probs

    model, images = torch.nn.Flatten(), torch.rand(40, 2)
    for terminal, batch, shown in ((True, 2, True), (True, 4, False), (False, 2, False)):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
        probs = predict_probs(Accelerator(cpu=True), model, images, batch)
        assert probs.shape == (40, 2)
        assert ("predict" in capsys.readouterr().err) == shown, (terminal, batch)
