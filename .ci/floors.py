"""Print the lower bound of every runtime dependency in setup.cfg as an exact pin (``name==version``; a
requirement's extras, ``ray[serve]``, are left out: constraints cannot name them).

Used by ``make floor-check``: installing with these pins tests the oldest versions the package claims to
support, all at once. torch is left out (the Makefile pins the local CPU wheel); test and benchmark tools
are left to the resolver.
"""
import configparser
import re
from pathlib import Path

RUNTIME_EXTRAS = ("serve", "dicom", "nifti")  # not ray: ray[serve] >= 2.57 needs fastapi >= 0.133, above serve's floor


def floors(setup_cfg: Path) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in RUNTIME_EXTRAS:
        lines += cfg["options.extras_require"][extra].splitlines()
    pins = []
    for line in lines:
        if not line.strip():
            continue
        match = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)", line)
        if not match:  # a requirement without a lower bound would go untested
            raise SystemExit(f"{setup_cfg}: no '>=' lower bound in requirement {line.strip()!r}")
        if match.group(1) != "torch":
            pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors(Path(__file__).resolve().parent.parent / "setup.cfg")))
