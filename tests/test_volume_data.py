"""Training on 3D volumes and multi-frame files: ``data.slice`` / ``data.frame`` / ``data.window`` read one
slice (frame) of every file, as ``tpp predict --slice/--frame/--window`` does."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import finetune, nifti_bytes

from tpp.config import build_config
from tpp.data.build import load_data
from tpp.data.images import ImageError, decode, parse_slice
from tpp.errors import ConfigError, TppError


def _volumes(root, per_class: int = 10, depth: int = 7, seed: int = 0):
    """A folder of 3D NIfTI volumes (16, 16, depth) in two class folders; each volume's central slice is bright
    in one half (the class), its other slices are noise."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("normal", "lesion")):
        (root / "scans" / name).mkdir(parents=True)
        for i in range(per_class):
            volume = rng.uniform(0, 50, (16, 16, depth)).astype(np.float32)
            volume[:, 8 * k:8 * k + 8, depth // 2] += 200
            (root / "scans" / name / f"case{i}.nii.gz").write_bytes(nifti_bytes(volume, gz=True))
    return root / "scans"


def _data(root, **extra):
    return build_config({"data": {"source": "folder", "root": str(root), "file": "scans", "modality": "CT",
                                  **extra}}).data


def test_middle_is_each_volumes_central_slice_and_a_bad_spec_is_refused():
    assert parse_slice("2:middle") == (2, None) and parse_slice("0:4") == (0, 4)
    for bad in ("2:-1", "-1:3", "2:mid", "z"):
        with pytest.raises(ImageError, match="AXIS:middle"):
            parse_slice(bad)
    volume = np.arange(6 * 7 * 5, dtype=np.float32).reshape(6, 7, 5)
    assert (decode(nifti_bytes(volume), "v.nii", slice_spec="2:middle")
            == decode(nifti_bytes(volume), "v.nii", slice_spec="2:2")).all()
    assert decode(nifti_bytes(volume), "v.nii", slice_spec="0:middle").shape == (7, 5)


def test_a_folder_of_volumes_is_read_one_slice_each_and_the_card_records_how(tmp_path):
    _volumes(tmp_path)
    with pytest.raises(TppError, match=r"case0.nii.gz.*3D NIfTI volume.*AXIS:middle"):
        load_data(_data(tmp_path), 0, 16)
    data = load_data(_data(tmp_path, slice="2:middle", window="100,300"), 0, 16)
    train = data.split("train")
    images = np.asarray(train.images)
    assert images.shape == (len(train), 16, 16)
    right = images[:, :, 8:].mean(axis=(1, 2)) > images[:, :, :8].mean(axis=(1, 2))  # the central slice's bright
    assert (right == (np.array(data.class_names)[train.labels] == "lesion")).all()  # half, as its class says
    off_centre = load_data(_data(tmp_path, slice="2:0"), 0, 16).split("train").images[0]
    assert abs(float(off_centre[:, 8:].mean()) - float(off_centre[:, :8].mean())) < 40  # noise only
    assert data.describe()["reading"] == {"slice": "2:middle", "window": [100.0, 300.0]}


def test_reading_options_are_checked_with_the_config():
    with pytest.raises(ConfigError, match="data.slice"):
        build_config({"data": {"source": "folder", "file": "x", "modality": "CT", "slice": "2:mid"}})
    with pytest.raises(ConfigError, match="data.window"):
        build_config({"data": {"source": "csv", "file": "x.csv", "modality": "CT", "window": "40"}})
    with pytest.raises(ConfigError, match="data.frame"):
        build_config({"data": {"source": "unlabeled_folder", "modality": "CT", "frame": -1}})
    with pytest.raises(ConfigError, match="data.slice is an option of source csv, folder, unlabeled_folder"):
        build_config({"data": {"source": "medmnist", "slice": "2:1"}})


def test_the_shipped_ct_volume_config_fine_tunes_on_a_folder_of_volumes(tiny_mae, tmp_path, capsys):
    from helpers import FAST, run_cli

    _volumes(tmp_path)

    def run(out, *extra):
        return run_cli("run", "finetune", "--config", "own_data/ct_volumes_lora_finetune.yaml",
                       f"backbone.path={tiny_mae}", f"data.root={tmp_path}", f"output_dir={tmp_path / out}",
                       "train.max_steps=6", *FAST, *extra)

    assert run("run") == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "run" / "adapter" / "tpp_card.json").read_text())
    assert card["data"]["reading"] == {"slice": "2:middle", "window": [40.0, 400.0]}
    assert "`tpp predict --slice 2:middle --window 40,400`" in (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert run("no_slice", "data.slice=null") == 2
    assert "choose a 2D slice" in capsys.readouterr().err


def test_predict_reads_a_site_as_it_was_trained_and_warns_where_told_otherwise(tiny_mae, tmp_path, capsys):
    import csv
    import warnings

    import tpp
    from helpers import run_cli

    from tpp.serve import store

    _volumes(tmp_path)
    data = ["data.source=folder", "data.file=scans", "data.modality=CT", "data.slice=2:middle",
            "data.window=100,300"]
    assert finetune(tiny_mae, tmp_path, tmp_path / "run", *data) == 0, capsys.readouterr().err
    store.publish(tmp_path / "run" / "adapter", tmp_path / "store", "ct")
    volume = tmp_path / "scans" / "lesion" / "case3.nii.gz"

    def predict(out, *flags):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = run_cli("predict", "--backbone", str(tiny_mae), "--store", str(tmp_path / "store"), "--site",
                           "ct", "--device", "cpu", "--out", str(tmp_path / out), str(volume), *flags)
        assert code == 0, capsys.readouterr().err
        with open(tmp_path / out, newline="") as fh:
            return next(csv.DictReader(fh)), [str(w.message) for w in caught]

    default, notes = predict("default.csv")
    explicit, _ = predict("explicit.csv", "--slice", "2:middle", "--window", "100,300")
    assert default["prob_lesion"] == explicit["prob_lesion"] and not any("differs" in n for n in notes)
    other, notes = predict("other.csv", "--slice", "2:0")
    assert other["prob_lesion"] != default["prob_lesion"]
    assert any("--slice 2:0 differs from the adapter's training (--slice 2:middle)" in n for n in notes)
    model = tpp.load(tmp_path / "run" / "adapter", backbone=str(tiny_mae))
    assert f"{model.predict(str(volume))['probabilities']['lesion']:.6f}" == f"{float(default['prob_lesion']):.6f}"
    served, worker = _served(tiny_mae, tmp_path / "store", volume)
    try:
        for query, expected in (("", default), ("slice=2:0", other)):  # cold (the card read) and resident
            status, body, _ = served(query)
            assert status == 200, body
            assert f"{body['predictions'][0]['probabilities']['lesion']:.6f}" == \
                f"{float(expected['prob_lesion']):.6f}"
            assert ("warnings" in body) == bool(query) and all("differs" in w for w in body.get("warnings", []))
    finally:
        worker.stop()


def _served(backbone, store, image):
    """(a function (query string) -> (status, JSON, headers) of POST /v1/sites/ct/predict with ``image``, in this
    process; the real inference worker it runs on, to stop)."""
    from serving_fixtures import call

    from tpp.serve.bank import AdapterBank
    from tpp.serve.server import create_app
    from tpp.serve.worker import InferenceWorker

    worker = InferenceWorker(AdapterBank(str(backbone), str(store)), max_wait_ms=1)
    app = create_app(worker, str(store))
    return (lambda query: call(app, "POST", "/v1/sites/ct/predict", files=[(image.name, image.read_bytes())],
                               query=query)), worker


def test_a_forged_reading_entry_in_a_card_is_refused():
    from tpp.serve.reading import card_reading

    assert card_reading({"data": {"reading": {"slice": "2:middle", "window": [40, 400]}}}, "c") == \
        {"slice_spec": "2:middle", "window": (40.0, 400.0)}
    for bad in ({"slice": "../../x"}, {"slice": 3}, {"window": [40, 0]}, {"window": [float("nan"), 4]},
                {"frame": -2}, {"frame": True}, {"lut": "x"}, ["2:1"]):
        with pytest.raises(TppError, match="'c': data.reading"):
            card_reading({"data": {"reading": bad}}, "c")


def test_a_slice_like_2_40_stays_text_in_overrides_and_config_files(tmp_path):
    """YAML 1.1 reads 2:40 as the base-60 number 160: data.slice=2:40 was refused as 'must be str, got 160'."""
    from tpp.config import load_yaml, parse_override
    from tpp.config.parse import safe_load_unique as load_yaml_text

    assert parse_override("data.slice=2:40") == (["data", "slice"], "2:40")
    assert parse_override("data.slice=0:3") == (["data", "slice"], "0:3")
    assert parse_override("train.max_steps=20") == (["train", "max_steps"], 20)  # plain numbers stay numbers
    (tmp_path / "c.yaml").write_text("data:\n  slice: 2:40\n  window: 40,400\n")
    assert load_yaml(tmp_path / "c.yaml")["data"]["slice"] == "2:40"
    from tpp.config.paths import with_absolute_paths

    copied, _ = with_absolute_paths("data: {source: folder, slice: 2:40, root: scans}\n", tmp_path)  # tpp cp
    assert load_yaml_text(copied)["data"] == {"source": "folder", "slice": "2:40", "root": str(tmp_path / "scans")}
    _volumes(tmp_path)
    from tpp.config import apply_overrides

    data = build_config(apply_overrides({"data": {"source": "folder", "root": str(tmp_path), "file": "scans",
                                                  "modality": "CT"}}, ["data.slice=2:3"])).data
    assert data.resolved().read_options() == {"slice_spec": "2:3"}
    assert load_data(data, 0, 16).describe()["reading"] == {"slice": "2:3"}


def test_evaluate_reads_the_data_as_the_adapter_was_trained(tiny_mae, tmp_path, capsys):
    """Its own data read otherwise is refused, naming the setting (it said 'trained on another split', the split
    being the same, or evaluated other pixels silently under another data.name); other data warns."""
    import warnings

    from helpers import evaluate

    _volumes(tmp_path)
    data = ["data.source=folder", "data.file=scans", "data.modality=CT", "data.slice=2:middle"]
    assert finetune(tiny_mae, tmp_path, tmp_path / "run", *data, "data.window=100,300") == 0, capsys.readouterr().err
    adapter = tmp_path / "run" / "adapter"
    assert evaluate(tiny_mae, tmp_path, adapter, tmp_path / "same", *data, "data.window=100,300") == 0
    capsys.readouterr()
    for out, extra in (("no_window", []), ("renamed", ["data.name=other"])):
        assert evaluate(tiny_mae, tmp_path, adapter, tmp_path / out, *data, *extra) == 2
        err = capsys.readouterr().err
        assert "trained reading each file with data.window=100,300" in err and "no data.window" in err, err
        assert "Set data.window=100,300." in err and "another split" not in err
    assert evaluate(tiny_mae, tmp_path, adapter, tmp_path / "case", *data[:-1], "data.slice=2:MIDDLE",
                    "data.window=100.0,300") == 0  # the same reading, written otherwise
    _volumes(tmp_path / "site_b", seed=1)  # other data: its choice, warned about
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate(tiny_mae, tmp_path / "site_b", adapter, tmp_path / "site_b_eval", *data[:-1],
                        "data.name=site_b", "data.slice=2:0", "data.window=100,300") == 0
    assert any("data.slice=2:middle" in str(w.message) and "data.slice=2:0" in str(w.message) for w in caught)


def test_the_same_reading_written_otherwise_is_no_difference_at_predict():
    from tpp.serve.reading import with_card_reading

    trained = {"slice_spec": "2:middle", "window": (100.0, 300.0)}
    assert with_card_reading(trained, {"slice_spec": "2:MIDDLE", "window": [100, 300]})[1] == []
    assert with_card_reading(trained, {"slice_spec": None, "window": None})[0] == trained
    notes = with_card_reading(trained, {"slice_spec": "2:0", "window": (100, 250)})[1]
    assert len(notes) == 2 and "--window 100,250 differs from the adapter's training (--window 100,300)" in notes[1]


def test_a_parent_that_read_the_files_otherwise_is_refused_saying_so(tmp_path):
    from tpp.builders import check_leakage

    _volumes(tmp_path)
    parent = {"data": load_data(_data(tmp_path, slice="2:middle"), 0, 16).describe(
        labels=False, used={"splits": ["train"]})}
    check_leakage(parent, load_data(_data(tmp_path, slice="2:middle"), 0, 16), "runs/tpp/adapter")
    with pytest.raises(TppError, match=r"The parent read each file with data.slice=2:middle, this run with "
                                       r"data.slice=2:0: the same files read otherwise"):
        check_leakage(parent, load_data(_data(tmp_path, slice="2:0"), 0, 16), "runs/tpp/adapter")


def test_evaluate_refuses_its_own_data_read_with_an_option_the_adapter_was_trained_without(tmp_path):
    """An option the card does not record is one the adapter was trained without: its own data read with it are
    other pixels (data.window on volumes trained at min-max), refused as one that differs is."""
    from tpp.recipes.evaluate import check_reading

    _volumes(tmp_path)
    trained = load_data(_data(tmp_path, slice="2:middle"), 0, 16)
    card = {"data": trained.describe(labels=False)}
    check_reading(card, load_data(_data(tmp_path, slice="2:middle"), 0, 16), "runs/ft/adapter")
    with pytest.raises(TppError, match=r"trained reading each file with no data.window .* "
                                       r"data.window=40,400.*Drop data.window\."):
        check_reading(card, load_data(_data(tmp_path, slice="2:middle", window="40,400"), 0, 16), "runs/ft/adapter")


def test_a_window_of_the_wrong_type_given_at_predict_is_noted_not_a_raw_error():
    """tpp.load().predict(window="40,400") (a string, as the CLI takes it) on a site trained with a window: the
    note names it and the decoder refuses it as an ImageError, never a ValueError from formatting the note."""
    from tpp.serve.reading import with_card_reading

    for odd in ("40,400", 40, (40, "x")):
        options, notes = with_card_reading({"window": (40.0, 400.0)}, {"window": odd})
        assert options["window"] == odd and len(notes) == 1 and "--window" in notes[0]
        with pytest.raises(ImageError, match="must be a pair of numbers"):
            decode(nifti_bytes(np.zeros((8, 8, 3), np.float32)), "v.nii", slice_spec="2:middle", window=odd)


def test_a_slice_axis_beyond_a_volumes_three_is_refused_with_the_config():
    """data.slice=3:middle passed tpp validate, then every volume was refused (or skipped) as "outside the volume"
    at read time: a volume has axes 0, 1 and 2."""
    with pytest.raises(ImageError, match="AXIS 0, 1 or 2"):
        parse_slice("3:middle")
    with pytest.raises(ConfigError, match="data.slice: .*AXIS 0, 1 or 2"):
        _data("/tmp", slice="3:4")


def test_a_volume_over_the_pixel_budget_is_refused_unless_data_max_image_pixels_allows_it(tmp_path, monkeypatch):
    """A NIfTI volume is read whole: a typical CT (512x512x300) is over the default budget of 2**26 voxels; the
    shipped CT config raises it. Here the budget is lowered to this test's 16x16x7 volumes."""
    _volumes(tmp_path, per_class=5)
    small = 16 * 16 * 7 - 1
    with pytest.raises(TppError, match=r"1,792 pixels, more than the per-image limit of 1,791.*data.max_image_pixels"):
        load_data(_data(tmp_path, slice="2:middle", max_image_pixels=small), 0, 16)
    data = load_data(_data(tmp_path, slice="2:middle", max_image_pixels=small + 1), 0, 16)
    assert np.asarray(data.split("train").images).shape[1:] == (16, 16)  # read again per batch, within the budget
    with pytest.raises(ConfigError, match="data.max_image_pixels must be a positive number"):
        _data(tmp_path, max_image_pixels=0)
    shipped = build_config({"data": {"source": "folder", "modality": "CT", "max_image_pixels": 2**27}}).data
    assert shipped.resolved().pixel_limits().max_pixels == 2**27


def test_an_option_the_adapter_was_trained_without_is_noted_only_when_its_card_records_how_it_read():
    from tpp.serve.reading import with_card_reading

    given = {"frame": None, "slice_spec": None, "window": (40.0, 400.0)}
    options, notes = with_card_reading({"slice_spec": "2:middle"}, given)  # trained on volumes at min-max
    assert options == {"frame": None, "slice_spec": "2:middle", "window": (40.0, 400.0)}
    assert notes == ["--window 40,400 differs from the adapter's training (no --window): its inputs are read "
                     "otherwise than its training images were"]
    assert with_card_reading({}, given) == (given, [])  # a card of PNG training (or older): nothing to compare


def test_one_file_reading_carries_the_slice_and_the_pixel_budget_to_every_read(tmp_path):
    """The loaders take one FileReading (a source's options less their own fields): its slice and its pixel budget
    reach the check at load and the decoder that reads each batch again."""
    from tpp.data.file_reading import FileReading
    from tpp.data.folders import load_folder

    _volumes(tmp_path, per_class=5)
    options = _data(tmp_path, slice="2:middle", max_image_pixels=16 * 16 * 7).resolved()
    reading = options.file_reading()
    assert type(reading) is FileReading and reading == FileReading(slice="2:middle", max_image_pixels=16 * 16 * 7)
    data = load_folder("v", str(tmp_path), "scans", modality="CT", image_size=16, val_fraction=0.2,
                       test_fraction=0.2, reading=reading)
    assert data.reading == {"slice_spec": "2:middle"}  # what the card records: the budget is no way of reading
    train = data.split("train")
    first = tmp_path / "scans" / train.images.paths[0]
    first.write_bytes(nifti_bytes(np.zeros((16, 16, 8), np.float32), gz=True))  # one slice more than the budget
    with pytest.raises(TppError, match=r"changed or disappeared.*2,048 pixels, more than the per-image limit of 1,792"):
        train.images[0]


def _pngs(root, per_class: int = 6):
    """A folder of 8-bit PNGs in two class folders (the class: which half is bright)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("normal", "lesion")):
        (root / "scans" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 50, (16, 16)).astype(np.uint8)
            image[:, 8 * k:8 * k + 8] += 150
            Image.fromarray(image).save(root / "scans" / name / f"case{i}.png")
    return root / "scans"


def test_a_window_on_pngs_changes_nothing_so_it_is_not_recorded_and_evaluate_takes_them_either_way(tiny_mae, tmp_path,
                                                                                                    capsys):
    """data.window acts on DICOM and NIfTI intensities; a PNG holds 8-bit pixels already. Training on PNGs with a
    window warns and records no reading; evaluating the adapter's own PNGs with or without the window is accepted
    (it was refused as 'its own data would be evaluated on other pixels', the pixels being the same)."""
    from helpers import evaluate

    _pngs(tmp_path)
    data = ["data.source=folder", "data.file=scans", "data.modality=CT"]
    with pytest.warns(UserWarning, match=r"data.window acts on DICOM and NIfTI files only; none of its 12 images"):
        assert finetune(tiny_mae, tmp_path, tmp_path / "run", *data, "data.window=40,400") == 0, \
            capsys.readouterr().err
    adapter = tmp_path / "run" / "adapter"
    assert "reading" not in json.loads((adapter / "tpp_card.json").read_text())["data"]
    for out, extra in (("same", ["data.window=40,400"]), ("none", []), ("other", ["data.window=100,300"])):
        assert evaluate(tiny_mae, tmp_path, adapter, tmp_path / out, *data, *extra) == 0, capsys.readouterr().err


def test_an_option_acting_on_none_of_the_files_is_never_compared_but_one_acting_on_some_is(tmp_path):
    """A card that records a window its PNG training never applied (written before windows were recorded only where
    they act) takes its PNGs without one; a folder holding one NIfTI volume beside PNGs is windowed, so the window
    is recorded and compared."""
    from tpp.recipes.evaluate import check_reading

    _pngs(tmp_path)
    plain = load_data(_data(tmp_path), 0, 16)
    assert plain.reading is None and plain.file_formats == {"pil"}
    old_card = {"data": {**plain.describe(labels=False), "reading": {"window": [40, 400]}}}
    check_reading(old_card, plain, "runs/ft/adapter")
    (tmp_path / "scans" / "lesion" / "vol.nii.gz").write_bytes(
        nifti_bytes(np.random.default_rng(1).uniform(0, 300, (16, 16, 3)).astype(np.float32), gz=True))
    mixed = load_data(_data(tmp_path, slice="2:middle", window="40,400"), 0, 16)
    assert mixed.reading == {"slice_spec": "2:middle", "window": (40.0, 400.0)}
    assert mixed.file_formats == {"pil", "nifti"}
    card = {"data": mixed.describe(labels=False)}
    with pytest.raises(TppError, match="Set data.window=40,400"):
        check_reading(card, load_data(_data(tmp_path, slice="2:middle"), 0, 16), "runs/ft/adapter")
