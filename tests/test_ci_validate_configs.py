"""``.ci/validate_configs.py`` (the wheel check's validation of every shipped config): ``--help`` was taken for the
backbone and started validating; its one argument is still BACKBONE."""
import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO
from helpers import HANG_S

SCRIPT = REPO / ".ci" / "validate_configs.py"


def _script():
    spec = importlib.util.spec_from_file_location("validate_configs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines; validates nothing (only run as a script)
    return module


def test_help_says_the_usage_and_validates_nothing():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: validate_configs.py [-h] BACKBONE") and "tpp validate" in done.stdout
    assert "ok:" not in done.stdout + done.stderr
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 2 and "the following arguments are required: BACKBONE" in done.stderr


def test_each_shipped_config_is_validated_with_the_backbone_as_before(monkeypatch):
    from tpp.recipes import CONFIG_DIR

    script = _script()
    assert script.parse(["builtin:mae-vit-tiny-med"]).backbone == "builtin:mae-vit-tiny-med"
    configs = [CONFIG_DIR / "breast_us" / "mae_vit_tiny_lora_finetune.yaml",
               next((CONFIG_DIR / "own_data").glob("*.yaml"))]
    calls = []
    monkeypatch.setattr(script, "shipped_configs", lambda: configs)
    monkeypatch.setattr(script, "main", lambda args: calls.append(args) or 0)
    script.run("B")
    assert calls[0] == ["validate", "breast_us/mae_vit_tiny_lora_finetune.yaml", "backbone.path=B"]
    assert calls[1][:3] == ["validate", str(configs[1].relative_to(CONFIG_DIR)), "backbone.path=B"]
    assert calls[1][3].startswith("data.root=") and len(calls) == 2
    monkeypatch.setattr(script, "main", lambda args: 2)
    with pytest.raises(SystemExit, match="shipped config breast_us/mae_vit_tiny_lora_finetune.yaml does not validate"):
        script.run("B")
