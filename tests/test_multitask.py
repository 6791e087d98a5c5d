"""The multi-task recipe (issue 23): the UMedPT-style cycle schedule, its samplers, the evaluation-target check,
and a mixed classification + segmentation + MAE run through the CLI whose adapter fine-tunes."""
import copy
import json
import os
import platform

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import make_medmnist
from helpers import FAST, FINETUNE_CONFIG, recipe_args, run_cli, toy_segmentation_npz

from tpp.backbones import base_state_dict, load_backbone
from tpp.errors import ConfigError, TppError
from tpp.model import attach_adapter
import tpp.multitask as multitask
from tpp.multitask import Schedule, TaskSampler, Unit, refuse_batchnorm, split_parameters
from tpp.multitask_build import PretextTask, SupervisedTask, check_eval_targets, pretext_entry
from tpp.pretext import build_pretext
from tpp.tasks import get_task


def _units(tiny_mae):
    """A LoRA encoder shared by a classification, a segmentation and an MAE task (fresh decoder), with
    SGD heads, and one fixed batch each."""
    encoder, info, _ = load_backbone(str(tiny_mae))
    attach_adapter(encoder, "lora", {"r": 2})
    torch.manual_seed(0)
    cls, seg = get_task("classification"), get_task("segmentation")
    cls_opt, seg_opt = cls.options_cls(), seg.options_cls()
    ds_cls = type("D", (), {"num_classes": 3, "class_names": ["a", "b", "c"]})()
    ds_seg = type("D", (), {"num_classes": 2, "class_names": ["bg", "fg"]})()
    modules = {"cls": SupervisedTask(encoder, cls.build_head(cls_opt, info, ds_cls), cls, cls_opt, False),
               "seg": SupervisedTask(encoder, seg.build_head(seg_opt, info, ds_seg), seg, seg_opt, False),
               "mae": PretextTask(build_pretext("mae", encoder, None, decoder="fresh"), False)}
    size = info.input_size
    batches = [[torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 1])],
               [torch.randn(4, 3, size, size), (torch.rand(4, size, size) > 0.5).long()],
               [torch.randn(4, 3, size, size)]]
    return encoder, modules, batches


def _schedule(encoder, modules, kind, lr=0.1):
    shared, heads = split_parameters(encoder, modules)
    units = [Unit(n, m, heads[n], torch.optim.SGD(heads[n], lr=lr)) for n, m in modules.items()]
    return Schedule(shared, units, torch.optim.SGD(shared, lr=lr), schedule=kind), units


def _spy(optimizer, record: list):
    """Record (a copy of every gradient) each time ``optimizer`` steps."""
    step = optimizer.step

    def spied(*args, **kwargs):
        record.append([p.grad.clone() for g in optimizer.param_groups for p in g["params"]])
        return step(*args, **kwargs)
    optimizer.step = spied


