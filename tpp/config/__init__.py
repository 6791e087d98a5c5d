"""Configs: a YAML file plus dotted ``key=value`` overrides turned into a checked :class:`RunConfig`.

Everything is checked before any heavy work: unknown keys, wrong types and values that make no sense are
reported at once, as one :class:`ConfigError` that names the key path of each problem.

The package's modules, each importing only modules listed above it (never this ``__init__``):

- :mod:`tpp.config.schema`: the typed schema, one dataclass per section and :class:`RunConfig`; the single
  source of keys, types, defaults and help.
- :mod:`tpp.config.parse`: generic building of a dataclass from a nested dict (type checks, unknown keys,
  problem lines), ``key=value`` overrides and reading YAML.
- :mod:`tpp.config.plugins`: plug-in options (adapter methods, pretexts, data sources, tasks), checked by
  each plug-in's own options dataclass.
- :mod:`tpp.config.scope`: recipe scoping, the recipe a config runs under and the sections it may set.
- :mod:`tpp.config.checks`: value checks on a built config.
- :mod:`tpp.config.paths`: relative paths of a config file resolve against its folder, those of overrides
  against the current folder.
- this module: :func:`build_config`, :func:`load_config` and :func:`help_lines`, and the names other
  modules import from ``tpp.config``.

Precedence: ``train.max_steps`` (when set) fixes the number of optimiser steps and ``train.epochs``
is then ignored; otherwise the run lasts ``train.epochs`` passes over the training split.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import typing
import warnings
from collections.abc import Mapping

from tpp.config.checks import check_config_values, ignored_options, prompt_size_problems
from tpp.config.paths import resolve_config_paths
from tpp.config import parse
from tpp.config.parse import (build_dataclass, config_error, describe_type, field_default, free_form_dicts, load_yaml,
                              parse_override, section_mapping, unknown_key)
from tpp.config.plugins import (data_options, pool_entry, switch_plugin, task_options, with_options,
                                drop_other_pretexts_defaults, unnamed_data)
from tpp.config.schema import (MULTITASK_ENTRY_KEYS, AdapterConfig, BackboneConfig, DataConfig, ModelConfig, PoolEntry,
                               PretextConfig, RunConfig, TrainConfig)
from tpp.config.scope import ignored_keys, recipe_scope, recipe_to_run, unknown_recipe
from tpp.errors import ConfigError

__all__ = ["AdapterConfig", "BackboneConfig", "ConfigError", "DataConfig", "ModelConfig", "PoolEntry",
           "PretextConfig", "RunConfig", "TrainConfig", "apply_overrides", "build_config", "build_dataclass",
           "config_error", "drop_other_pretexts_defaults", "help_lines", "load_config", "load_yaml",
           "parse_override", "repeated_overrides", "unknown_key", "unknown_recipe"]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Dotted ``key=value`` overrides applied to a config's nested dict (in place; returned): a mapping value
    merges into the section it names, recursively (``train={lr: 1e-4}`` is ``train.lr=1e-4``), but for a
    free-form dict of the schema (``incontext.tasks``), which it replaces (:func:`tpp.config.parse.apply_overrides`).
    A section set to null (``adapter=null``) is refused where the config is built, as one left null in the file is
    (:func:`tpp.config.parse.not_a_mapping`)."""
    return parse.apply_overrides(data, overrides, free_form_dicts(RunConfig))



def repeated_overrides(overrides: list[str]) -> list[str]:
    """A sentence per config key that two of ``overrides`` set (:func:`tpp.config.parse.repeated_overrides`, with
    the schema's free-form dicts): what ``tpp run`` and ``tpp.finetune`` refuse."""
    return parse.repeated_overrides(overrides, free_form_dicts(RunConfig))


def other_recipes_pool_keys(recipe: str, raw_pool: list) -> list[str]:
    """A pool entry key of the other pool recipe: ``kind`` / ``weight`` / ``head`` / ``name`` (multitask) in a
    pretrain_backbone pool, ``supervised: false`` (pretrain_backbone) in a multitask pool. Each was ignored, so
    ``kind: mae`` still trained a supervised head."""
    found = []
    for i, raw in enumerate(raw_pool):
        if not isinstance(raw, dict):
            continue
        if recipe == "pretrain_backbone":
            found += [f"pool[{i}].{key}: a key of the multitask recipe's pool; pretrain_backbone reads data and "
                      "supervised (supervised: false trains only MAE on the entry)." for key in MULTITASK_ENTRY_KEYS
                      if key in raw]
        elif recipe == "multitask" and raw.get("supervised", True) is not True:
            found.append(f"pool[{i}].supervised: a key of pretrain_backbone's pool; multitask reads kind (a pretext, "
                         "kind: mae or dino, trains on images only).")
    return found


