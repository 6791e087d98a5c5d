"""Plug-in options: a method's (``adapter``), pretext's (``pretext``), data source's (``data`` and each ``pool``
entry's data) and task's (the section named after the task) options, popped out of their section and checked by
the plug-in's own options dataclass from its registry. An option of another plug-in names the plug-in it
belongs to; a method / pretext / source switched on the command line drops the file's options for the old one
(a method that stays a part of a composed method keeps its own)."""
from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import PurePath
from typing import Any

from tpp.config.parse import build_dataclass, config_error, field_default, section_mapping
from tpp.config.schema import AdapterConfig, DataConfig, PretextConfig, RunConfig
from tpp.errors import ConfigError


def with_options(data: dict, section_name: str, problems: list[str]) -> dict:
    """The ``adapter`` / ``pretext`` section of ``data`` with the chosen method's / pretext's options checked
    (problems appended) and kept in ``options``."""
    from tpp.adapters import get_method  # registries live with the methods and the pretexts
    from tpp.pretext import get_pretext

    common_cls, key, get = ((AdapterConfig, "method", get_method) if section_name == "adapter"
                            else (PretextConfig, "name", get_pretext))
    section = section_mapping(data, section_name)
    if section_name == "adapter" and isinstance(section.get(key), (list, str)):  # [a, b], "a + b" -> "a+b"
        from tpp.adapters.compose import canonical

        section[key] = canonical(section[key]) if section[key] else ""
    chosen = section.get(key, getattr(common_cls, key))
    options_cls = get(chosen).options_cls
    if section_name == "pretext":
        drop_other_pretexts_defaults(section, chosen)
    section["options"] = _plugin_options(section, section_name, common_cls, options_cls,
                                         f"{section_name}.{key}={chosen}", _owner_hint(section, section_name, chosen),
                                         problems, others=set(_option_fields(section_name, chosen)))
    return section


def data_options(section: dict, path: str) -> dict:
    """The data section ``section`` (a copy, changed in place) with its source's options popped into ``options``,
    checked and typed by the source's options dataclass; ``path``: its key (``data``, ``pool[0].data``)."""
    from tpp.data.sources import get_source

    name = section.get("source", DataConfig.source)
    if not isinstance(name, str):
        raise ConfigError(f"config key '{path}.source' must be str, got {name!r}.")
    options_cls = get_source(name, f"{path}.source").options_cls
    section.setdefault("name", default_dataset_name(name, section))
    section["options"] = _plugin_options(section, path, DataConfig, options_cls, f"{path}.source={name}",
                                         _owner_hint(section, "data", name, path),
                                         others=set(_option_fields("data", name)))
    return section


DATA_FILE_SUFFIXES = (".npz", ".csv", ".tsv", ".txt")  # dropped from a data file's name; a folder's name stays whole


def default_dataset_name(source: str, section: dict) -> str:
    """``data.name`` when the config leaves it out: ``breastmnist`` for MedMNIST (the demo's dataset); else the
    data's own name as the config writes it: ``data.file``'s (a file without its suffix, a folder whole), else
    ``data.root``'s last part, any character but letters, digits, - and _ made _; so cards, leakage messages and the
    corruption preset never name a MedMNIST set the run did not read. The source's name when neither names it
    (no ``data.root``: the data lies at env ``TPP_DATA_ROOT``; or a root such as ``.``): never the environment's,
    as the name seeds the split (the same images would split otherwise on a machine whose data root is named
    otherwise)."""
    if source == "medmnist":
        return DataConfig.name
    return _written_name(section) or source


def _written_name(section: dict) -> str | None:
    """The name ``data.file``, else ``data.root``, of a data section gives (see :func:`default_dataset_name`)."""
    for given in (section.get("file"), section.get("root")):
        if isinstance(given, str) and given.strip():
            path = PurePath(given.strip().rstrip("/\\"))
            name = path.stem if path.suffix.lower() in DATA_FILE_SUFFIXES else path.name
            name = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")  # a name tpp uses in files and task names
            if name:
                return name
    return None


