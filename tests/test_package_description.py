"""The package's long description (setup.cfg ``long_description = file: ...``) is what a package index page
shows, away from the repository: a relative link there (``docs/running.md``, ``CHANGELOG.md``) leads nowhere."""
import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def long_description() -> tuple[Path, str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    value = cfg["metadata"]["long_description"].strip()
    assert value.startswith("file:"), value
    path = REPO / value.removeprefix("file:").strip()
    return path, path.read_text(encoding="utf-8")


def test_the_package_description_has_no_link_that_needs_the_repository():
    path, text = long_description()
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.M)
    relative = [t for t in targets if not re.match(r"https?://", t)]
    assert not relative, f"{path.name}: links that resolve only inside the repository: {relative}"
    assert "docs/" in text and "tpp" in text.splitlines()[0]  # says where the documentation is