def test_a_cycle_is_one_shared_step_and_one_step_per_head(tiny_mae):
    encoder, modules, batches = _units(tiny_mae)
    schedule, units = _schedule(encoder, modules, "cycle")
    shared_steps, head_steps = [], {u.name: [] for u in units}
    _spy(schedule.optimizer, shared_steps)
    for unit in units:
        _spy(unit.optimizer, head_steps[unit.name])
    before = {n: p.detach().clone() for n, p in encoder.named_parameters() if p.requires_grad}
    losses = schedule.step([0, 1, 2], batches, [1.0, 1.0, 1.0])
    assert len(shared_steps) == 1 and {n: len(s) for n, s in head_steps.items()} == {"cls": 1, "seg": 1, "mae": 1}
    assert set(losses) == {"cls", "seg", "mae"} and all(np.isfinite(v) for v in losses.values())
    after = {n: p.detach() for n, p in encoder.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the one shared step moved the adapter
    assert all(p.grad is None for p in encoder.parameters())  # and cleared the accumulated gradients


def test_a_heads_gradients_are_freed_before_the_next_task_runs(tiny_mae):
    """Each head steps and drops its gradients (set to None) right after its task's backward, so no head's
    gradients are held while the next task's activations are alive."""
    encoder, modules, batches = _units(tiny_mae)
    schedule, units = _schedule(encoder, modules, "cycle")
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = {u.name: sum(p.grad is not None for p in u.head_params) for u in units}
        return hook
    for name, module in modules.items():
        module.register_forward_pre_hook(record(name))
    schedule.step([0, 1, 2], batches, [1.0, 1.0, 1.0])
    assert seen["seg"]["cls"] == 0 and seen["mae"] == {"cls": 0, "seg": 0, "mae": 0}
    assert all(p.grad is None for u in units for p in u.head_params)


@pytest.mark.parametrize("kind, release, expected", [
    ("cycle", True, [["cls"], ["cls", "seg"], ["cls", "seg", "mae"]]),  # after each task's backward + head step
    ("summed", True, [["cls", "seg", "mae"]]),  # after the one backward
    ("cycle", False, [])])
def test_the_schedule_releases_freed_memory_after_each_task(tiny_mae, monkeypatch, kind, release, expected):
    encoder, modules, batches = _units(tiny_mae)
    schedule, units = _schedule(encoder, modules, kind)
    schedule.release_memory = release
    calls = []
    monkeypatch.setattr(multitask, "release_freed_memory",
                        lambda: calls.append([u.name for u in units if u.steps]) or True)
    schedule.step([0, 1, 2], batches, [1.0, 1.0, 1.0])
    assert calls == expected


def test_allocator_settings_apply_on_glibc_and_are_no_ops_without(monkeypatch):
    """malloc_trim and the fixed mmap threshold (process-wide, harmless to set twice) on glibc; elsewhere
    both do nothing and say so."""
    if platform.libc_ver()[0] == "glibc":  # in a fresh interpreter: the threshold would stay set in this one
        import subprocess
        import sys

        code = ("import tpp.multitask as m; assert m._malloc_trim() is not None; "
                "assert m.set_mmap_threshold() is True; print('set')")
        env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert done.returncode == 0 and done.stdout.strip() == "set", done.stderr
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "33554432")  # glibc's own setting, read at start: it wins
    assert multitask.set_mmap_threshold() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(multitask, "_malloc_trim", lambda: None)
    assert multitask.release_freed_memory() is False and multitask.set_mmap_threshold() is False


def _cycle_and_summed(encoder, modules, order, batches, weights) -> dict:
    """The gradients each optimiser stepped with, {schedule: {"shared" | task name: [grads per step]}}, for
    the same step run by the cycle schedule and by the summed step on a deep copy."""
    twin = copy.deepcopy(nn.ModuleDict({"encoder": encoder, **modules}))
    records = {}
    for kind, (enc, mods) in {"cycle": (encoder, modules),
                              "summed": (twin["encoder"], {k: twin[k] for k in modules})}.items():
        schedule, units = _schedule(enc, mods, kind)
        records[kind] = {"shared": [], **{u.name: [] for u in units}}
        _spy(schedule.optimizer, records[kind]["shared"])
        for unit in units:
            _spy(unit.optimizer, records[kind][unit.name])
        torch.manual_seed(1)  # the same MAE masks and augmentation in both
        schedule.step(order, batches, weights)
    return records


