"""The real CLI on real BreastMNIST (../shared/data) with the shared ViT-MAE backbone.

AUROC floor: ../shared/models/README.md reports BreastMNIST test AUROC 0.734 for LoRA r=8 with all
labels (<=800 steps) and 0.728 for a linear probe. This run has a fixed seed and a smaller budget
(150 steps), and measured 0.76 here; the floor of 0.70 sits one bootstrap-CI half-width (~0.09/2)
below that, and far above chance (0.5) and above the 10%-label linear probe (0.62-0.70), so a
broken backbone, adapter, normalisation or label mapping fails it.
"""
import json

import pytest
from conftest import shared_backbone, shared_data
from helpers import FINETUNE_CONFIG, TPP_CONFIG, recipe_args, run_cli, run_cli_subprocess

pytestmark = pytest.mark.integration
AUROC_FLOOR = 0.70


def lora_args(out, *extra):
    return recipe_args("finetune", FINETUNE_CONFIG, shared_backbone(), shared_data(), out, "train.max_steps=150",
                       "seed=0", *extra)


@pytest.fixture(scope="module")
def lora_fp32(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_fp32") / "run"
    assert run_cli(*lora_args(out)) == 0
    return json.loads((out / "metrics.json").read_text())


def test_breastmnist_lora_finetune_reaches_floor(lora_fp32):
    assert lora_fp32["test"]["n"] == 156
    assert lora_fp32["test"]["auroc"] >= AUROC_FLOOR, lora_fp32["test"]


# The bf16 check runs a short pair: this CPU has no native bf16 (AVX2 only), so a bf16 step costs ~20x an fp32
# one (6.1 s vs 0.33 s at batch 32); 150 steps at batch 64, as above, took over 30 minutes in bf16.
BF16_PAIR = ["seed=0", "train.max_steps=30", "train.batch_size=32", "train.select_best=false", "train.eval_every=1000"]


def first_loss(run) -> float:
    return next(json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()
                if '"event": "step"' in line)


def test_bf16_on_cpu_trains_to_the_fp32_auroc(tmp_path):
    """bf16 autocast through Accelerate (own process: Accelerate's precision is process-wide) against the same
    run in fp32: same seed, data, batches and steps. Measured (2026-11-29, 2-core AMD EPYC): test AUROC 0.7279
    (fp32) vs 0.7278 (bf16), first-step loss 0.71278 vs 0.71317; bf16 took 204 s, fp32 25 s. The AUROC bound is
    0.02; the fp32 run must be clear of chance (0.5), and the first losses must differ a little (bf16 rounding:
    the precision was really applied) but not much."""
    fp32_run, bf16_run = tmp_path / "fp32", tmp_path / "bf16"
    args = ("finetune", FINETUNE_CONFIG, shared_backbone(), shared_data())
    assert run_cli(*recipe_args(*args, fp32_run, *BF16_PAIR)) == 0
    proc = run_cli_subprocess(*recipe_args(*args, bf16_run, *BF16_PAIR, "train.mixed_precision=bf16"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    fp32, bf16 = (json.loads((run / "metrics.json").read_text())["test"] for run in (fp32_run, bf16_run))
    assert fp32["auroc"] > 0.65, fp32
    assert abs(bf16["auroc"] - fp32["auroc"]) <= 0.02, (bf16, fp32)
    loss_fp32, loss_bf16 = first_loss(fp32_run), first_loss(bf16_run)
    assert loss_fp32 != loss_bf16 and abs(loss_bf16 - loss_fp32) < 0.01, (loss_fp32, loss_bf16)


def test_breastmnist_tpp_then_finetune_from_it(tmp_path):
    data, backbone = shared_data(), shared_backbone()
    assert run_cli(*recipe_args("tpp", TPP_CONFIG, backbone, data, tmp_path / "tpp", "train.max_steps=30")) == 0
    card = json.loads((tmp_path / "tpp" / "adapter" / "tpp_card.json").read_text())
    assert card["data"]["used"]["images"] == 546 and card["modality"] == "US"
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, backbone, data, tmp_path / "ft",
                                f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}", "data.label_fraction=0.1",
                                "train.max_steps=40")) == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["test"]["auroc"] > 0.55  # a working pipeline beats chance even with 55 labels


