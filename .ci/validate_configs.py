"""Validate every shipped config with the installed tpp (wheel-check): ``python validate_configs.py BACKBONE``
(``--help``: the usage).

``backbone.path=BACKBONE`` is given to the configs whose recipe reads the backbone section (a pool config of
``pretrain_backbone`` makes a backbone and has none). Configs for a hospital's own data (``own_data/``) are
validated against a small labels table with PNGs made here in a temporary folder (``data.root``). Exits
non-zero at the first config that fails."""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import yaml

from tpp.cli import main
from tpp.recipes import CONFIG_DIR, shipped_configs
from tpp.recipes.registry import RECIPES


def own_site(root: Path) -> Path:
    """``root/labels.csv`` over 12 small PNGs (two labels, six patients), and the same PNGs in class folders
    ``root/scans/<label>/`` (standing in for the CT config's volumes: the wheel installs no nibabel, and a 2D
    file reads as itself whatever data.slice says): a hospital's data."""
    (root / "img").mkdir()
    rows = []
    for k in range(12):
        label = "a" if k % 2 else "b"
        image = Image.fromarray(np.full((32, 32), 20 * k, np.uint8))
        image.save(root / "img" / f"{k}.png")
        (root / "scans" / label).mkdir(parents=True, exist_ok=True)
        image.save(root / "scans" / label / f"{k}.png")
        rows.append(f"img/{k}.png,{label},P{k // 2}")
    (root / "labels.csv").write_text("path,label,patient_id\n" + "\n".join(rows) + "\n")
    return root


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="validate_configs.py",
        description="Run `tpp validate` on every config shipped with the installed tpp (recipes/configs), as the "
                    "wheel check does; stops at the first that fails (exit 1, naming it).",
        epilog="Configs whose recipe reads the backbone section get backbone.path=BACKBONE; those of own_data/ "
               "get data.root= a temporary folder of 12 small PNGs with a labels table.")
    parser.add_argument("backbone", metavar="BACKBONE",
                        help="the backbone to validate against: builtin:NAME, a checkpoint folder or a hub id")
    return parser.parse_args(argv)


def run(backbone: str) -> None:
    site = own_site(Path(tempfile.mkdtemp(prefix="tpp_own_site_")))
    for path in shipped_configs():
        recipe = yaml.safe_load(path.read_text()).get("recipe", "finetune")
        extra = [f"backbone.path={backbone}"] if "backbone" in RECIPES[recipe].sections else []
        if path.relative_to(CONFIG_DIR).parts[0] == "own_data":
            extra.append(f"data.root={site}")
        if main(["validate", str(path.relative_to(CONFIG_DIR)), *extra]) != 0:
            sys.exit(f"shipped config {path.relative_to(CONFIG_DIR)} does not validate")


if __name__ == "__main__":
    run(parse().backbone)
