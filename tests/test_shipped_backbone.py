"""The default backbone ships in the package (``builtin:mae-vit-tiny-med``): its content hash is the one its
card and docs/models.md record (and ../shared's copy has, where present), the name resolves in one place and
works wherever a backbone is given, a damaged copy is refused, the wheel carries it, and without a data root
the medmnist source reads (or downloads into) the medmnist package's own folder."""
import configparser
import fnmatch
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED, make_backbone, make_medmnist
from helpers import FINETUNE_CONFIG, run_cli

import tpp.backbones as backbones
import tpp.shipped as shipped
from tpp.backbones import DEFAULT_BACKBONE, builtin_backbones, builtin_hash, load_backbone, resolve_backbone
from tpp.config import load_config
from tpp.errors import TppError
from tpp.recipes import CONFIG_DIR, shipped_configs

NAME = DEFAULT_BACKBONE.split(":", 1)[1]


def readme_hash() -> str:
    """The hash docs/models.md's "Default backbone" section records."""
    match = re.search(r"encoder hash `([0-9a-f]{64})`", (REPO / "docs" / "models.md").read_text())
    assert match, "docs/models.md records no encoder hash of the default backbone"
    return match.group(1)


def test_the_shipped_copy_hashes_as_recorded_and_as_the_shared_copy():
    encoder, info, _ = load_backbone(DEFAULT_BACKBONE)
    assert info.hash == builtin_hash(NAME) == readme_hash()
    assert info.id == DEFAULT_BACKBONE  # the name, never this machine's site-packages path
    shared = SHARED / "models" / NAME
    if (shared / "config.json").is_file():  # beside a clone with ../shared (CI): the very same weights
        assert load_backbone(str(shared))[1].hash == info.hash
        shipped = Path(resolve_backbone(DEFAULT_BACKBONE))
        assert (shipped / "model.safetensors").read_bytes() == (shared / "model.safetensors").read_bytes()


def test_the_shipped_config_carries_no_masking_trap_and_differs_from_the_shared_one_only_there():
    """Plain transformers (no tpp) gives the same CLS token and mean token for the same images on every call."""
    import torch
    from transformers import AutoModel

    folder = Path(resolve_backbone(DEFAULT_BACKBONE))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vit_mae" and config["mask_ratio"] == 0.0
    shared = SHARED / "models" / NAME / "config.json"
    if shared.is_file():
        assert {**json.loads(shared.read_text()), "mask_ratio": 0.0} == config
    model = AutoModel.from_pretrained(folder).eval()
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = (model(pixel_values=pixels).last_hidden_state for _ in range(2))
    assert first.shape == (2, 50, 192)  # CLS + all 49 patches: nothing masked
    torch.testing.assert_close(first[:, 0], second[:, 0])
    torch.testing.assert_close(first.mean(1), second.mean(1))


def test_the_name_resolves_in_one_place_and_nothing_else_changes(tmp_path):
    folder = Path(resolve_backbone(DEFAULT_BACKBONE))
    assert folder == backbones.MODELS_DIR / NAME and (folder / "model.safetensors").is_file()
    assert list(builtin_backbones()) == [NAME]
    for other in ("org/name", "name", str(tmp_path), "./builtin:x"):
        assert resolve_backbone(other) == other
    with pytest.raises(TppError, match=r"'builtin:nope' is not shipped.*builtin:mae-vit-tiny-med"):
        resolve_backbone("builtin:nope")
    with pytest.raises(TppError, match="not shipped"):
        load_backbone("builtin:nope")


def test_configs_default_to_the_builtin_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"recipe": "finetune"}))
    assert load_config(tmp_path / "c.yaml").backbone.path == DEFAULT_BACKBONE  # the schema default
    for path in shipped_configs():
        backbone = (yaml.safe_load(path.read_text()) or {}).get("backbone") or {}
        assert backbone.get("path", DEFAULT_BACKBONE) == DEFAULT_BACKBONE, path
        if "path" in backbone:
            assert load_config(path).backbone.path == DEFAULT_BACKBONE  # not made a path relative to the file


def test_validate_accepts_the_builtin_and_names_an_unknown_one(tmp_path, capsys):
    root = make_medmnist(tmp_path / "data")
    assert run_cli("validate", FINETUNE_CONFIG, f"data.root={root}") == 0
    assert run_cli("validate", FINETUNE_CONFIG, f"data.root={root}", "backbone.path=builtin:nope") != 0
    assert "'builtin:nope' is not shipped" in capsys.readouterr().err


