"""Generic typed-dict building: a nested dict (YAML + overrides) checked key by key against a dataclass, the
problem lines it reports (an unknown key, a wrong type), dotted ``key=value`` overrides and reading a YAML file.
Nothing here knows the config's sections (:mod:`tpp.config.schema`) or its plug-ins: the free-form dict fields
that a mapping override replaces instead of merging into are the caller's to give (:func:`free_form_dicts` of a
schema; :mod:`tpp.config` passes the config's)."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import yaml

from tpp.errors import ConfigError


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against a type annotation; returns (ok, possibly-coerced value)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is type(None):
                continue
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off as False, yes/on as True
            value = {False: "no", True: "yes"}[value]
        return value in typing.get_args(tp), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str) and _looks_float(value):  # YAML reads 1e-4 as a string
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp in (list, dict, str, bool):
        return isinstance(value, tp), value
    if origin in (list, dict):
        return isinstance(value, origin), value
    return True, value


def describe_type(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _looks_float(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def _at_path(message: str, path: str, fields) -> str:
    """A class's own check names its keys from its section (``adapter.pad``); built at a deeper ``path`` (a part
    of a composed method: ``adapter.visual_prompt``) the message names them there (``adapter.visual_prompt.pad``)."""
    root = path.split(".")[0]
    if "." not in path:
        return message
    return re.sub(rf"\b{re.escape(root)}\.({'|'.join(map(re.escape, fields))})\b", rf"{path}.\1", message)


def build_dataclass(cls, data: dict, path: str = "", problems: list[str] | None = None):
    """Build dataclass ``cls`` from a nested dict, checking every key and type (and the class's own
    ``__post_init__`` checks).

    Every unknown key and wrong type is a problem naming its dotted key path (an unknown key with a close
    known one suggests it). With a ``problems`` list they are appended to it and the keys at fault keep
    their defaults; without, they are raised together as one ConfigError.
    """
    found: list[str] = []
    if not isinstance(data, dict):
        found.append(not_a_mapping(path, data))
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in fields:
            found.append(unknown_key(key_path, fields))
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, key_path, found)
            continue
        ok, coerced = _type_ok(value, tp)
        if ok:
            kwargs[key] = coerced
        else:
            found.append(f"config key '{key_path}' must be {describe_type(tp)}, got {value!r}.")
    try:
        built = cls(**kwargs)
    except ConfigError as exc:  # the class's own value checks
        found.append(_at_path(str(exc), path, fields))
        built = cls()
    if problems is not None:
        problems.extend(found)
    elif found:
        raise config_error(found)
    return built


def unknown_key(key_path: str, known) -> str:
    """The problem line of an unknown key: the close known key if there is one, else the known keys."""
    prefix, _, key = key_path.rpartition(".")
    close = difflib.get_close_matches(key, sorted(known), n=1)
    if close:
        return f"unknown config key '{key_path}'; did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    return f"unknown config key '{key_path}'. Known keys here: {', '.join(sorted(known))}."


def config_error(problems: list[str]) -> ConfigError:
    """One ConfigError for every problem found: the problem itself, or one line each under a count
    (``.problems`` lists them)."""
    error = ConfigError(problems[0] if len(problems) == 1 else
                        f"{len(problems)} config problems:\n" + "\n".join(f"  - {p}" for p in problems))
    error.problems = list(problems)
    return error


def not_a_mapping(path: str, value) -> str:
    """The problem line of a section (``adapter``, ``train``, ``pool[0].data`` ...; ``""``: the whole config) whose
    value is no mapping, null included: in the file (``adapter:`` with every key commented out) or from an
    override (``adapter=null``), which would reset the section to its defaults without a word."""
    if not path:
        return f"config key '<root>' must be a mapping, got {type(value).__name__}."
    return (f"config key '{path}' must be a mapping, got {type(value).__name__} ({value!r}): it is a section, not a "
            f"value; set its keys ({path}.<key>=value, or {path}={{key: value}}).")


def section_mapping(data: dict, name: str) -> dict:
    """A copy of the mapping ``data[name]`` ({} when absent); anything else, null included (a section whose keys
    are all commented out, or set to null by an override), is a ConfigError (:func:`not_a_mapping`), as for every
    other section."""
    if name not in data:
        return {}
    section = data[name]
    if not isinstance(section, dict):
        raise ConfigError(not_a_mapping(name, section))
    return dict(section)


def field_default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-4'`` -> (['train', 'lr'], 0.0001). Values are parsed as YAML: a scalar, a flow list
    (``[a, b]``) or mapping (``{lr: 1e-4}``); a value that is no YAML stays the text, but for one that starts like
    a flow list or mapping (``{`` / ``[``): that is a ConfigError naming the YAML problem (quoted, it is text)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (for example train.lr=1e-4).")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key.")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw != "" else None  # noqa: S506 (a SafeLoader)
    except RepeatedKeyError as exc:  # a mapping meant (train={lr: 1, lr: 2}), not the text: say what is wrong
        raise ConfigError(f"override '{text}': key '{exc.key}' is given twice in its value; keep one.") from None
    except yaml.YAMLError as exc:
        if raw.lstrip().startswith(("{", "[")):  # a mapping or list meant (train={lr: 1): not the text
            opened = raw.lstrip()[0]
            advice = f"For text that starts with {opened}, quote it: {key}=\"'...'\"."
            if raw.endswith((":", ",")):  # train={lr: 1e-4} unquoted reaches us as 'train={lr:' and '1e-4}'
                example = "{key: value, ...}" if opened == "{" else "[a, b, ...]"
                advice = f"The shell splits an argument at its spaces: quote the whole override, '{key}={example}'."
            raise ConfigError(f"override '{text}': its value is not valid YAML: {_yaml_problem(exc)}. {advice}") \
                from None
        value = raw
    return key.split("."), value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What a YAML parser said of a one-line value, and where (``expected ',' or '}', but got '<stream end>'
    (line 1, column 7 of the value)``)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return str(exc).replace("\n", " ")
    return problem + (f" (line {mark.line + 1}, column {mark.column + 1} of the value)" if mark else "")


@functools.cache
def field_types(cls) -> dict[tuple[str, ...], Any]:
    """Every field of dataclass ``cls`` by key path (its sections' fields too, recursively) -> its type."""
    found = {}
    for f in dataclasses.fields(cls):
        tp = found[(f.name,)] = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            found.update({(f.name, *path): sub for path, sub in field_types(tp).items()})
    return found


@functools.cache
def free_form_dicts(cls) -> frozenset[tuple[str, ...]]:
    """The key paths of dataclass ``cls``'s fields (its sections' too, recursively) whose value is a free-form dict
    (annotated ``dict``), not a section of keys: a mapping override given for one replaces it whole. Of the
    config (:class:`~tpp.config.schema.RunConfig`): ``incontext.tasks`` and the ``options`` each plug-in section
    keeps its options in."""
    return frozenset(path for path, tp in field_types(cls).items() if not dataclasses.is_dataclass(tp)
                     and any(dict in (t, typing.get_origin(t)) for t in (tp, *typing.get_args(tp))))  # Optional too


def _leaves(value, path: tuple, free_form) -> list[tuple]:
    """The key paths an override's value for ``path`` sets: ``path`` for a plain value or a free-form dict, else
    each key path of a mapping's values (they merge; an empty mapping sets none)."""
    if not isinstance(value, dict) or path in free_form:
        return [path]
    return [leaf for key, sub in value.items() for leaf in _leaves(sub, (*path, key), free_form)]


def repeated_overrides(overrides: list[str], free_form: Collection[tuple] = ()) -> list[str]:
    """A sentence per key that two overrides set (``train.lr=1e-3 train.lr=1e-4``, or ``train.lr=1`` and then
    ``train={lr: 2}``): :func:`apply_overrides` would keep the last without a word. A mapping merges into a
    section, so ``train.max_steps=5 train={lr: 1e-4}`` sets two keys and is no repetition; a key inside a value that
    a later override sets whole (``train=5``, a free-form dict ``incontext.tasks={...}``: a key path in
    ``free_form``) is. An override that does not parse is left to :func:`apply_overrides` to report."""
    set_by: dict[tuple, str] = {}  # key path -> the override that set it
    found: list[str] = []
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ConfigError:
            continue
        leaves = _leaves(value, tuple(keys), free_form)
        for earlier, by in list(set_by.items()):
            clash = next((leaf for leaf in leaves if earlier[:len(leaf)] == leaf or leaf[:len(earlier)] == earlier),
                         None)  # the same key, or one inside the other
            if clash is not None:
                whole = f", which sets the whole of {_dotted(clash)}" if len(clash) < len(earlier) else ""
                found.append(f"{_dotted(earlier)} is given twice ('{by}', then '{text}'{whole}); keep one")
                del set_by[earlier]
        set_by.update({leaf: text for leaf in leaves})
    return found


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path))


