"""Validate every shipped config with the installed tpp (wheel-check): ``python validate_configs.py BACKBONE``.

``backbone.path=BACKBONE`` is given to the configs whose recipe reads the backbone section (a pool config of
``pretrain_backbone`` makes a backbone and has none). Exits non-zero at the first config that fails."""
import sys

import yaml

from tpp.cli import main
from tpp.recipes import CONFIG_DIR, shipped_configs
from tpp.recipes.registry import RECIPES

backbone = sys.argv[1]
for path in shipped_configs():
    recipe = yaml.safe_load(path.read_text()).get("recipe", "finetune")
    extra = [f"backbone.path={backbone}"] if "backbone" in RECIPES[recipe].sections else []
    if main(["validate", str(path.relative_to(CONFIG_DIR)), *extra]) != 0:
        sys.exit(f"shipped config {path.relative_to(CONFIG_DIR)} does not validate")