def test_mednist_npz_source_for_tpp(tmp_path):
    data, backbone = shared_data(), shared_backbone()
    assert run_cli(*recipe_args("tpp", "chest_xray/mednist_cxr_lora_tpp.yaml", backbone, data, tmp_path / "tpp",
                                "train.max_steps=3")) == 0
    card = json.loads((tmp_path / "tpp" / "adapter" / "tpp_card.json").read_text())
    assert card["modality"] == "DX" and card["data"]["classes"] == ["CXR"]
    assert card["data"]["counts"]["train"] + card["data"]["counts"]["val"] + card["data"]["counts"]["test"] == 2000


def test_short_tpp_lowers_held_out_pretext_loss(tmp_path, record_property):
    """Held-out (val) MAE loss with fixed masks: TPP adapter vs the randomly initialised adapter, which
    starts as the identity (LoRA's B = 0), i.e. the frozen backbone's own loss. Measured: 4.0% relative
    drop (benchmarks/README.md); required: half of that."""
    import torch

    from tpp.adapter_dir import WEIGHTS
    from tpp.adapter_read import read_tensors
    from tpp.backbones import load_backbone
    from tpp.builders import tensors
    from tpp.data.arrays import load_medmnist
    from tpp.model import attach_adapter, load_adapter_state
    from tpp.pretext import build_pretext

    data, backbone = shared_data(), shared_backbone()
    assert run_cli(*recipe_args("tpp", TPP_CONFIG, backbone, data, tmp_path / "tpp", "train.max_steps=60")) == 0
    encoder, info, decoder = load_backbone(str(backbone), with_decoder=True)
    attach_adapter(encoder, "lora", {"r": 8, "alpha": 16})
    pretext = build_pretext("mae", encoder, decoder).eval()
    x = tensors(load_medmnist("breastmnist", str(data)).split("val").images, info)
    noise = torch.rand(len(x), encoder.num_patches(), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        random_init = float(pretext(x, noise))
        load_adapter_state(encoder, read_tensors(tmp_path / "tpp" / "adapter", WEIGHTS), "tpp")
        pre_trained = float(pretext(x, noise))
    drop = (random_init - pre_trained) / random_init
    print(f"held-out MAE loss: random-init adapter {random_init:.4f}, TPP adapter {pre_trained:.4f}, "
          f"relative drop {drop:.1%}")
    record_property("held_out_mae_loss_relative_drop", round(drop, 4))  # in the JUnit XML report
    assert drop > 0.02


def test_dino_tpp_does_not_collapse_on_real_images():
    """30 DINO steps on BreastMNIST training images, measured on the held-out val images.

    Collapse to a few prototypes drives the entropy of the batch-mean output towards 0: without
    centering (center momentum 1) this setup measured 0.55 after 20 steps and 0.12 after 100, while
    the centred run stayed at 0.97-0.99. Uniform collapse makes every image's output the same, so the
    per-dimension std of the logits across images must stay at least half of its value at init.
    """
    import math

    import torch
    import torch.nn.functional as F

    from tpp.backbones import load_backbone
    from tpp.builders import tensors
    from tpp.data.arrays import load_medmnist
    from tpp.model import attach_adapter
    from tpp.pretext import build_pretext
    from tpp.pretext.dino import embed

    data, backbone = shared_data(), shared_backbone()
    torch.manual_seed(0)
    encoder, info, _ = load_backbone(str(backbone))
    attach_adapter(encoder, "lora", {"r": 8, "alpha": 16})
    pretext = build_pretext("dino", encoder, None)
    dataset = load_medmnist("breastmnist", str(data))
    train, held_out = tensors(dataset.split("train").images, info), tensors(dataset.split("val").images, info)

    def measure():
        pretext.eval()
        with torch.no_grad():
            logits = pretext.student(held_out)
            mean_prob = torch.softmax(logits / pretext.student_temp, -1).mean(0)
            entropy = float(-(mean_prob * mean_prob.clamp_min(1e-12).log()).sum() / math.log(len(mean_prob)))
            feature_std = float(F.normalize(embed(encoder, held_out), dim=-1).std(0).mean())
        pretext.train()
        return entropy, float(logits.std(0).mean()), feature_std

    _, logit_std_0, feature_std_0 = measure()
    optimizer = torch.optim.AdamW([p for p in pretext.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    pretext.train()
    for _ in range(30):
        loss = pretext(train[torch.randint(0, len(train), (32,), generator=gen)])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    entropy, logit_std, feature_std = measure()
    print(f"DINO after 30 steps: mean-output entropy {entropy:.3f} of max, logit std {logit_std_0:.4f} -> "
          f"{logit_std:.4f}, feature std {feature_std_0:.4f} -> {feature_std:.4f}")
    assert entropy > 0.8
    assert logit_std > 0.5 * logit_std_0
    assert feature_std > 0.9 * feature_std_0
