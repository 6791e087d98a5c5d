"""The ``tpp`` command itself: ``tpp ls`` without torch, and argparse's errors from the sub-command at fault."""
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