def test_cycle_gradients_equal_the_summed_loss_gradients(tiny_mae):
    encoder, modules, batches = _units(tiny_mae)
    records = _cycle_and_summed(encoder, modules, [0, 1, 2], batches, [1.0, 0.5, 2.0])
    for key in ("shared", "cls", "seg", "mae"):
        cycle, summed = records["cycle"][key][0], records["summed"][key][0]
        assert len(cycle) == len(summed) > 0
        assert any(g.abs().sum() > 0 for g in cycle)
        for a, b in zip(cycle, summed):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_task_drawn_twice_steps_its_head_once_and_keeps_the_summed_gradients(tiny_mae):
    """The weighted sampler may draw a task twice in a cycle: its head steps once, after its last batch, so
    both batches see the same head and the gradients equal the summed-loss step's."""
    encoder, modules, batches = _units(tiny_mae)
    modules = {k: modules[k] for k in ("cls", "seg")}
    drawn = [batches[0], [b.flip(0) for b in batches[0]], batches[1]]
    records = _cycle_and_summed(encoder, modules, [0, 0, 1], drawn, [1.0, 1.0, 1.0])
    assert {k: len(v) for k, v in records["cycle"].items()} == {"shared": 1, "cls": 1, "seg": 1}
    for key in ("shared", "cls", "seg"):
        for a, b in zip(records["cycle"][key][0], records["summed"][key][0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_frozen_backbone_bit_identical_after_multitask_tpp(tiny_mae):
    encoder, modules, batches = _units(tiny_mae)
    frozen = {k: v.clone() for k, v in base_state_dict(encoder.model).items()}
    schedule, _ = _schedule(encoder, modules, "cycle")
    for _ in range(3):
        schedule.step([0, 1, 2], batches, [1.0, 1.0, 1.0])
    after = base_state_dict(encoder.model)
    assert frozen.keys() == after.keys() and all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_gradient_accumulation_keeps_the_gradients(tiny_mae):
    encoder, modules, batches = _units(tiny_mae)
    """A mean-reduced loss (classification; not Dice, not random masks) split in micro-batches: same gradients."""
    twin = copy.deepcopy(nn.ModuleDict({"encoder": encoder, "cls": modules["cls"]}))
    grads = []
    for enc, cls, accum in ((encoder, modules["cls"], 1), (twin["encoder"], twin["cls"], 2)):
        schedule, _ = _schedule(enc, {"cls": cls}, "cycle")
        schedule.accum, record = accum, []
        _spy(schedule.optimizer, record)
        schedule.step([0], batches[:1], [1.0])
        grads.append(record[0])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_a_cycle_under_bf16_autocast_steps_with_float32_gradients():
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x, y):
            return nn.functional.cross_entropy(self.fc(shared(x)).float(), y)

    modules = {"a": Head(), "b": Head()}
    params, heads = split_parameters(shared, modules)
    grads = []
    opt = torch.optim.SGD(params, lr=0.1)
    _spy(opt, grads)
    units = [Unit(n, m, heads[n], torch.optim.SGD(heads[n], lr=0.1)) for n, m in modules.items()]
    schedule = Schedule(params, units, opt, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    batch = [torch.randn(4, 8), torch.tensor([0, 1, 2, 0])]
    losses = schedule.step([0, 1], [batch, batch], [1.0, 1.0])
    assert all(np.isfinite(v) for v in losses.values()) and len(grads) == 1
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads[0])


def test_batchnorm_in_shared_blocks_is_refused():
    refuse_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.GroupNorm(1, 2)))
    with pytest.raises(ConfigError, match=r"BatchNorm layers \(1\).*LayerNorm or GroupNorm"):
        refuse_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))


def test_samplers():
    assert TaskSampler([1, 2, 0.5]).cycle(7) == [0, 1, 2]
    assert TaskSampler([1, 0, 1]).cycle(0) == [0, 2]  # weight 0: never visited
    sampler = TaskSampler([1.0, 3.0, 0.0], "weighted", per_cycle=4, seed=3)
    assert sampler.cycle(5) == TaskSampler([1.0, 3.0, 0.0], "weighted", per_cycle=4, seed=3).cycle(5)  # resumable
    draws = np.concatenate([sampler.cycle(i) for i in range(300)])
    counts = np.bincount(draws, minlength=3)
    assert counts[2] == 0 and 2.5 < counts[1] / counts[0] < 3.5
    assert sampler.loss_weight(1) == 1.0 and TaskSampler([1.0, 3.0]).loss_weight(1) == 3.0
    with pytest.raises(ConfigError, match="positive sum"):
        TaskSampler([0, 0])