def test_tpp_ls_lists_the_shipped_backbone(capsys):
    assert run_cli("ls") == 0
    out = capsys.readouterr().out
    assert re.search(rf"builtin:{NAME}\s+encoder hash {builtin_hash(NAME)[:12]}\.\.\. \(default\)", out)


def fake_models(tmp_path, monkeypatch, recorded: str | None) -> str:
    """A package models folder holding one tiny backbone whose card records ``recorded`` (None: no card)."""
    models = tmp_path / "models"
    make_backbone(models / "tiny")
    if recorded is not None:
        (models / "tiny" / "README.md").write_text(f"---\nencoder_hash: {recorded}\n---\n# tiny\n")
    monkeypatch.setattr(shipped, "MODELS_DIR", models)  # where builtin:NAME is looked up
    return "builtin:tiny"


def test_a_shipped_backbone_that_no_longer_hashes_as_its_card_says_is_refused(tmp_path, monkeypatch):
    name = fake_models(tmp_path, monkeypatch, "0" * 64)
    with pytest.raises(TppError, match=r"builtin:tiny.*hashes to .*not 000000000000.*damaged.*Reinstall"):
        load_backbone(name)
    good = load_backbone(str(tmp_path / "models" / "tiny"))[1].hash
    (tmp_path / "models" / "tiny" / "README.md").write_text(f"---\nencoder_hash: {good}\n---\n")
    assert load_backbone(name)[1].hash == good
    (tmp_path / "models" / "tiny" / "README.md").unlink()  # no card: the weights cannot be checked
    with pytest.raises(TppError, match=r"builtin:tiny.*no README.md card.*damaged.*Reinstall"):
        load_backbone(name)


def test_the_wheel_ships_every_file_of_the_shipped_backbones():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["tpp"].replace("\n", ",").split(",") if p.strip()]
    files = [f for f in backbones.MODELS_DIR.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {f.name for f in files}
    for file in files:
        rel = file.relative_to(REPO / "tpp").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in setup.cfg's package_data"


# -- MedMNIST without a data root ----------------------------------------------------------------------


def test_without_a_data_root_medmnist_reads_the_medmnist_package_folder(tmp_path, monkeypatch, capsys):
    from tpp.data.arrays import load_medmnist

    monkeypatch.delenv("TPP_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    make_medmnist(tmp_path / ".medmnist")
    dataset = load_medmnist("breastmnist", None)
    assert len(dataset.splits["train"].images) == 60
    assert f"reading {tmp_path / '.medmnist' / 'breastmnist.npz'}" in capsys.readouterr().err


def test_without_a_data_root_a_missing_medmnist_file_is_downloaded_there(tmp_path, monkeypatch, capsys):
    """The download itself is tested in test_medmnist_download.py (stubbed here)."""
    import tpp.data.arrays as arrays

    monkeypatch.delenv("TPP_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    calls = []

    def fake_download(name, base):
        calls.append((name, base))
        make_medmnist(base, name)
        return base / f"{name}.npz"

    monkeypatch.setattr(arrays, "download_medmnist", fake_download)
    assert len(arrays.load_medmnist("breastmnist", None).splits["test"].images) == 20
    assert calls == [("breastmnist", tmp_path / ".medmnist")]
    assert "downloading breastmnist.npz" in capsys.readouterr().err
    calls.clear()
    (tmp_path / "data").mkdir()
    with pytest.raises(TppError, match="not found under"):  # a data root that is set never downloads
        arrays.load_medmnist("breastmnist", str(tmp_path / "data"))
    assert calls == []


def test_preflight_without_a_data_root_says_how_to_get_medmnist(tmp_path, monkeypatch):
    """A downloadable file passes (the run downloads it); one tpp cannot download is a problem naming the fix."""
    from tpp.data.build import preflight

    monkeypatch.delenv("TPP_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    data = load_config(CONFIG_DIR / FINETUNE_CONFIG).data
    assert preflight(data) == []
    data.name = "dermamnist_jpeg"
    [problem] = preflight(data)
    assert "no data root" in problem and "TPP_DATA_ROOT" in problem and "no file tpp can download" in problem
    make_medmnist(tmp_path / ".medmnist", "dermamnist_jpeg")
    assert preflight(data) == []