def apply_overrides(data: dict, overrides: list[str], free_form: Collection[tuple] = ()) -> dict:
    """Apply dotted overrides to a nested dict (in place) and return it. A mapping value merges into the mapping
    it meets, key by key and recursively (``train={lr: 1e-4}`` is ``train.lr=1e-4``: the section's other keys
    stay); for a free-form dict (its key path in ``free_form``: :func:`free_form_dicts`) or where no mapping is,
    the value replaces what is there."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{key}' is not a section.")
        _merge(node, keys[-1], value, tuple(keys), free_form)
    return data


def _merge(node: dict, key, value, path: tuple, free_form) -> None:
    """``node[key] = value``, but a mapping merges into a mapping already there (in place, recursively) unless
    ``path`` is in ``free_form``."""
    here = node.get(key)
    if not (isinstance(value, dict) and isinstance(here, dict)) or path in free_form:
        node[key] = value
        return
    for sub_key, sub in value.items():
        _merge(here, sub_key, sub, (*path, sub_key), free_form)


# YAML 1.1 reads 2:40 as the base-60 number 160 (and 1:30.5 as 90.5): a slice AXIS:INDEX must stay text
SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")


class RepeatedKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (:class:`UniqueKeyLoader`); ``key`` names it."""

    def __init__(self, key, first, mark):
        super().__init__(None, None, f"key '{key}' is given twice (first on line {first.start_mark.line + 1}); "
                                     "keep one", mark)
        self.key = key


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (two ``train:`` sections, a repeated
    ``lr:``): plain YAML keeps the last one silently, so the first block's values would be lost without a word.
    A base-60 number (``2:40``) stays text, as YAML 1.2 reads it: ``data.slice=2:40`` is the slice, not 160."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0] and SEXAGESIMAL.match(value):
            return "tag:yaml.org,2002:str"
        return super().resolve(kind, value, implicit)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges, its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not key_node:
                raise RepeatedKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep)


