"""What `tpp validate` and `tpp run multitask` refuse of a multitask config before any data or backbone is
loaded: pool keys the recipe never reads, unusable weights and learning rates, every pool problem at once."""
import pytest

from tpp.config import load_config
from tpp.errors import ConfigError
from tpp.multitask import TaskSampler
from tpp.recipes import multitask

POOL = "recipes/configs/multitask/tpp_pool.yaml"
BLOOD = "data: {source: medmnist, name: bloodmnist}"
ORGAN = "data: {source: medmnist, name: organamnist}"


def checked(*overrides):
    """The config as `tpp validate` checks it before loading anything: built, then the recipe's own check."""
    cfg = load_config(POOL, list(overrides))
    multitask.check(cfg)
    return cfg


@pytest.mark.parametrize("value", ["-1e-3", "0", ".nan", ".inf"])
def test_head_lr_must_be_a_positive_finite_number(value):
    """A negative head_lr ended in torch's raw 'Invalid learning rate' traceback; 0 fell back to train.lr."""
    with pytest.raises(ConfigError, match=r"multitask\.head_lr must be a positive finite number"):
        load_config(POOL, [f"multitask.head_lr={value}"])
    assert load_config(POOL, ["multitask.head_lr=1e-4"]).multitask.head_lr == 1e-4


@pytest.mark.parametrize("weight", [".nan", ".inf", "-.inf", "-1"])
def test_a_pool_weight_must_be_finite_and_not_negative(weight):
    """NaN passed `weight < 0`: the task was silently never visited (loss 0, the card's weight null)."""
    pool = f"pool=[{{kind: classification, weight: {weight}, {BLOOD}}}, {{kind: mae, {ORGAN}}}]"
    with pytest.raises(ConfigError, match=r"pool\[0\]\.weight must be a finite number >= 0"):
        checked(pool)
    checked(f"pool=[{{kind: classification, weight: 0, {BLOOD}}}, {{kind: mae, weight: 2.5, {ORGAN}}}]")
    with pytest.raises(ConfigError, match=r"every pool\[i\]\.weight is 0"):
        checked(f"pool=[{{kind: classification, weight: 0, {BLOOD}}}]")


@pytest.mark.parametrize("weights", [[1.0, float("nan")], [float("inf"), 1.0], [-1.0, 2.0], [0.0, 0.0]])
def test_the_sampler_refuses_weights_that_are_not_finite_and_non_negative(weights):
    with pytest.raises(ConfigError, match="finite numbers >= 0 with a positive sum"):
        TaskSampler(weights)


@pytest.mark.parametrize("key, value", [("split", "train"), ("split", "val"), ("label_fraction", 0.1),
                                        ("val_label_fraction", 0.5), ("use_eval_splits", True), ("hflip", False),
                                        ("num_workers", 2)])
def test_pool_data_keys_the_recipe_never_reads_are_refused(key, value):
    """Each task trains on its dataset's whole training split with data.hflip and data.num_workers: these keys of a
    pool entry's data were accepted, recorded and ignored."""
    pool = f"pool=[{{kind: mae, {ORGAN}}}, {{kind: classification, data: {{source: medmnist, name: bloodmnist, " \
           f"{key}: {str(value).lower()}}}}}]"
    with pytest.raises(ConfigError, match=rf"pool\[1\]\.data\.{key}=.*the multitask recipe never reads "
                                          rf"pool\[1\]\.data\.{key}"):
        checked(pool)


def test_the_saved_config_records_no_split_the_run_did_not_use_and_older_runs_still_resume(tmp_path):
    import yaml

    from tpp.recipes.resume import _defaults, check_same_config
    from tpp.errors import TppError

    cfg = checked()
    saved = cfg.to_dict()
    assert all("split" not in e["data"] and "label_fraction" not in e["data"] and "hflip" not in e["data"]
               for e in saved["pool"])
    assert saved["pool"][0]["data"]["val_fraction"] == 0.1 and saved["data"]["hflip"] is True  # what it reads
    old = {**saved, "pool": [dict(e, data=dict(e["data"], split="test", label_fraction=1.0, val_label_fraction=None,
                                                use_eval_splits=False, hflip=True, num_workers=0))
                             for e in saved["pool"]]}  # as runs before this recorded every pool entry
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_same_config(tmp_path, cfg.to_dict(), defaults=_defaults(cfg))
    old["pool"][1]["data"]["split"] = "val"  # accepted and never read then: it trained on train all the same
    old["pool"][1]["data"]["num_workers"] = 2
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_same_config(tmp_path, cfg.to_dict(), defaults=_defaults(cfg))
    old["pool"][1]["data"]["val_fraction"] = 0.3  # a key the recipe reads: it differs
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(TppError, match="differs"):
        check_same_config(tmp_path, cfg.to_dict(), defaults=_defaults(cfg))