def build_config(data: dict, run: str | None = None) -> RunConfig:
    """Validate a nested dict (YAML + overrides) into a RunConfig for its ``recipe`` (default finetune):
    only the sections that recipe reads (``tpp.recipes.registry``), every key and type, the method's,
    pretext's, task's and data source's options (checked by their plug-ins) and the values. Every problem
    is reported at once: one ConfigError, a line each."""
    from tpp.tasks import all_tasks

    problems: list[str] = []
    data = dict(data)
    written = data.get("recipe", RunConfig.recipe)
    sections = recipe_scope(data, problems, run)
    ignored_keys(data, written, run or written, problems)
    for name in ("adapter", "pretext"):
        if name in data:
            data[name] = _collect(problems, with_options, data, name, problems)
    if "task" in sections:
        data["task_options"] = _collect(problems, task_options, data)
        for task in all_tasks():  # what task_options left after a problem
            data.pop(task.name, None)
    if "data" in sections:
        data["data"] = _collect(problems, lambda: data_options(section_mapping(data, "data"), "data"))
    built = ("adapter", "pretext", "task_options", "data")  # None: their problems are listed already
    cfg = build_dataclass(RunConfig, {k: v for k, v in data.items() if k not in built or v is not None}, "", problems)
    entries = [_collect(problems, pool_entry, entry, i) for i, entry in enumerate(cfg.pool)]
    raw_pool, cfg.pool = cfg.pool, [build_dataclass(PoolEntry, {} if entry is None else entry, f"pool[{i}]", problems)
                                    for i, entry in enumerate(entries)]
    problems += other_recipes_pool_keys(cfg.recipe, raw_pool)
    if cfg.recipe == "multitask" and cfg.pool:  # its tasks' problems (kind, weight, head ...) with the file's others
        from tpp.multitask_build import check_entries

        unbuilt = {i for i, (raw, entry) in enumerate(zip(raw_pool, entries))  # their problems are listed already
                   if (raw is not None and not isinstance(entry, dict)) or any(f"'pool[{i}].kind'" in p
                                                                                for p in problems)}
        problems += check_entries(cfg.pool, skip=unbuilt)
    check_config_values(cfg, problems)
    if problems:
        raise config_error(problems)
    return cfg


def _collect(problems: list[str], build, *args):
    """``build(*args)``; a ConfigError it raises joins ``problems`` (and None is returned)."""
    try:
        return build(*args)
    except ConfigError as exc:
        problems.extend(getattr(exc, "problems", None) or [str(exc)])
        return None


def _naming_the_file(error: ConfigError, path, overrides) -> ConfigError:
    """``error`` with the config file it is about in front (a config built in Python has none), and whether
    overrides joined it (an unknown key may be one of theirs)."""
    if path == "(dict)" or str(path) in str(error):
        return error
    named = ConfigError(f"config '{path}'{' with its overrides' if overrides else ''}: {error}")
    named.problems = getattr(error, "problems", [str(error)])
    return named