def test_pool_overlapping_an_eval_target_is_refused_naming_both():
    with pytest.raises(TppError, match=r"task 'busi-seg'.*'busi_64'.*evaluation target 'breastmnist' \(origin BUSI\)"):
        check_eval_targets([("busi-seg", "segmentation", "busi_64", "BUSI")], ["breastmnist"])
    with pytest.raises(TppError, match=r"task 'breastmnist-classification'.*evaluation target 'BUSI'"):
        check_eval_targets([("breastmnist-classification", "classification", "breastmnist", None)], ["BUSI"])
    # the target's own unlabeled training images may train a pretext (as TPP); other collections pass
    check_eval_targets([("own", "mae", "breastmnist", None), ("blood", "classification", "bloodmnist", None)],
                       ["breastmnist", "pneumoniamnist"])


def test_a_misspelt_eval_target_is_refused_with_the_name_meant_and_a_sites_own_name_passes():
    """``breastmnst`` matched nothing, so the pool's BreastMNIST labels were not refused."""
    tasks = [("breastmnist-classification", "classification", "breastmnist", None)]
    with pytest.raises(ConfigError, match=r"'breastmnst' is no dataset or origin tpp knows; did you mean "
                                          r"'breastmnist'\? A misspelt target turns the leakage check off"):
        check_eval_targets(tasks, ["breastmnst"])
    check_eval_targets(tasks, ["hospital_b_ultrasound"])  # a site's own dataset: nothing to compare, passes
    check_eval_targets([("a", "classification", "hospital_a", None), ("b", "mae", "hospital_b", None)],
                       ["hospital_c", "breastmnist_224"])  # held-out sites near pool names or MedMNIST ones: pass


def _pool(seg_file) -> str:
    return ("pool=[{kind: classification, data: {source: medmnist, name: bloodmnist}}, "
            f"{{kind: segmentation, weight: 0.5, data: {{source: seg_npz, name: toyseg, file: {seg_file}, "
            "classes: [background, lesion], modality: US, label_key: label, class_names_key: label_names}}, "
            "{kind: mae, head: {mask_ratio: 0.5}, data: {source: medmnist, name: pneumoniamnist}}]")


def test_cli_refuses_a_pool_with_the_eval_target(tiny_mae, tmp_path, capsys):
    root = make_medmnist(tmp_path / "data", name="bloodmnist", classes=3, n=(24, 4, 4))
    toy_segmentation_npz(root / "toyseg.npz", n=24)
    code = run_cli("run", "multitask", "--config", "multitask/tpp_pool.yaml", f"backbone.path={tiny_mae}",
                   f"data.root={root}", f"output_dir={tmp_path / 'out'}", _pool("toyseg.npz"),
                   "multitask.eval_targets=[Kermany2018]")
    assert code != 0 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "pneumoniamnist" in err and "Kermany2018" in err


def test_finetune_refuses_a_multitask_parent_that_saw_its_collection():
    from types import SimpleNamespace

    from tpp.builders import check_leakage

    site = SimpleNamespace(name="breastmnist", origin="BUSI", split_id="medmnist", split_sha256=lambda: {"train": "a"})
    seen = {"name": "busi_64", "origin": "BUSI", "split_sha256": {"train": "b"}, "used": {"split": "train"}}
    parent = {"data": {"name": "multitask:blood+busi", "origin": None},
              "multitask": {"tasks": [{"data": {"name": "bloodmnist", "origin": None}}, {"data": seen}]}}
    with pytest.raises(TppError, match="pre-trained on 'busi_64'.*same BUSI images as 'breastmnist'"):
        check_leakage(parent, site, "parent/adapter")
    check_leakage(dict(parent, multitask={"tasks": [{"data": dict(seen, split_sha256={"train": "a"})}]}), site, "p")


