"""tpp from Python, the recipes: ``tpp.finetune`` / ``tpp.pretrain_target_parameters`` / ``tpp.evaluate`` run
exactly what ``tpp run`` runs (:func:`run` is that command's entry) and return a :class:`RunResult`. Library
warnings that tpp's own calls trigger stay out of notebooks (:func:`quiet`). Everything heavy (torch,
transformers, peft) is imported inside the functions.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tpp.errors import TppError

YAML_END = r"\n?\.\.\.$"  # what safe_dump puts after a lone scalar
LIBRARIES = r"(transformers|peft|accelerate|huggingface_hub)(\.|$)"  # the modules whose warnings quiet() hides


# -- warnings ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet():
    """Within: FutureWarnings, DeprecationWarnings and UserWarnings raised inside transformers, peft, accelerate
    or huggingface_hub (where tpp calls them: e.g. peft reading transformers' deprecated
    ``is_gradient_checkpointing``) are not shown, nor transformers' "Loading weights" progress bars. Warnings
    of tpp itself, torch's and those of user code still are. Filters and bars are restored on exit."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if bars:
                hf_logging.enable_progress_bar()


# -- recipes -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    """What a recipe run left: ``run_dir`` (its folder: config.yaml, metrics.json, log ...), ``metrics`` (the
    summary ``tpp run`` prints, as in ``metrics.json``), ``adapter`` (the adapter folder the run wrote, or None:
    evaluate writes none) and ``recipe``. ``finished_before``: True when ``train.resume=auto`` found the run
    already finished (nothing was run)."""
    run_dir: Path
    metrics: dict
    adapter: Path | None
    recipe: str
    finished_before: bool = False

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float, str))}
        adapter = f"'{self.adapter}'" if self.adapter else "None"
        return f"RunResult(recipe={self.recipe!r}, run_dir='{self.run_dir}', adapter={adapter}, metrics={shown})"


def override_args(overrides: Mapping | Sequence[str] | None) -> list[str]:
    """Overrides as ``tpp run`` takes them: ``{"train.max_steps": 20}`` -> ``["train.max_steps=20"]``. Values are
    written as YAML scalars, so each parses back to the very value given (``"10"`` stays a string, ``0.1`` a
    float, a list a list). A sequence of ``key=value`` strings passes unchanged."""
    import yaml

    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise TppError(f"overrides must be a dict of dotted keys (got the string {overrides!r}); e.g. "
                       "{'train.max_steps': 20}.")
    if not isinstance(overrides, Mapping):
        if not isinstance(overrides, (list, tuple)):
            raise TppError(f"overrides must be a dict of dotted keys or a list of 'key=value' strings, got "
                           f"{overrides!r}; e.g. {{'train.max_steps': 20}}.")
        return [str(o) for o in overrides]
    args = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or "=" in key or any(not p for p in key.split(".")):
            raise TppError(f"override key {key!r} is not a dotted config key such as 'train.max_steps'.")
        try:
            text = yaml.safe_dump(_plain_value(value), default_flow_style=True, width=float("inf")).strip()
        except yaml.representer.RepresenterError:
            raise TppError(f"override {key}: a {type(value).__name__} is not a config value (use numbers, "
                           "strings, booleans, None, lists or dicts).") from None
        args.append(f"{key}={re.sub(YAML_END, '', text)}")
    return args


def _plain_value(value):
    """A path as its string, a numpy scalar as its Python number, a tuple as a list (what YAML writes)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def _config_source(config) -> Path | dict:
    """A mapping as it is, else the config file (a path, or the name of a shipped config)."""
    from tpp.recipes import find_config

    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        return find_config(config)
    raise TppError(f"config must be a dict, a YAML file or a shipped config's name, not {type(config).__name__}.")


def run(recipe: str, config, overrides: Mapping | Sequence[str] | None = None, *, output_dir=None,
        overwrite: bool = False, started: float | None = None) -> RunResult:
    """Run ``recipe`` (finetune, tpp, evaluate, pretrain_backbone) as ``tpp run`` does: this is its entry.

    ``config``: a dict, a YAML file or a shipped config's name; ``overrides``: dotted keys (a dict, or
    ``key=value`` strings); ``output_dir``: the run folder (else the config's). Everything ``tpp validate``
    checks is checked before the folder is created; errors are :class:`~tpp.errors.TppError` with one paragraph.
    ``train.resume=auto`` on a finished run raises :class:`~tpp.recipes.resume.RunFinished` (the Python functions
    return that run instead)."""
    from tpp.recipes import run_recipe

    started = time.time() if started is None else started
    args = override_args(overrides)
    if output_dir is not None:
        if any(a.startswith("output_dir=") for a in args):
            raise TppError("output_dir is given twice (as output_dir= and in overrides); give it once.")
        args += override_args({"output_dir": output_dir})  # quoted where YAML would misread it ("2024")
    with quiet():
        summary, path = run_recipe(recipe, _config_source(config), args, overwrite, started)
    return _result(recipe, path, summary)