@pytest.mark.parametrize("kind, head", [("classification", "output_mapping: flm"),
                                        ("classification", "{output_mapping: ilm, source_head: classifier}"),
                                        ("classification", "threshold: 0.5"),
                                        ("classification", "bootstrap_resamples: 0"),
                                        ("segmentation", "overlays: 2")])
def test_head_options_the_recipe_never_reads_are_refused(kind, head):
    """output_mapping=flm trained the head from a random provisional mapping (prepare_output_mapping never ran)
    while heads.json said flm; the evaluation options were accepted and ignored."""
    head = head if head.startswith("{") else f"{{{head}}}"
    key = head.strip("{}").split(":")[0]
    data = BLOOD if kind == "classification" else \
        "data: {source: seg_npz, name: toyseg, file: toyseg.npz, classes: [background, lesion], modality: US}"
    with pytest.raises(ConfigError, match=rf"pool\[0\]\.head\.{key}=.*drop it \(set {kind}\.{key} when "
                                          r"fine-tuning\)"):
        checked(f"pool=[{{kind: {kind}, head: {head}, {data}}}]")
    checked(f"pool=[{{kind: classification, head: {{output_mapping: probe, positive_class: null}}, {BLOOD}}}]")


def test_every_pool_problem_is_reported_at_once():
    """A misspelt pool key (`wieght`) was a config error, a misspelt head option of another entry only the recipe's
    check after it: fixing the first revealed the second. Now one error lists both, with the file's others."""
    pool = (f"pool=[{{kind: classification, wieght: 2, {BLOOD}}}, {{kind: mae, head: {{mask_ratoi: 0.5}}, {ORGAN}}}, "
            f"{{kind: mae, weight: .nan, data: {{source: medmnist, name: dermamnist, split: val}}}}]")
    with pytest.raises(ConfigError) as caught:
        load_config(POOL, [pool, "train.lrr=1"])
    problems = caught.value.problems
    assert len(problems) == 5, problems
    assert any("'pool[0].wieght'; did you mean pool[0].weight?" in p for p in problems)
    assert any("'pool[1].head.mask_ratoi'; did you mean pool[1].head.mask_ratio?" in p for p in problems)
    assert any(p.startswith("pool[2].weight must be a finite number") for p in problems)
    assert any(p.startswith("pool[2].data.split='val'") for p in problems)
    assert any("train.lrr" in p for p in problems)


def test_an_entry_that_did_not_build_is_not_blamed_twice():
    with pytest.raises(ConfigError) as caught:
        load_config(POOL, [f"pool=[{{kind: 5, {BLOOD}}}, {{kind: mae, data: {{source: medmnist, name: organamnist, "
                           "fil: x.npz}}]"])
    problems = caught.value.problems
    assert len(problems) == 2, problems  # no "pool[0].kind must be one of ...", no problem of pool[1]'s defaults
    assert any("'pool[0].kind' must be" in p for p in problems) and any("'pool[1].data.fil'" in p for p in problems)


@pytest.mark.parametrize("kind, data, message", [
    ("segmentation", BLOOD, r"pool\[0\]: kind segmentation needs masks, but pool\[0\]\.data\.source=medmnist has "
                            r"none \(use seg_folder or seg_npz"),
    ("classification", "data: {source: seg_npz, name: toyseg, file: toyseg.npz, classes: [background, lesion], "
                       "modality: US}", r"pool\[0\]\.data\.source=seg_npz holds segmentation masks; set "
                                        r"pool\[0\]\.kind=segmentation")])