def test_finetune_with_fewer_labels_refuses_a_multitask_parent_that_read_its_training_labels():
    """A supervised pool entry on the target's own training split read every label: a 1%-label fine-tune from
    it used to pass silently (reported as a 1% result); renamed (another name, no origin, the same images) too.
    A self-supervised entry on those images, or fine-tuning with every label, is fine."""
    from types import SimpleNamespace

    from tpp.builders import check_leakage

    site = SimpleNamespace(name="breastmnist", origin="BUSI", split_id="medmnist", split_sha256=lambda: {"train": "a"},
                           held_out_origins=None)
    labelled = {"name": "breastmnist", "origin": "BUSI", "split_sha256": {"train": "a"},
                "used": {"split": "train", "images": 546, "labels_read": True}}
    renamed = dict(labelled, name="mybreast", origin="files:0123")  # the same images under another name
    for seen in (labelled, renamed):
        parent = {"data": {"name": "multitask:x", "origin": None}, "multitask": {"tasks": [{"data": seen}]}}
        with pytest.raises(TppError, match=r"trained on the labels of .*100% of its training split: 546 images.*"
                                           r"data.label_fraction=0.01 of those labels"):
            check_leakage(parent, site, "mt/adapter", label_fraction=0.01)
        check_leakage(parent, site, "mt/adapter", label_fraction=1.0)  # the same labels: fine
        unlabelled = {"multitask": {"tasks": [{"data": dict(seen, used={"split": "train", "labels_read": False})}]}}
        check_leakage(unlabelled, site, "mt/adapter", label_fraction=0.01)  # MAE on its images: fine
    fine_tuned = {"data": dict(labelled, used={"split": "train", "images": 55, "label_fraction": 0.1})}
    with pytest.raises(TppError, match=r"10% of its training split.*data.label_fraction=0.1 or more"):
        check_leakage(fine_tuned, site, "ft/adapter", label_fraction=0.01)  # a fine-tuned parent with more labels
    check_leakage(fine_tuned, site, "ft/adapter", label_fraction=0.1)
    no_origin = SimpleNamespace(name="bloodmnist", origin=None, split_id="medmnist", held_out_origins=None,
                                split_sha256=lambda: {"train": "b"})
    other = {"name": "organamnist", "origin": None, "split_sha256": {"train": "o"}, "used": {"splits": ["train"]}}
    check_leakage({"data": other}, no_origin, "p")  # no origin on either side, other images: fine
    check_leakage({"data": {"name": "multitask:x", "origin": None}, "multitask": {"tasks": [{"data": other}]}},
                  no_origin, "mt/adapter", label_fraction=0.01)  # a multi-task card's own data entry: fine


def _multitask_card(*modalities) -> dict:
    tasks = [{"name": f"t{i}", "data": {"name": f"d{i}", "modality": m}} for i, m in enumerate(modalities)]
    multitask = {"name": "multitask", "tasks": tasks}
    return {"stage": "tpp", "modality": "mixed", "pretext": pretext_entry(multitask), "multitask": multitask}