def load_config(path: str | os.PathLike | Mapping, overrides: list[str] = (), recipe: str | None = None, *,
                later_wins: bool = False) -> RunConfig:
    """YAML file + ``key=value`` overrides -> validated RunConfig for ``recipe`` (None: the config's own
    ``recipe``, which a ``recipe=...`` override may set); every problem of the file at once. A key that two
    overrides set is a ConfigError naming both (:func:`repeated_overrides`: what ``tpp run`` / ``tpp validate`` and
    ``tpp.finetune`` refuse; it is refused here, where they all load their config); ``later_wins=True`` lets the
    later one win instead, for a caller that appends its own settings to a list on purpose (the benchmarks'
    variants of a protocol: ``benchmarks/tpp_gain.py``). Records which
    adapter keys the overrides set (``cfg.adapter.explicit``). An ``adapter.method`` / ``pretext.name`` /
    ``data.source`` override that changes the method / pretext / source drops the file's options for the
    one it replaces.

    The file's ``recipe:`` must be ``recipe`` or one ``recipe`` reads (``RECIPES[recipe].reads``: evaluate
    runs from the finetune config of the run it evaluates). Such a file is checked as a config of its own
    recipe, and ``recipe`` then uses only its own sections of it (``cfg.to_dict()``).

    Paths (``backbone.path``, ``adapter.path``, ``adapter.init_from``, ``data.root``) become absolute: the
    file's against the file's folder, the overrides' against the current folder (:mod:`tpp.config.paths`).
    ``path`` may be a mapping instead (``tpp.finetune({...})``): checked like a file's contents, its relative
    paths against the current folder.

    Then a visual prompt's input size is checked against ``backbone.input_size`` (the checkpoint's config.json
    read when one of them is unset; :func:`tpp.config.checks.prompt_size_problems`)."""
    repeated = [] if later_wins else repeated_overrides(list(overrides))
    if repeated:  # the last would win without a word
        raise ConfigError("; ".join(f"override {r}" for r in repeated) + ".")
    if isinstance(path, Mapping):  # a config built in Python: its relative paths are the current folder's
        data, path, base = _plain(path), "(dict)", os.getcwd()
    else:
        data, base = load_yaml(path), os.path.dirname(os.path.realpath(path))
    try:
        given = apply_overrides({}, list(overrides))
        file_data = copy.deepcopy(data)
        recipe = recipe_to_run(path, data.get("recipe"), given.get("recipe"), recipe)
        switch_plugin(data, given, "adapter", "method", AdapterConfig.method)
        switch_plugin(data, given, "pretext", "name", PretextConfig.name)
        switch_plugin(data, given, "data", "source", DataConfig.source)
        written = data.get("recipe", recipe)
        data = apply_overrides(data, list(overrides))
        data["recipe"] = written  # the file's keys are checked against the recipe it was written for
        cfg = build_config(data, recipe)
        cfg.recipe = recipe
        resolve_config_paths(cfg, file_data, given, base)
        cfg.adapter.explicit = frozenset(given["adapter"]) if isinstance(given.get("adapter"), dict) else frozenset()
        problems = prompt_size_problems(cfg)  # needs the resolved backbone.path (and adapter.init_from)
        if problems:
            raise config_error(problems)
    except ConfigError as exc:
        raise _naming_the_file(exc, path, overrides) from None
    read = {key: value for key, value in data.items() if key in cfg.sections()}
    for message in ignored_options(cfg) + unused_overrides(given, recipe, written) + unnamed_data(read):
        warnings.warn(message, stacklevel=2)
    return cfg


def unused_overrides(given: dict, recipe: str, written: str) -> list[str]:
    """Overrides of a section the recipe run does not read, accepted because the config's own recipe reads it
    (``classification.*`` on ``tpp run evaluate`` with a finetune config): each a sentence for a warning."""
    from tpp.recipes.registry import RECIPES
    from tpp.tasks import all_tasks

    sections = set(RECIPES[recipe].sections)
    if "task" in sections:
        sections |= {t.name for t in all_tasks()}
    found = []
    for key, value in given.items():
        if key == "recipe" or key in sections:
            continue
        paths = [f"{key}.{k}" for k in value] if isinstance(value, dict) and value else [key]
        card = "; evaluate takes the task's settings from the adapter's card" if recipe == "evaluate" else ""
        found.append(f"{', '.join(paths)} on the command line is not used by the {recipe} recipe (the {key} section "
                     f"is the {written} recipe's{card}).")
    return found


def _plain(data: Mapping) -> dict:
    """A deep copy of a config mapping as YAML would give it: nested mappings as dicts, tuples as lists."""
    if isinstance(data, Mapping):
        return {key: _plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(value) for value in data]
    return copy.deepcopy(data)


def help_lines(cls=RunConfig, prefix: str = "", tag: str = "") -> list[str]:
    """One ``key (type, default): help`` line per config key, for ``tpp validate --keys``; for the whole
    RunConfig also every adapter method's, pretext's, data source's and task's options, tagged with their choice."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += help_lines(tp, f"{prefix}{f.name}.")
        elif f.name not in ("options", "task_options"):
            default = field_default(f)
            lines.append(f"{prefix}{f.name} ({describe_type(tp)}, default {default!r}){tag}: "
                         f"{f.metadata.get('help', '')}")
    if cls is RunConfig:
        from tpp.adapters import all_methods
        from tpp.pretext import all_pretexts

        for method in all_methods():
            lines += help_lines(method.options_cls, "adapter.", f" [adapter.method={method.name}]")
        for pretext in all_pretexts():
            lines += help_lines(pretext.options_cls, "pretext.", f" [pretext.name={pretext.name}]")
        from tpp.data.sources import all_sources

        for source in all_sources():
            lines += help_lines(source.options_cls, "data.", f" [data.source={source.name}]")
        from tpp.tasks import all_tasks

        for task in all_tasks():
            lines += help_lines(task.options_cls, f"{task.name}.", f" [task={task.name}]")
    return lines
