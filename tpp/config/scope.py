"""Recipe scoping: the recipe a config file runs under, and the sections that recipe reads
(``tpp.recipes.registry``). A key of a section the recipe does not read is a problem naming the recipes
that read it."""
from __future__ import annotations

import dataclasses
import difflib
import typing

from tpp.config.parse import unknown_key
from tpp.config.schema import RunConfig
from tpp.errors import ConfigError


def recipe_to_run(path, written, asked, recipe: str | None) -> str:
    """The recipe a config file runs under: ``recipe`` (``tpp run RECIPE``), else a ``recipe=`` override,
    else the file's ``recipe:`` (``written``; absent: the recipe run). A ConfigError when the file was written
    for a recipe that ``recipe`` does not read."""
    from tpp.recipes.registry import RECIPES

    if recipe is not None and asked is not None and asked != recipe:
        raise ConfigError(f"recipe={asked} on the command line, but the recipe run is {recipe}.")
    recipe = recipe or asked or written or RunConfig.recipe
    for name in (recipe, written):
        if name is not None and (not isinstance(name, str) or name not in RECIPES):
            raise ConfigError(f"config '{path}': {unknown_recipe(name)}")
    if written is None or written == recipe or written in RECIPES[recipe].reads:
        return recipe
    runs_from = " or ".join((recipe, *RECIPES[recipe].reads))
    raise ConfigError(f"config '{path}' is written for the {written} recipe (recipe: {written}), not {recipe}: run "
                      f"it with `tpp run {written}`, or give the {recipe} recipe a {runs_from} config.")


def recipe_scope(data: dict, problems: list[str], run: str | None = None) -> tuple[str, ...]:
    """The sections the config's recipe reads. Every other top-level key is dropped (in place) as a problem:
    one that names the recipe (and those that read it), or, for a key no recipe reads, an unknown key.
    ``run``: the recipe run from a config written for another it reads (evaluate from a finetune config); its
    own sections (``evaluate``) are accepted too."""
    from tpp.recipes.registry import RECIPES
    from tpp.tasks import all_tasks

    recipe = data.get("recipe", RunConfig.recipe)
    if not isinstance(recipe, str) or recipe not in RECIPES:
        problems.append(unknown_recipe(recipe))
        data.pop("recipe")
        return tuple(f.name for f in dataclasses.fields(RunConfig))
    sections, tasks = RECIPES[recipe].sections, {t.name for t in all_tasks()}
    if run in RECIPES and recipe in RECIPES[run].reads:
        sections = tuple(dict.fromkeys(sections + RECIPES[run].sections))
    known = set(sections) | (tasks if "task" in sections else set())
    hints = typing.get_type_hints(RunConfig)
    for key in [k for k in data if k not in known]:
        value = data.pop(key)
        users = [name for name, r in RECIPES.items() if key in r.sections or (key in tasks and "task" in r.sections)]
        if not users:
            problems.append(unknown_key(str(key), known))
            continue
        paths = [f"{key}.{k}" for k in value] if isinstance(value, dict) and value else [key]
        what = f"the {key} section" if key in tasks or dataclasses.is_dataclass(hints.get(key)) else key
        readers = " and ".join([", ".join(users[:-1]), users[-1]] if len(users) > 1 else users)
        problems.append(f"{', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}: the {recipe} recipe does not "
                        f"use {what} ({readers} {'does' if len(users) == 1 else 'do'}).")
    return sections


def ignored_keys(data: dict, written: str, run: str, problems: list[str]) -> None:
    """A key the recipe never reads (``Recipe.ignores``), set to anything but its default, is a problem naming
    the recipe. A file written for another recipe (evaluate reading a finetune config) is checked against
    the keys both ignore."""
    from tpp.recipes.registry import RECIPES

    if written not in RECIPES or run not in RECIPES:
        return
    ignored = set(RECIPES[written].ignores) & set(RECIPES[run].ignores)
    for dotted in sorted(ignored):
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            cls = typing.get_type_hints(RunConfig)[section]
            field = next(f for f in dataclasses.fields(cls) if f.name == key)
            if data[section][key] != field.default:
                readers = [name for name, r in RECIPES.items() if dotted not in r.ignores and section in r.sections]
                problems.append(f"{dotted}={data[section][key]!r}: the {run} recipe does not use {dotted} "
                                f"({' and '.join(readers)} {'does' if len(readers) == 1 else 'do'}); drop it.")


def unknown_recipe(name) -> str:
    """The problem line of a ``recipe`` no recipe has (with a close one suggested)."""
    from tpp.recipes.registry import RECIPES

    close = difflib.get_close_matches(str(name), list(RECIPES), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"recipe: unknown recipe {name!r}; {hint}recipes: {', '.join(RECIPES)} (`tpp ls`)."
