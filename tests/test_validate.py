"""`tpp validate` checks what can be checked before a run starts: the backbone resolves, the data root and
files exist, the modality is set where the source needs it, the adapter directories named exist; every
problem at once, as one message."""
from tpp.cli import main

TPP = "breast_us/mae_vit_tiny_lora_tpp.yaml"
FINETUNE = "breast_us/mae_vit_tiny_lora_finetune.yaml"


def validate(capsys, *args) -> tuple[int, str]:
    code = main(["validate", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_config_that_would_run_is_ok(tiny_mae, data_root, capsys):
    code, text = validate(capsys, TPP, f"backbone.path={tiny_mae}", f"data.root={data_root}")
    assert code == 0 and text.startswith("ok: ")


def test_every_problem_before_a_run_is_listed_at_once(tiny_mae, data_root, tmp_path, capsys):
    code, text = validate(capsys, FINETUNE, f"backbone.path={tmp_path / 'no_backbone'}",
                          f"data.root={tmp_path / 'nowhere'}", f"adapter.init_from={tmp_path / 'no_adapter'}")
    assert code == 2 and "Traceback" not in text
    assert "no_backbone' does not exist" in text and "nowhere' does not exist" in text
    assert "no_adapter' does not exist" in text


def test_hub_ids_resolve_from_the_local_cache_only_offline(data_root, capsys):
    code, text = validate(capsys, TPP, "backbone.path=someone/not-a-cached-model", f"data.root={data_root}")
    assert code == 2 and "cannot read backbone 'someone/not-a-cached-model'" in text


def test_data_files_and_modality_are_checked(tiny_mae, data_root, capsys):
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          "data.name=mystery")
    assert code == 2 and "'mystery.npz' is not in" in text
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          "data.source=folder", "data.file=scans")
    assert code == 2 and "data.file 'scans' does not exist" in text and "needs data.modality" in text
    (data_root / "scans").mkdir()
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          "data.source=folder", "data.file=scans", "data.modality=US")
    assert code == 0, text


def test_evaluate_needs_an_existing_adapter_directory(tiny_mae, data_root, tmp_path, capsys):
    code, text = validate(capsys, FINETUNE, "recipe=evaluate", f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          f"adapter.path={tmp_path / 'gone'}")
    assert code == 2 and "gone' does not exist" in text