def test_a_multitask_parent_warns_only_when_no_task_saw_the_modality():
    import warnings

    from tpp.builders import check_parent_modality

    card = _multitask_card("CT", "US", "CT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_parent_modality(card, "mt/adapter", "US", required=True)  # BreastMNIST MAE was in the pool
        check_parent_modality(_multitask_card("CT", "DX"), "mt/adapter", "CR", required=True)  # X-ray group
    with pytest.warns(UserWarning, match=r"pre-trained on modality CT/US \(a multi-task pool\), but the fine-tuning "
                      r"data is MR"):
        check_parent_modality(card, "mt/adapter", "MR", required=False)
    with pytest.raises(TppError, match="modality CT, but"):
        check_parent_modality({"modality": "CT"}, "tpp/adapter", "US", required=True)  # single-pretext: as before


def test_compare_names_a_multitask_parent_tpp_multi_task():
    from tpp.adapter_dir import parent_summary
    from tpp.compare import init_label

    child = {"parent": parent_summary(_multitask_card("CT"), "runs/mt/adapter")}
    assert init_label(child, "runs/mt/adapter") == "TPP (multi-task)"


@pytest.mark.integration
def test_mixed_run_trains_resumes_and_its_adapter_fine_tunes(tiny_mae, tmp_path, monkeypatch):
    import tpp.recipes.multitask as recipe

    thresholds = []
    monkeypatch.setattr(recipe, "set_mmap_threshold", lambda: thresholds.append(1))
    root = make_medmnist(tmp_path / "data", name="bloodmnist", classes=3, n=(24, 4, 4))
    make_medmnist(root, name="pneumoniamnist", n=(24, 4, 4), seed=1)
    toy_segmentation_npz(root / "toyseg.npz", n=24)
    out = tmp_path / "mt"
    args = ["run", "multitask", "--config", "multitask/tpp_pool.yaml", f"backbone.path={tiny_mae}",
            f"data.root={root}", f"output_dir={out}", _pool("toyseg.npz"), "multitask.eval_targets=[breastmnist]",
            "train.batch_size=8", "adapter.r=2", "train.checkpoint_every=2"]
    assert run_cli(*args, "train.max_steps=2") == 0
    assert run_cli(*args, "train.max_steps=4", "train.resume=auto") == 0  # extended from its checkpoint
    assert thresholds == [1, 1]  # multitask.allocator defaults to mmap
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == metrics["shared_steps"] == 4
    assert set(metrics["head_steps"].values()) == {4} and len(metrics["head_steps"]) == 3
    card = json.loads((out / "adapter" / "tpp_card.json").read_text())
    tasks = card["multitask"]["tasks"]
    assert [t["kind"] for t in tasks] == ["classification", "segmentation", "mae"]
    assert card["pretext"]["name"] == "multi-task" and card["modality"] == "mixed"
    assert all(t["data"]["content_sha256"] and t["license"] for t in tasks)
    assert tasks[0]["license"] == "CC BY 4.0" and tasks[1]["license"] == "unknown"
    heads = json.loads((out / "heads" / "heads.json").read_text())
    assert {h["file"] for h in heads["tasks"]} <= {p.name for p in (out / "heads").iterdir()}
    site = make_medmnist(tmp_path / "site")
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, site, tmp_path / "ft", "train.max_steps=3",
                                *FAST, f"adapter.init_from={out / 'adapter'}")) == 0
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "init_from" and e["loaded_tensors"] > 0 for e in log)
    child = json.loads((tmp_path / "ft" / "adapter" / "tpp_card.json").read_text())
    assert child["parent"]["pretext"]["name"] == "multi-task"


@pytest.mark.integration
def test_backbone_scope_writes_a_backbone_every_recipe_loads(tiny_mae, tmp_path, monkeypatch):
    import tpp.recipes.multitask as recipe

    thresholds, releases = [], []
    monkeypatch.setattr(recipe, "set_mmap_threshold", lambda: thresholds.append(1))
    monkeypatch.setattr(multitask, "release_freed_memory", lambda: releases.append(1))
    root = make_medmnist(tmp_path / "data", name="bloodmnist", classes=3, n=(24, 4, 4))
    out = tmp_path / "bb"
    pool = ("pool=[{kind: classification, data: {source: medmnist, name: bloodmnist}}, "
            "{kind: mae, data: {source: medmnist, name: bloodmnist}}, "
            "{kind: dino, head: {dino_out_dim: 16}, data: {source: medmnist, name: bloodmnist}}]")
    assert run_cli("run", "multitask", "--config", "multitask/backbone_pool.yaml", f"backbone.path={tiny_mae}",
                   f"data.root={root}", f"output_dir={out}", pool, "train.batch_size=8", "train.max_steps=2",
                   "train.checkpoint_every=null", "multitask.allocator=trim") == 0
    assert thresholds == [] and releases  # trim: no process-wide mmap threshold, malloc_trim per task
    backbone = out / "backbone"
    card = json.loads((backbone / "tpp_backbone_card.json").read_text())
    assert [t["kind"] for t in card["pool"]] == ["classification", "mae", "dino"]
    encoder, info, decoder = load_backbone(str(backbone), with_decoder=True)
    _, parent, _ = load_backbone(str(tiny_mae))
    assert decoder is not None and info.hash == card["hash"] != parent.hash  # every backbone weight trained
    site = make_medmnist(tmp_path / "site")
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, backbone, site, tmp_path / "ft", "train.max_steps=2",
                                *FAST)) == 0