def unnamed_data(data: dict) -> list[str]:
    """A sentence for a warning per data section of the config mapping ``data`` (``data`` and each ``pool`` entry's)
    that the config does not name (no ``data.name``, and no ``data.file`` / ``data.root`` giving one) and that
    is therefore named after its source: that name seeds the split and goes into cards, and two such data
    sets share it. Only for a source that reads files under the data root (its options have ``file``); a source
    that makes its data is well named after itself."""
    from tpp.data.sources import get_source

    sections = [("data", data.get("data"))] + [(f"pool[{i}].data", entry.get("data")) for i, entry in
                                              enumerate(data.get("pool") or []) if isinstance(entry, dict)]
    found = []
    for key, section in sections:
        if not isinstance(section, dict) or "name" in section:
            continue
        source = section.get("source", DataConfig.source)
        if (source != "medmnist" and isinstance(source, str) and _written_name(section) is None
                and "file" in {f.name for f in dataclasses.fields(get_source(source).options_cls)}):
            found.append(f"{key}.name: left out, and neither {key}.file nor {key}.root names the data, so it is named "
                         f"'{source}' after its source (not after TPP_DATA_ROOT's folder, which changes with the "
                         f"machine); give {key}.name: the name seeds the split and is what cards and evaluate go by.")
    return found


def pool_entry(entry: Any, index: int) -> Any:
    """A ``pool`` entry with its data section's source options popped into ``options`` (see data_options)."""
    if isinstance(entry, dict) and "data" in entry:
        return dict(entry, data=data_options(section_mapping(entry, "data"), f"pool[{index}].data"))
    return entry


def task_options(data: dict):
    """Pop (in place) the sections named after registered tasks; the chosen task's (``task``, default
    classification) becomes its typed options. Another task's section is an error naming the task."""
    from tpp.tasks import all_tasks, get_task

    name = data.get("task", RunConfig.task)
    task = get_task(name)
    for other in all_tasks():
        section = section_mapping(data, other.name)
        data.pop(other.name, None)
        if other is task:
            options = build_dataclass(task.options_cls, section, task.name)
        elif section:
            raise ConfigError(f"config section '{other.name}' holds options of task {other.name}, but task={name}: "
                              f"set task={other.name} or drop the section.")
    return options


def switch_plugin(data: dict, given: dict, section_name: str, key: str, default: str) -> None:
    """``adapter.method=X`` / ``pretext.name=X`` / ``data.source=X`` on the command line replaces the file's
    method / pretext / source:
    the file's options were written for its own choice and are dropped (in place), its common keys
    (``adapter.init_from`` ...) stay, but for ``data.name`` of a MedMNIST source (it chose the file); options given
    on the command line are checked by X. A source's option the file sets away from its default, and the command
    line does not set again, is a ConfigError (:func:`tpp.config.checks.switched_source_problems`), never dropped
    without a word; one both sources read alike is kept (:func:`tpp.data.sources.carried_options`)."""
    section, given = data.get(section_name), given.get(section_name)
    if not isinstance(given, dict) or key not in given or not isinstance(section, dict):
        return
    old, new = section.get(key, default), given[key]
    if section_name == "adapter":  # [lora] is lora, [a, b] is a+b
        from tpp.adapters.compose import canonical

        old, new = canonical(old), canonical(new)
    if new != old:
        if section_name == "data":  # the file's source options set for the old source: an error, not dropped
            from tpp.config.checks import switched_source_problems

            problems = switched_source_problems(section, given, old, new)
            if problems:
                raise config_error(problems)
        common_cls = {"adapter": AdapterConfig, "pretext": PretextConfig, "data": DataConfig}[section_name]
        common = {f.name for f in dataclasses.fields(common_cls)} - {"options"}
        kept = {k: v for k, v in section.items() if k in common}
        if section_name == "data":  # options both sources read alike (data.slice from folder to csv) stay
            from tpp.data.sources import carried_options

            kept.update({k: v for k, v in section.items() if k in carried_options(old, new)})
        if section_name == "adapter":
            kept.update(_shared_part_options(section, common, old, new))
        if section_name == "data" and old == "medmnist":  # its name chose the MedMNIST file the run no longer reads
            kept.pop("name", None)
        data[section_name] = kept


def _shared_part_options(section: dict, common: set, old, new) -> dict:
    """The file's options of a method that stays a part when ``adapter.method`` is switched on the command line:
    ``lora`` (``r: 4``) -> ``[visual_prompt, lora]`` keeps ``lora: {r: 4}``; ``[visual_prompt, lora]`` -> ``lora``
    keeps the file's ``lora`` section flat. Other options were written for the old method and are dropped."""
    from tpp.adapters.compose import part_names

    old_parts, new_parts = part_names(old), part_names(new)
    if len(old_parts) == 1 and old_parts[0] in new_parts and len(new_parts) > 1:
        own = {k: v for k, v in section.items() if k not in common}
        return {old_parts[0]: own} if own else {}
    if len(new_parts) == 1 and new_parts[0] in old_parts and len(old_parts) > 1:
        own = section.get(new_parts[0])
        return dict(own) if isinstance(own, dict) else {}
    if len(old_parts) > 1 and len(new_parts) > 1:
        return {p: section[p] for p in set(old_parts) & set(new_parts) if isinstance(section.get(p), dict)}
    return {}