def test_a_supervised_task_on_a_source_that_does_not_fit_it_is_refused_before_any_data_loads(kind, data, message):
    """`tpp validate` said ok; the run then failed on the loaded data, leaving a failed run folder."""
    with pytest.raises(ConfigError, match=message):
        load_config(POOL, [f"pool=[{{kind: {kind}, {data}}}, {{kind: mae, {ORGAN}}}]"])
    load_config(POOL, [f"pool=[{{kind: mae, {data}}}]"])  # a pretext reads the images of either


def _hub_classifier(path):
    """A tiny transformers ViTForImageClassification checkpoint (a hub classifier; no MAE decoder)."""
    import torch
    from conftest import TINY, _save_processor
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(**TINY, num_channels=3, num_labels=3)).save_pretrained(path)
    _save_processor(path, 3)
    return path


def test_backbone_scope_on_a_backbone_that_is_no_vit_mae_is_refused_by_validate(tmp_path, tiny_mae, capsys):
    """Scope backbone trains and saves a ViT-MAE: `tpp validate` said ok on a hub classifier, the run failed at
    once and left a failed run folder."""
    from conftest import make_medmnist
    from helpers import run_cli

    root = make_medmnist(tmp_path / "data", name="bloodmnist", classes=3, n=(24, 4, 4))
    hub = _hub_classifier(tmp_path / "hub")
    args = [f"data.root={root}", f"output_dir={tmp_path / 'out'}", f"pool=[{{kind: classification, {BLOOD}}}]",
            "multitask.eval_targets=[]"]
    assert run_cli("validate", "multitask/backbone_pool.yaml", *args, f"backbone.path={hub}") != 0
    assert "multitask.scope=backbone trains and saves a ViT-MAE checkpoint" in capsys.readouterr().err
    assert run_cli("run", "multitask", "--config", "multitask/backbone_pool.yaml", *args,
                   f"backbone.path={hub}") != 0 and not (tmp_path / "out").exists()
    assert run_cli("validate", "multitask/backbone_pool.yaml", *args, f"backbone.path={tiny_mae}") == 0, \
        capsys.readouterr().err


def test_pretrain_backbones_supervised_key_off_its_default_is_refused_in_a_multitask_pool():
    """``supervised: false`` was ignored: the entry still trained its kind (a classification head)."""
    with pytest.raises(ConfigError, match=r"pool\[0\]\.supervised: a key of pretrain_backbone's pool; multitask "
                                          r"reads kind \(a pretext, kind: mae or dino"):
        checked("pool=[{data: {source: medmnist, name: breastmnist}, kind: classification, supervised: false}]")


def test_backbone_scope_on_a_vit_mae_saved_without_its_decoder_is_refused_before_the_run(tmp_path, capsys):
    """Scope backbone saves the ViT-MAE with its decoder: on an encoder-only save, transformers' random decoder
    trained (or not) and was saved as the checkpoint's; `tpp validate` said ok."""
    from conftest import make_backbone, make_medmnist
    from helpers import run_cli

    root = make_medmnist(tmp_path / "data", name="bloodmnist", classes=3, n=(24, 4, 4))
    encoder_only = make_backbone(tmp_path / "encoder_only", "vit_mae_encoder")
    for pool in (f"[{{kind: classification, {BLOOD}}}]", f"[{{kind: mae, {BLOOD}}}]"):  # an MAE task or none
        args = [f"data.root={root}", f"output_dir={tmp_path / 'out'}", f"pool={pool}", "multitask.eval_targets=[]",
                f"backbone.path={encoder_only}"]
        assert run_cli("validate", "multitask/backbone_pool.yaml", *args) == 2
        err = capsys.readouterr().err
        assert f"backbone.path '{encoder_only}' holds no decoder weights" in err and "Traceback" not in err
        assert run_cli("run", "multitask", "--config", "multitask/backbone_pool.yaml", *args) == 2
        assert "holds no decoder weights" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert run_cli("validate", "multitask/tpp_pool.yaml", f"data.root={root}", f"pool=[{{kind: mae, {BLOOD}}}]",
                   "multitask.eval_targets=[]", f"backbone.path={encoder_only}") == 0, capsys.readouterr().err


