"""Paths in a config: where a relative one points.

A relative path written in a config **file** resolves against that file's folder, so a config runs the same
from any current folder; a path given on the **command line** (``key=value``) resolves against the current
folder, as a shell user expects. Both become absolute, so a run's ``config.yaml`` records where they
pointed, as the OS reads them (a ``..`` after a symbolic link leaves the link's target:
:func:`as_the_os_reads`). The keys that are paths (:data:`PATH_KEYS`): ``backbone.path`` (a local directory, or a
hub id: ``org/name`` or ``name`` that is no existing folder stays as written), ``adapter.path``,
``adapter.init_from`` and ``data.root`` (also each ``pool[i].data.root``). A data source's own file options
(``data.file`` ...) stay relative to ``data.root``. Values of the wrong type are left alone: the config
checks report them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

PATH_KEYS = (("backbone", "path"), ("adapter", "path"), ("adapter", "init_from"), ("data", "root"))


def resolve_path(value: str, base: Path, hub_ok: bool = False) -> str:
    """``value`` as an absolute path against folder ``base`` (``~`` expanded). With ``hub_ok`` a value
    shaped like a hub id (``name`` or ``org/name``, not starting with ``.``, ``/`` or ``~``) that is no
    folder under ``base`` is returned unchanged."""
    expanded, base = os.path.expanduser(value), as_the_os_reads(os.fspath(base))
    if os.path.isabs(expanded):
        return as_the_os_reads(expanded)
    candidate = as_the_os_reads(os.path.join(base, expanded))
    hub_shaped = not value.startswith((".", "~")) and value.count("/") <= 1 and "\\" not in value
    if hub_ok and hub_shaped and not os.path.exists(candidate):
        return value
    return candidate


def as_the_os_reads(path: str) -> str:
    """Absolute ``path`` without its ``.`` and ``..`` parts, naming what the OS (and a shell) opens for it: a ``..``
    right after a symbolic link leads to the parent of the link's **target**, not back to the folder holding the
    link (``os.path.normpath`` would drop ``link/..`` as text and name another file). Links elsewhere in the path
    keep their names, so a path without such a ``..`` is written as before. A ``..`` after a part that does not
    exist goes up as text (as ``normpath`` does; the OS would refuse the path)."""
    drive, rest = os.path.splitdrive(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
    if os.path.altsep:
        rest = rest.replace(os.path.altsep, os.sep)
    head = drive + os.sep
    for part in rest.split(os.sep):
        if part in ("", "."):
            continue
        if part == "..":
            if os.path.islink(head):  # the OS goes up from where the link leads
                head = os.path.realpath(head)
            head = os.path.dirname(head)
        else:
            head = os.path.join(head, part)
    return head


def resolve_paths(tree: dict, base: str | os.PathLike) -> list[str]:
    """Resolve the path keys of a raw config mapping (a file's for ``tpp cp``, a saved config.yaml's) in place against
    ``base``; returns the dotted keys changed (``pool[0].data.root`` for pool entries)."""
    base = Path(base)
    changed = _resolve_sections(tree, base, "")
    pool = tree.get("pool")
    if isinstance(pool, list):
        for i, entry in enumerate(pool):
            if isinstance(entry, dict):
                changed += _resolve_sections(entry, base, f"pool[{i}].")
    return changed


def _resolve_sections(tree: dict, base: Path, prefix: str) -> list[str]:
    changed = []
    for section, key in PATH_KEYS:
        node = tree.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(key), str) or not node[key]:
            continue
        resolved = resolve_path(node[key], base, hub_ok=(section, key) == ("backbone", "path"))
        if resolved != node[key]:
            node[key] = resolved
            changed.append(f"{prefix}{section}.{key}")
    return changed


def resolve_config_paths(cfg, file_data: dict, given: dict, file_base: str | os.PathLike) -> None:
    """Make the path keys of a built config absolute, in place: a key set on the command line (in ``given``,
    the overrides) against the current folder, one set in the file (``file_data``) against ``file_base``
    (the file's folder), a default against the current folder. Hub ids stay (``backbone.path``)."""
    cwd = os.getcwd()

    def set_in(tree, section, key) -> bool:
        return isinstance(tree, dict) and isinstance(tree.get(section), dict) and key in tree[section]

    for section, key in PATH_KEYS:
        node = getattr(cfg, section)
        value = getattr(node, key)
        if isinstance(value, str) and value:
            base = cwd if set_in(given, section, key) else file_base if set_in(file_data, section, key) else cwd
            setattr(node, key, resolve_path(value, base, hub_ok=(section, key) == ("backbone", "path")))
    pool_base = cwd if "pool" in given else file_base
    for entry in cfg.pool:
        if isinstance(entry.data.root, str) and entry.data.root:
            entry.data.root = resolve_path(entry.data.root, pool_base)


def with_absolute_paths(text: str, base: str | os.PathLike) -> tuple[str, list[str]]:
    """A config file's ``text`` (from folder ``base``) with its relative path values made absolute, for a
    copy that lives elsewhere (``tpp cp``). Each value is replaced on its own line, the line its YAML node starts
    on (:func:`_value_lines`: never a line of the same key and value in another section), so comments and layout
    stay; should a value not be found that way (flow style ...), the whole mapping is written out again.
    Returns (new text, the dotted keys rewritten)."""
    import yaml

    from tpp.config.parse import safe_load_unique as load  # as tpp reads configs (2:40 stays text)

    base = os.path.abspath(base)
    data, wanted = load(text), load(text)
    if not isinstance(data, dict):
        return text, []
    changed = resolve_paths(wanted, base)
    lines, where = text.splitlines(keepends=True), _value_lines(text, changed)
    for dotted in changed:
        if where.get(dotted) is not None:  # None (a merge key ...): the check below writes the mapping out
            lines[where[dotted]] = _rewritten(lines[where[dotted]], dotted.rsplit(".", 1)[1], _value(data, dotted),
                                              _value(wanted, dotted), base)
    text = "".join(lines)
    if changed and load(text) != wanted:  # a value the line edit missed: write the mapping out
        text = yaml.safe_dump(wanted, sort_keys=False)
    return text, changed


def _rewritten(line: str, key: str, old: str, value: str, base: str) -> str:
    """``line`` (``  KEY: OLD  # comment``, line ending kept) with ``value`` for ``old`` and a note saying so after
    its own comment; unchanged when it is not such a line (flow style, a value on the next line ...)."""
    import re

    body = line.rstrip("\r\n")
    pattern = re.compile(rf"^(\s*{re.escape(key)}:[ \t]*)(['\"]?){re.escape(old)}\2[ \t]*(#.*)?$")
    written = json.dumps(value) if _needs_quotes(value) else value
    note = f"  # tpp cp: {old!r} made absolute (it was relative to {base})"
    return pattern.sub(lambda m: m.group(1) + written + (f"  {m.group(3)}" if m.group(3) else "") + note,
                       body) + line[len(body):]


def _value_lines(text: str, dotted_keys: list[str]) -> dict[str, int | None]:
    """The line (0-based, as ``str.splitlines`` counts them: PyYAML refuses the other characters it splits at) on
    which the value of each dotted path key starts in the YAML ``text``, from its composed node; None where no node
    is found under that key's own section (a value from a merge key ``<<``)."""
    import yaml

    from tpp.config.parse import UniqueKeyLoader

    def child(node, name: str):
        if not isinstance(node, yaml.MappingNode):
            return None
        return next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == name), None)

    root, lines = yaml.compose(text, Loader=UniqueKeyLoader), {}
    for dotted in dotted_keys:
        node, rest = root, dotted
        if dotted.startswith("pool["):
            index, _, rest = dotted[5:].partition("].")
            pool = child(root, "pool")
            node = pool.value[int(index)] if isinstance(pool, yaml.SequenceNode) else None
        section, key = rest.split(".")
        value = child(child(node, section), key)
        lines[dotted] = value.start_mark.line if isinstance(value, yaml.ScalarNode) else None
    return lines


def _value(tree: dict, dotted: str) -> str:
    """The value of a dotted path key (``backbone.path``, ``pool[1].data.root``) in a raw config mapping."""
    if dotted.startswith("pool["):
        index, _, dotted = dotted[5:].partition("].")
        tree = tree["pool"][int(index)]
    section, key = dotted.split(".")
    return tree[section][key]


def _needs_quotes(value: str) -> bool:
    """Whether a path written bare in YAML would read back as something else."""
    import yaml

    from tpp.config.parse import safe_load_unique

    try:
        return safe_load_unique(value) != value
    except yaml.YAMLError:
        return True