def _plugin_options(section: dict, section_name: str, common_cls, options_cls, chosen: str, hint: str = "",
                    problems: list[str] | None = None, others=frozenset()) -> dict:
    """Pop the keys of ``section`` that are not ``common_cls`` fields: the chosen method's / pretext's
    options, checked (names, types, values) by its ``options_cls``. Returns them typed (YAML's ``5e-1``
    string becomes 0.5). Problems go to ``problems`` (without it, they are raised together); an unknown
    key close to a known one suggests it, unless it is an option of another plug-in (``others``: ``hint``
    says whose)."""
    found: list[str] = []
    common = {f.name for f in dataclasses.fields(common_cls)} - {"options"}
    options = {k: section.pop(k) for k in list(section) if k not in common}
    known = {f.name for f in dataclasses.fields(options_cls)}
    foreign = []
    for key in sorted(set(options) - known):
        close = [] if key in others else difflib.get_close_matches(key, sorted(known | common), n=1)
        if close:
            found.append(f"unknown config key '{section_name}.{key}' for {chosen}; did you mean "
                         f"{section_name}.{close[0]}?")
        else:
            foreign.append(key)
    if foreign:
        found.append(
            f"unknown config key {', '.join(repr(section_name + '.' + k) for k in foreign)} for {chosen} "
            f"(its options: {', '.join(sorted(known)) or 'none'}; common keys: {', '.join(sorted(common))})." + hint)
    options = {k: v for k, v in options.items() if k in known}
    typed = build_dataclass(options_cls, options, section_name, found)  # type and value checks
    if problems is not None:
        problems.extend(found)
    elif found:
        raise config_error(found)
    return {k: getattr(typed, k) for k in options}


def _owner_hint(section: dict, section_name: str, chosen: str, path: str | None = None) -> str:
    """' pretext.dino_ema is an option of pretext dino: set pretext.name=dino.' for the first option in
    ``section`` that ``chosen`` lacks and other methods / pretexts / sources have ('' if none); ``path``: the
    section's key when it differs from ``section_name`` (``pool[0].data``)."""
    own = {f.name for p in _plugins(section_name) if p.name == chosen for f in dataclasses.fields(p.options_cls)}
    owners = _option_fields(section_name, chosen)
    kind, key_name = {"adapter": ("method", "method"), "pretext": ("pretext", "name"),
                      "data": ("source", "source")}[section_name]
    path = path or section_name
    for key in section:
        if key in owners and key not in own:
            names = sorted({name for name, _ in owners[key]})
            fix = f": set {path}.{key_name}={names[0]}" if len(names) == 1 else f" (set {path}.{key_name})"
            return f" {path}.{key} is an option of {kind} {', '.join(names)}{fix}."
    return ""


def _plugins(section_name: str) -> list:
    """The registered methods (``adapter``), pretexts (``pretext``) or data sources (``data``), each with
    ``.name`` and ``.options_cls``."""
    from tpp.adapters import all_methods
    from tpp.data.sources import all_sources
    from tpp.pretext import all_pretexts

    return {"adapter": all_methods, "pretext": all_pretexts, "data": all_sources}[section_name]()


def _option_fields(section_name: str, chosen: str) -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Option name -> [(plugin, field)] over the plugins of a section other than ``chosen``."""
    owners: dict[str, list] = {}
    for plugin in _plugins(section_name):
        if plugin.name != chosen:
            for f in dataclasses.fields(plugin.options_cls):
                owners.setdefault(f.name, []).append((plugin.name, f))
    return owners


def drop_other_pretexts_defaults(section: dict, chosen: str) -> None:
    """Remove (in place) options of pretexts other than ``chosen`` that hold their defaults: configs saved
    before pretext options were per pretext list every pretext's options. A changed value stays (an error)."""
    from tpp.pretext import get_pretext

    own = {f.name for f in dataclasses.fields(get_pretext(chosen).options_cls)}
    for key, owners in _option_fields("pretext", chosen).items():
        if key in section and key not in own and any(section[key] == field_default(f) for _, f in owners):
            del section[key]
