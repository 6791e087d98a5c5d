"""The ``tpp`` command itself: ``tpp ls`` without torch, and argparse's errors from the sub-command at fault."""
import numpy as np
import pytest
from helpers import run_cli, run_cli_subprocess

from tpp.catalog import LISTED, module_names, registered

AT_EXIT = ("import atexit, sys\n"  # the heavy libraries loaded when the process ends
           "atexit.register(lambda: print('loaded:', sorted({'torch', 'transformers'} & set(sys.modules))))")


def test_the_written_down_listing_equals_the_registries():
    """``tpp ls`` prints tpp.catalog's table instead of importing the registries: it must say what they hold."""
    for listed in LISTED:
        real, folder = registered(listed), module_names(listed.package)
        assert (folder, real) == (listed.modules, list(listed.entries)), (
            f"tpp/catalog.py is out of date for {listed.package}; write:\n  modules={folder!r}\n  entries="
            + "".join(f"\n    {entry!r}," for entry in real))


def test_tpp_ls_imports_no_torch():
    """It took 2-3 s, nearly all of it importing torch for the registries' summaries. In a fresh process the
    registries' folders are found without importing them too (else the table would not be trusted)."""
    done = run_cli_subprocess("ls", prelude=AT_EXIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("loaded: []"), done.stdout[-300:]
    for listed in LISTED:  # every registry's section, each entry with its summary
        section = done.stdout.split(f"\n{listed.title}:\n", 1)[1]
        for name, summary in listed.entries:
            assert f"  {name:<18} {summary}\n" in section


def test_tpp_ls_asks_the_registry_when_its_folder_holds_a_module_the_listing_does_not_know():
    """A plug-in file dropped into a registry's folder is listed: the written-down table is not used then."""
    stale = ("import dataclasses\nimport tpp.catalog as c\n"
             "c.LISTED = tuple(dataclasses.replace(x, modules=x.modules[:-1], entries=(('gone', 'stale'),)) "
             "if x.package == 'tpp.pretext' else x for x in c.LISTED)\n")
    done = run_cli_subprocess("ls", prelude=stale + AT_EXIT)
    assert done.returncode == 0, done.stderr
    assert "Self-distillation in the spirit of DINO" in done.stdout and "stale" not in done.stdout
    assert "loaded: ['torch'" in done.stdout  # the registry was imported



@pytest.mark.parametrize("argv, usage", [
    ("adapters list STORE --bogus", "tpp adapters ls"),  # an alias: argparse names the action by its name
    ("adapters publish RUN STORE --site a --bogus", "tpp adapters publish"),
    ("context publish STORE DIR --site a --bogus", "tpp context publish"),
    ("context list STORE --bogus", "tpp context list"),
    ("run finetune --config CONFIG --bogus", "tpp run"),
    ("run finetune --config CONFIG train.lr=1 not-a-key-value", "tpp run"),
    ("validate CONFIG --bogus", "tpp validate"),
    ("ls --bogus", "tpp ls"),
    ("cp A B C", "tpp cp"),
    ("predict --backbone B --out o.csv --bogus", "tpp predict"),
    ("--bogus", "tpp"),
])
def test_an_unknown_argument_shows_the_usage_of_the_command_it_was_given_to(argv, usage, capsys):
    """They printed the top-level usage (`usage: tpp [-h] [--version] ...`), which says nothing of the options."""
    with pytest.raises(SystemExit) as exited:
        run_cli(*argv.split())
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert err.startswith(f"usage: {usage} [-h]") and f"\n{usage}: error: unrecognized arguments: " in err, err


def test_max_context_below_one_is_refused_as_such(tmp_path, capsys):
    """`--max-context 0` said every set holds "more than the maximum of 0", and `tpp context check` reported each
    stored set as refused (exit 1), as if the store were at fault."""
    from helpers import png_bytes

    for name in ("a", "b"):
        (tmp_path / "ctx" / name).mkdir(parents=True)
        (tmp_path / "ctx" / name / "0.png").write_bytes(png_bytes(np.full((28, 28), 60 * len(name), np.uint8)))
    (tmp_path / "store").mkdir()
    image = tmp_path / "ctx" / "a" / "0.png"
    for argv in (["context", "publish", tmp_path / "store", tmp_path / "ctx", "--site", "s", "--max-context", "0"],
                 ["context", "check", tmp_path / "store", "--max-context", "-1"],
                 ["predict", "--backbone", "B", "--context", tmp_path / "ctx", image, "--out", tmp_path / "p.csv",
                  "--max-context", "0"]):
        assert run_cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: --max-context must be at least 1, got ") and "Traceback" not in err, err
    assert not list((tmp_path / "store").iterdir()) and not (tmp_path / "p.csv").exists()


def test_the_help_of_ls_and_compare_names_what_they_take(capsys):
    """`tpp ls --help` left out three of the registries it lists; `tpp compare --help` two recipes it compares."""
    from tpp.recipes.registry import RECIPES

    for command, named in (("ls", [x.title.split(" (")[0] for x in LISTED]), ("compare", list(RECIPES))):
        with pytest.raises(SystemExit):
            run_cli(command, "--help")
        helped = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert all(name in helped for name in named), (command, [n for n in named if n not in helped])


def parsers(parser, path=("tpp",)):
    """(command words, parser) of ``parser`` and of every sub-command below it, each once (aliases skipped)."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from parsers(sub, (*path, name))


def test_every_option_and_argument_of_every_command_says_what_it_does():
    """`tpp predict --batch-size` and `tpp serve --port` were listed in --help without a word, and so were the
    STORE / RUN_DIR arguments of `tpp adapters` and `tpp context`."""
    import argparse

    from tpp.cli import _parser

    silent = [(" ".join(path), (a.option_strings or [a.metavar or a.dest])[0]) for path, p in parsers(_parser())
              for a in p._actions if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not silent


def test_validate_keys_refuses_a_config_it_would_not_read(capsys):
    """`tpp validate --keys CONFIG` printed every key and exit 0, as if CONFIG had been checked."""
    for argv in (["--keys", "breast_us/mae_vit_tiny_lora_finetune.yaml"], ["--keys", "train.lr=1"]):
        assert run_cli("validate", *argv) == 2
        captured = capsys.readouterr()
        assert "reads no config; drop" in captured.err and argv[1] in captured.err and not captured.out
    assert run_cli("validate", "--keys") == 0 and "train.lr (float" in capsys.readouterr().out


FINETUNE = "breast_us/mae_vit_tiny_lora_finetune.yaml"


@pytest.mark.parametrize("overrides, said", [
    (["train.lr=1e-3", "train.lr=1e-4"], "override train.lr is given twice ('train.lr=1e-3', then 'train.lr=1e-4'); "
                                         "keep one."),
    (["train.lr=1e-3", "train={lr: 1e-4}"], "override train.lr is given twice ('train.lr=1e-3', then "
                                            "'train={lr: 1e-4}'); keep one."),
    (["train={lr: 1e-4}", "train.lr=1e-3"], "override train.lr is given twice ('train={lr: 1e-4}', then "
                                            "'train.lr=1e-3')"),
    (["train=5", "train.lr=1e-3"], "override train is given twice ('train=5', then 'train.lr=1e-3')"),
])
def test_an_override_given_twice_is_a_usage_error_naming_both(overrides, said, tmp_path, capsys):
    """`tpp run finetune --config X train.lr=1e-3 train.lr=1e-4` trained at 1e-4 without a word (and a section given
    after one of its keys dropped that key). Calls tpp.cli.main itself: the tests' run_cli lets a later one win."""
    from tpp.cli import main

    out, nowhere = tmp_path / "run", f"data.root={tmp_path / 'no_data'}"  # were it accepted: refused, not trained
    for argv in (["run", "finetune", "--config", FINETUNE, f"output_dir={out}", nowhere, *overrides],
                 ["run", "evaluate", overrides[0], "--config", FINETUNE, "--overwrite", overrides[1], nowhere],
                 ["validate", FINETUNE, nowhere, *overrides]):  # before, between and after options
        with pytest.raises(SystemExit) as exited:
            main(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.startswith(f"usage: tpp {argv[0]} [-h]"), err
        assert f"tpp {argv[0]}: error: {said}" in err and "Traceback" not in err, err
    assert not out.exists()


def test_overrides_that_add_to_a_section_are_no_repetition():
    from tpp.config import repeated_overrides

    assert repeated_overrides(["train={}", "train={lr: 1e-4}", "train.max_steps=5", "train={epochs: 2}",
                               "adapter.r=4", "adapter.alpha=8", "data.classes=[a, b]"]) == []
    assert repeated_overrides(["not-an-override", "train.lr=1", "=2"]) == []  # load_config says what is wrong


def test_tpp_without_a_command_lists_the_commands_on_stderr_and_exits_2(capsys):
    """It printed the help to stdout and exit 0, as if something had run (`tpp && next` went on)."""
    from tpp.cli import main

    assert main([]) == 2
    captured = capsys.readouterr()
    assert not captured.out and captured.err.startswith("usage: tpp [-h]")
    assert "\n    run " in captured.err and "\n    predict " in captured.err
    assert captured.err.rstrip().endswith("tpp: error: the following arguments are required: COMMAND")
    with pytest.raises(SystemExit) as exited:  # asked for: stdout, exit 0
        main(["--help"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("usage: tpp [-h]")


@pytest.mark.parametrize("argv, said", [
    ("run finetune --config CONFIG output_dir=x --overwrite --resume",
     "unrecognized arguments: --resume (to continue a run, add the override train.resume=auto)"),
    ("validate CONFIG --train.lr=1e-4", "unrecognized arguments: --train.lr=1e-4 (overrides take no dashes: "
                                        "train.lr=1e-4)"),
    ("run finetune --config CONFIG train.lr=1 lr", "unrecognized arguments: lr (overrides look like key=value"),
    ("run", "the following arguments are required: recipe, --config\n"),
])
def test_a_usage_error_of_run_names_only_what_is_wrong_and_what_to_give(argv, said, capsys):
    """The valid overrides given with an unknown option were listed as unrecognized too (`unrecognized arguments:
    output_dir=x --resume`), `--resume` said nothing of train.resume, and `tpp run` called the overrides required."""
    with pytest.raises(SystemExit) as exited:
        run_cli(*argv.split())
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"error: {said}" in err, err


def test_every_action_of_adapters_and_context_has_examples_in_its_help():
    """`tpp adapters publish --help` (and every other action's) showed no example; only `tpp adapters --help` did."""
    from tpp.cli import _parser

    import re

    missing = [" ".join(path) for path, p in parsers(_parser()) if len(path) > 1
               and not re.search(rf"examples:\n(.*\n)*.*{' '.join(path)}(\s|$)", p.epilog or "")]
    assert not missing


@pytest.mark.parametrize("processes", [[], ["--num-processes", "2"]])
def test_overwrite_with_train_resume_is_refused_not_ignored(processes, tmp_path, capsys):
    """--overwrite beside train.resume was dropped without a word (the resume went on, or a finished run said
    'to train it again, ... pass --overwrite' to a command that had passed it); under --num-processes each worker
    would have said so. Refused before anything else, naming both."""
    from tpp.cli import main

    out = tmp_path / "run"
    argv = ["run", "finetune", "--config", FINETUNE, *processes, "--overwrite", "train.resume=auto",
            f"output_dir={out}", f"data.root={tmp_path / 'no_data'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.resume=auto with --overwrite:") and "give one of them" in err, err
    assert "launching" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("argv, said", [
    (["run", "finetune", "--config", FINETUNE, "--config", "breast_us/mae_vit_tiny_lora_tpp.yaml", "data.root=/none"],
     f"argument --config: given twice ('{FINETUNE}', then 'breast_us/mae_vit_tiny_lora_tpp.yaml'); keep one."),
    (["run", "finetune", "--num-processes", "2", "--config", FINETUNE, "--num-processes=1", "data.root=/none"],
     "argument --num-processes: given twice ('2', then '1'); keep one."),
    (["compare", "runs/a", "--csv", "a.csv", "--csv", "b.csv"], "argument --csv: given twice"),
    (["plot", "runs/a", "--out", "a.png", "--out=b.png"], "argument --out: given twice"),
])
def test_an_option_given_twice_is_a_usage_error_naming_both(argv, said, tmp_path, capsys):
    """`tpp run finetune --config a.yaml --config b.yaml` ran b.yaml without a word, as an override given twice
    did before it was refused."""
    from tpp.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"tpp {argv[0]}: error: {said}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("override, said", [
    ("train={lr: 1e-3, lr: 1e-4}", "key 'lr' is given twice in its value; keep one."),
    ("adapter={method: lora, lora: {r: 2, r: 4}}", "key 'r' is given twice in its value; keep one."),
])
def test_a_key_given_twice_inside_an_overrides_value_is_named(override, said, capsys):
    """The value did not parse as YAML (a key given twice) and was taken as the text itself, so the error said
    `config key 'train' must be a mapping, got str`, hiding the repeated key."""
    from tpp.cli import main

    assert main(["validate", FINETUNE, "data.root=/none", override]) == 2
    err = capsys.readouterr().err
    assert f"override '{override}': {said}" in err and "must be a mapping" not in err, err