def test_a_misspelt_head_option_is_named_with_the_close_one_and_every_problem_is_listed():
    """A typo inside pool[i].head used to surface Python's 'unexpected keyword argument', one problem only."""
    from types import SimpleNamespace

    from tpp.multitask_build import check_entries

    pool = [SimpleNamespace(kind="mae", weight=1.0, name=None, head={"mask_ration": 0.5},
                            data=SimpleNamespace(name="breastmnist")),
            SimpleNamespace(kind="classification", weight=1.0, name=None, head={"bootstrap": 0},
                            data=SimpleNamespace(name="pneumoniamnist"))]
    problems = check_entries(pool)
    assert any("unknown config key 'pool[0].head.mask_ration'; did you mean pool[0].head.mask_ratio?" in p
               for p in problems), problems
    assert any("pool[1].head.bootstrap'" in p for p in problems) and not any("unexpected keyword" in p
                                                                              for p in problems)


@pytest.mark.integration
def test_a_resumed_multitask_run_reports_each_tasks_final_loss_as_the_uninterrupted_one(tiny_mae, tmp_path):
    """Each task's final_loss averaged only the steps after the resume (blood 2.032 against 1.930)."""
    import shutil

    from helpers import interrupted_at

    root = make_medmnist(tmp_path / "data", name="bloodmnist", classes=3, n=(24, 4, 4))
    make_medmnist(root, name="pneumoniamnist", n=(24, 4, 4), seed=1)
    toy_segmentation_npz(root / "toyseg.npz", n=24)

    def args(out):
        return ["run", "multitask", "--config", "multitask/tpp_pool.yaml", f"backbone.path={tiny_mae}",
                f"data.root={root}", f"output_dir={out}", _pool("toyseg.npz"), "multitask.eval_targets=[breastmnist]",
                "train.batch_size=8", "adapter.r=2", "train.checkpoint_every=2", "train.max_steps=4"]

    assert run_cli(*args(tmp_path / "full")) == 0
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    interrupted_at(tmp_path / "cut", 2)
    assert run_cli(*args(tmp_path / "cut"), "train.resume=auto") == 0
    full, cut = (json.loads((tmp_path / r / "adapter" / "tpp_card.json").read_text())["multitask"]["tasks"]
                 for r in ("full", "cut"))
    assert [t["final_loss"] for t in cut] == pytest.approx([t["final_loss"] for t in full], rel=1e-6)


def test_a_card_of_the_old_default_name_is_taken_for_this_data_when_split_id_and_counts_agree():
    """Before 2026-12-02 every source's data.name defaulted to 'breastmnist', and a seeded split depends on the
    name: an adapter trained then, evaluated or fine-tuned from now under the data's own name, split otherwise.
    Its training images may be in today's test split: refused, with the way to get the old split."""
    from types import SimpleNamespace

    from tpp.builders import check_leakage, check_same_split

    site = SimpleNamespace(name="scans", origin=None, split_id="seeded 0 (val 0.1, test 0.2)", held_out_origins=(),
                           splits={"train": [0] * 7, "val": [0] * 1, "test": [0] * 2},
                           split_sha256=lambda: {"train": "new"})
    old = {"name": "breastmnist", "origin": None, "split_id": site.split_id, "split_sha256": {"train": "old"},
           "counts": {"train": 7, "val": 1, "test": 2}, "used": {"splits": ["train"]}}
    with pytest.raises(TppError, match=r"another split of 'scans'.*give this run data.name=breastmnist"):
        check_same_split({"data": old}, site, "runs/a/adapter")
    with pytest.raises(TppError, match=r"perhaps the same data under the old default name.*data.name=breastmnist"):
        check_leakage({"data": old}, site, "runs/tpp/adapter")
    other = dict(old, counts={"train": 70, "val": 10, "test": 20})  # other data that was called breastmnist: passes
    check_same_split({"data": other}, site, "runs/a/adapter")
    check_leakage({"data": other}, site, "runs/tpp/adapter")
