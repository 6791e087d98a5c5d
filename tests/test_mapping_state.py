"""ILM's label mapping belongs to the training state: best-on-validation selection keeps the mapping that scored
with the prompt, and a checkpoint keeps the mapping, its step counter and history, so a resumed ILM run ends
exactly as an uninterrupted one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_output_mapping import hub_backbone, mapped_model

from tpp.checkpoint import Checkpointer
from tpp.data.stream import ModelInputs
from tpp.label_mapping import prepare_output_mapping
from tpp.training import build_accelerator, make_loader, make_optimizer, train_loop

IMAGES = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
LABELS = torch.tensor([0, 1] * 6)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return hub_backbone(tmp_path_factory.mktemp("hub") / "hub", num_labels=6)[0]


def ilm_run(hub, num_steps, checkpoints=None, eval_fn=None, remap=None):
    """An ILM run (full visual prompt, batch 4 of 12 images: 3 steps per epoch, constant learning rate) of
    ``num_steps`` steps; ``remap`` replaces the frequency mapping (a function of the head). Returns the model."""
    model, info = mapped_model(hub, "ilm", seed=0)
    inputs = ModelInputs.for_backbone(IMAGES, info)
    prepare_output_mapping(model, inputs, LABELS, steps_per_epoch=3, eval_batch_size=12)
    if remap is not None:
        model.head.remap, model.head.history = (lambda: remap(model.head)), []
        model.head.set_mapping(model.head.remap())
    accelerator = build_accelerator("no", 0, device="cpu")
    loader = make_loader(inputs[np.arange(12)], LABELS, batch_size=4, shuffle=True, seed=0)
    optimizer = make_optimizer(model, 0.5, 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    train_loop(accelerator, model, loss_fn, loader, optimizer, scheduler, num_steps, lambda **kw: None,
               eval_fn, 1, checkpoints=checkpoints)
    return model


def prompt(model) -> torch.Tensor:
    return next(p for n, p in model.named_parameters() if p.requires_grad).detach().clone()


def test_best_step_restores_the_mapping_it_scored_with(hub):
    seen = {}

    def eval_fn(model):  # step 4 (second epoch, after the remap at step 3) scores best
        step = model.head.steps
        seen[step] = (prompt(model), model.head.mapping.tolist())
        return -abs(step - 4), {}

    # every epoch maps onto another pair of source classes: the mapping at step 4 is not the last one (step 6)
    model = ilm_run(hub, 8, eval_fn=eval_fn, remap=lambda head: [[0, 1], [2, 3], [5, 4]][head.steps // 3 % 3])
    assert seen[4][1] == [2, 3] and seen[8][1] == [5, 4]
    torch.testing.assert_close(prompt(model), seen[4][0])
    assert model.head.mapping.tolist() == seen[4][1]
    assert [h["step"] for h in model.head.history] == [0, 3, 6]  # the log still lists every mapping computed


def test_a_resumed_ilm_run_ends_exactly_as_an_uninterrupted_one(hub, tmp_path):
    reference = ilm_run(hub, 8)
    ilm_run(hub, 4, Checkpointer(tmp_path, every=4))  # stops after step 4 (mid-epoch), checkpointed
    resumed = ilm_run(hub, 8, Checkpointer(tmp_path, every=4, resume="auto"))
    assert resumed.head.steps == reference.head.steps == 8
    assert resumed.head.history == reference.head.history and [h["step"] for h in resumed.head.history] == [0, 3, 6]
    assert resumed.head.mapping.tolist() == reference.head.mapping.tolist()
    torch.testing.assert_close(prompt(resumed), prompt(reference), rtol=0, atol=0)