def safe_load_unique(text: str):
    """``yaml.safe_load`` that refuses repeated keys (:class:`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | os.PathLike, empty_ok: bool = False) -> dict:
    """Read a YAML config file into a dict, with errors that name the file (``empty_ok``: an empty or
    comment-only file is ``{}``, for the caller to judge). A fifo, socket, device or folder is refused as
    "not a regular file" at once (:func:`tpp.data.file_kinds.open_regular`)."""
    return parse_yaml_text(read_config_text(path), path, empty_ok)


def read_config_text(path: str | os.PathLike) -> str:
    """The text of config file ``path``, read once (a fifo, socket, device or folder named, never waited on);
    a ConfigError naming the file when it is missing, unreadable or no UTF-8."""
    from tpp.data.file_kinds import read_whole_regular

    try:
        return read_whole_regular(Path(path), ConfigError, "config file ").decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"config file '{path}' does not exist. `tpp ls` lists the shipped configs.") from None
    except OSError as exc:  # no permission to read it
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror or type(exc).__name__}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text; save it as UTF-8.") from None


def parse_yaml_text(text: str, path: str | os.PathLike, empty_ok: bool = False) -> dict:
    """The mapping config file ``path`` holds as ``text`` (see :func:`load_yaml`)."""
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if data is None and empty_ok:
        return {}
    if data is None:
        raise ConfigError(f"config file '{path}' is empty (or holds only comments); start from a shipped one: "
                          "`tpp ls`, then `tpp cp NAME my.yaml`.")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {type(data).__name__}.")
    return data