def test_a_vit_mae_saved_without_its_decoder_loads_with_none(tmp_path, tiny_mae):
    """load_backbone gave transformers' randomly initialised decoder, which the MAE pretext then used frozen as
    the checkpoint's (pretext.decoder=auto): now it gives none, and auto trains a fresh one."""
    from conftest import make_backbone

    from tpp.backbones import has_decoder_weights, load_backbone
    from tpp.errors import TppError
    from tpp.pretext import build_pretext

    encoder_only = str(make_backbone(tmp_path / "encoder_only", "vit_mae_encoder"))
    assert (has_decoder_weights(encoder_only), has_decoder_weights(str(tiny_mae))) == (False, True)
    assert has_decoder_weights("org/a-hub-id") is None  # not readable without loading: the run decides
    encoder, _, decoder = load_backbone(encoder_only, with_decoder=True)
    assert decoder is None and load_backbone(str(tiny_mae), with_decoder=True)[2] is not None
    assert build_pretext("mae", encoder, decoder).card_entry()["decoder"].startswith("fresh")
    with pytest.raises(TppError, match="a ViT-MAE saved without its decoder weights. Use pretext.decoder=fresh"):
        build_pretext("mae", encoder, decoder, decoder="checkpoint")


def test_tpp_with_the_checkpoint_decoder_on_a_backbone_without_one_is_refused_before_the_run(tmp_path, capsys,
                                                                                              tiny_mae):
    """`tpp validate` said ok and the run failed once the backbone was loaded."""
    from conftest import make_backbone, make_medmnist
    from helpers import run_cli

    root = make_medmnist(tmp_path / "data")
    for kind in ("vit_mae_encoder", "vit"):
        backbone = make_backbone(tmp_path / kind, kind)
        args = [f"data.root={root}", f"backbone.path={backbone}", "pretext.decoder=checkpoint",
                f"output_dir={tmp_path / 'out'}"]
        assert run_cli("validate", "breast_us/mae_vit_tiny_lora_tpp.yaml", *args) == 2
        err = capsys.readouterr().err
        assert f"pretext.decoder=checkpoint needs a ViT-MAE checkpoint with its decoder weights; backbone.path " \
               f"'{backbone}'" in err and "Use pretext.decoder=fresh" in err and "Traceback" not in err
        assert run_cli("validate", "breast_us/mae_vit_tiny_lora_tpp.yaml", *args[:2], "pretext.decoder=fresh") == 0
    assert run_cli("validate", "breast_us/mae_vit_tiny_lora_tpp.yaml", f"data.root={root}",
                   f"backbone.path={tiny_mae}", "pretext.decoder=checkpoint") == 0, capsys.readouterr().err


# MedNIST's classes and their modality (../shared/data SOURCES.md: abdomen, chest and head CT, breast MRI, chest
# and hand X-rays); X-ray codes (DX, CR) count as one modality, as tpp compares them
MEDNIST_MODALITY = {"AbdomenCT": "CT", "BreastMRI": "MR", "CXR": "DX", "ChestCT": "CT", "Hand": "DX", "HeadCT": "CT"}


def test_every_shipped_mednist_section_is_tagged_with_the_modality_of_the_classes_it_reads():
    """The multi-task pools tagged the whole 6-class MedNIST file CT: its breast MRI, chest and hand X-ray images are
    not, and the tag is what the card records and the init_from modality check compares. A section reading one
    modality's classes carries its code; one reading several carries ``unknown`` (one DICOM code per dataset)."""
    import yaml

    from tpp.data import same_modality
    from tpp.recipes import shipped_configs

    seen = 0
    for path in shipped_configs():
        raw = yaml.safe_load(path.read_text())
        for data in [raw.get("data") or {}] + [entry.get("data") or {} for entry in raw.get("pool") or []]:
            if not str(data.get("file", "")).startswith("mednist/"):
                continue
            seen += 1
            modalities = {MEDNIST_MODALITY[c] for c in data.get("classes") or MEDNIST_MODALITY}
            tag = data.get("modality", "unknown")
            where = f"{path.name}: {data.get('name')}"
            assert (same_modality(tag, modalities.pop()) if len(modalities) == 1 else tag == "unknown"), where
    assert seen >= 6