def _result(recipe: str, path: Path, summary: dict | None, finished_before: bool = False) -> RunResult:
    path = Path(os.path.abspath(path))  # output_dir as given may be relative to the current folder
    adapter = path / "adapter"
    return RunResult(path, dict(summary or {}), adapter if adapter.is_dir() else None, recipe, finished_before)


def _run_or_finished(recipe: str, config, overrides, output_dir, overwrite) -> RunResult:
    from tpp.recipes.resume import RunFinished

    try:
        return run(recipe, config, overrides, output_dir=output_dir, overwrite=overwrite)
    except RunFinished as done:  # train.resume=auto on a finished run: that run, nothing done
        return _result(recipe, done.path, done.summary, finished_before=True)
    except TppError as exc:  # the command line's flag, said as these functions take it
        if "--overwrite" not in str(exc):
            raise
        text = str(exc).replace("pass --overwrite", "pass overwrite=True").replace("with --overwrite",
                                                                                   "with overwrite=True")
        try:
            reworded = type(exc)(text)  # the same class (ConfigError ...) where it takes one message
        except TypeError:
            reworded = TppError(text)
        raise reworded from None


def finetune(config, overrides: Mapping | None = None, *, output_dir=None, overwrite: bool = False) -> RunResult:
    """Fine-tune an adapter and a task head (``tpp run finetune``).

    ``config``: a dict, a YAML file, or a shipped config's name (``"breast_us/mae_vit_tiny_lora_finetune.yaml"``;
    ``tpp ls`` lists them). Relative paths of a file are its folder's, of a dict and of overrides the current
    folder's. ``overrides``: dotted keys, e.g. ``{"train.max_steps": 20, "data.label_fraction": 0.1}``.
    ``overwrite``: replace an earlier run in ``output_dir``. Returns a :class:`RunResult` (``.adapter`` is what
    :func:`load` and :meth:`AdapterStore.publish` take)."""
    return _run_or_finished("finetune", config, overrides, output_dir, overwrite)


def pretrain_target_parameters(config, overrides: Mapping | None = None, *, output_dir=None,
                               overwrite: bool = False) -> RunResult:
    """Target parameter pre-training: train only the adapter on unlabeled images (``tpp run tpp``); arguments
    as :func:`finetune`. Fine-tune from it with ``{"adapter.init_from": str(result.adapter)}``."""
    return _run_or_finished("tpp", config, overrides, output_dir, overwrite)


def evaluate(config, overrides: Mapping | None = None, *, adapter=None, output_dir=None,
             overwrite: bool = False) -> RunResult:
    """Evaluate a saved adapter on one split (``tpp run evaluate``); arguments as :func:`finetune`, plus
    ``adapter``: the adapter folder, run folder or :class:`RunResult` to evaluate (else ``adapter.path`` of the
    config). ``result.metrics`` holds the split's numbers."""
    if adapter is not None:
        overrides = dict(overrides or {})
        if "adapter.path" in overrides:
            raise TppError("the adapter is given twice (adapter= and adapter.path in overrides); give it once.")
        path = adapter_path(adapter)
        overrides["adapter.path"] = os.fspath(path / "adapter" if (path / "adapter").is_dir() else path)  # a run
    return _run_or_finished("evaluate", config, overrides, output_dir, overwrite)


def adapter_path(source) -> Path:
    """A :class:`RunResult`'s adapter, or a path as given."""
    if isinstance(source, RunResult):
        if source.adapter is None:
            raise TppError(f"the {source.recipe} run in '{source.run_dir}' wrote no adapter.")
        return source.adapter
    if not isinstance(source, (str, os.PathLike)):
        raise TppError(f"expected an adapter folder, a run folder or a RunResult, not {type(source).__name__}.")
    return Path(source)
