"""``tpp predict`` over folders as hospitals have them: a truncated PNG, PACS-style DICOM files without a suffix,
stray non-image files, empty folders; ``--on-bad-file skip`` (default) and ``fail``."""
import csv
import warnings

import numpy as np
from PIL import Image
import pytest
from helpers import dicom_bytes, png_bytes, run_cli
from serving_fixtures import SITES, fine_tuned_sites

from tpp.serve import store


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("badfiles")
    w = fine_tuned_sites(base, {"site_a": SITES["site_a"]}, images=4)
    store.publish(w["runs"]["site_a"], base / "store", "site_a")
    return dict(w, store=base / "store")


def predict(world, *args) -> int:
    return run_cli("predict", "--backbone", world["backbone"], "--store", world["store"], "--device", "cpu", *args)


def rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def pacs_folder(world, folder):
    """Two PNGs, a truncated PNG, an extensionless DICOM (and the same file as .dcm), a stray binary file, a
    manifest (a document: left out, as training leaves it out), a hidden file."""
    (folder / "sub").mkdir(parents=True)
    good = png_bytes(world["images"][0])
    (folder / "a.png").write_bytes(good)
    (folder / "b.png").write_bytes(png_bytes(world["images"][1]))
    (folder / "broken.png").write_bytes(good[: len(good) // 2])  # cut off mid-stream, as a failed copy leaves it
    scan = dicom_bytes((np.arange(28 * 28).reshape(28, 28) * 50) % 4000)
    (folder / "sub" / "IM00001").write_bytes(scan)
    (folder / "sub" / "IM00001.dcm").write_bytes(scan)
    (folder / "stray.bin").write_bytes(b"\0not an image")
    (folder / "manifest.csv").write_text("image,patient\na.png,p1\n")
    (folder / ".DS_Store").write_bytes(b"\0\1")


def test_skip_predicts_every_good_file_finds_pacs_dicom_and_lists_the_rest(world, tmp_path, capsys):
    folder = tmp_path / "scans"
    pacs_folder(world, folder)
    out = tmp_path / "preds.csv"
    assert predict(world, "--site", "site_a", folder, "--out", out) == 0
    got = {r["image"]: r for r in rows(out)}
    assert sorted(got) == sorted(str(folder / n) for n in ("a.png", "b.png", "sub/IM00001", "sub/IM00001.dcm"))
    no_suffix, dcm = got[str(folder / "sub/IM00001")], got[str(folder / "sub/IM00001.dcm")]
    assert no_suffix["prob_malignant"] == dcm["prob_malignant"]  # read as DICOM, by its preamble
    skipped = {r["image"]: r for r in rows(tmp_path / "preds_skipped.csv")}
    assert sorted(skipped) == [str(folder / "broken.png"), str(folder / "stray.bin")]
    assert "broken.png" in skipped[str(folder / "broken.png")]["reason"]
    assert "cannot be read as an image (PNG, JPEG" in skipped[str(folder / "broken.png")]["reason"]  # not 'as pil'
    assert all(r["site"] == "site_a" and r["reason"] for r in skipped.values())
    said = capsys.readouterr()
    assert "2 input(s) skipped" in said.err and "4 images, 1 site" in said.out + said.err  # not '1 sites'

    (folder / "broken.png").unlink()
    (folder / "stray.bin").unlink()
    assert predict(world, "--site", "site_a", folder, "--out", out) == 0
    assert len(rows(out)) == 4 and not (tmp_path / "preds_skipped.csv").exists()  # no stale list of other inputs


def test_fail_stops_at_the_first_bad_file_and_writes_nothing(world, tmp_path, capsys):
    folder = tmp_path / "scans"
    pacs_folder(world, folder)
    (folder / "stray.bin").unlink()
    out = tmp_path / "preds.csv"
    assert predict(world, "--site", "site_a", folder, "--out", out, "--on-bad-file", "fail") == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--on-bad-file skip" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "preds_skipped.csv").exists()
    (folder / "broken.png").unlink()  # the manifest alone does not stop it
    assert predict(world, "--site", "site_a", folder, "--out", out, "--on-bad-file", "fail") == 0
    (folder / "stray.bin").write_bytes(b"x")  # with fail, a stray file of a folder is an error too
    assert predict(world, "--site", "site_a", folder, "--out", out, "--on-bad-file", "fail") == 2
    assert "stray.bin" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, "readme.txt"])
def test_a_folder_without_images_is_an_error_naming_it(world, tmp_path, capsys, content):
    folder = tmp_path / "empty"
    folder.mkdir()
    if content:
        (folder / content).write_text("x")
    assert predict(world, "--site", "site_a", folder, "--out", tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert f"folder '{folder}' holds no image files" in err and (content or "empty") in err
    assert predict(world, "--site", "site_a", "--out", tmp_path / "p.csv") == 2
    assert "no images given" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_nothing_readable_is_an_error_with_the_list_and_a_site_map_gap_is_skipped(world, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "p.csv"
    assert predict(world, "--site", "site_a", tmp_path / "bad.png", "--out", out) == 2
    err = capsys.readouterr().err
    assert "none of the 1 inputs could be predicted" in err and f"'{tmp_path / 'bad.png'}': " in err  # why, too
    assert not out.exists() and rows(tmp_path / "p_skipped.csv")[0]["image"] == str(tmp_path / "bad.png")
    out.write_text("image,site\nan_earlier_batch.png,site_a\n")  # another batch's predictions at --out
    assert predict(world, "--site", "site_a", tmp_path / "bad.png", "--out", out) == 2
    assert "earlier predictions at" in capsys.readouterr().err and not out.exists()

    (tmp_path / "ok.png").write_bytes(png_bytes(world["images"][2]))
    mapping = tmp_path / "map.csv"
    mapping.write_text("image,site\nok.png,site_a\ngone.png,site_a\n")
    assert predict(world, "--site-map", mapping, "--out", out) == 0
    assert [r["image"] for r in rows(out)] == [str(tmp_path / "ok.png")]
    assert [(r["image"], r["site"]) for r in rows(tmp_path / "p_skipped.csv")] == [(str(tmp_path / "gone.png"),
                                                                                     "site_a")]
    assert predict(world, "--site-map", mapping, "--out", out, "--on-bad-file", "fail") == 2
    assert "gone.png' does not exist" in capsys.readouterr().err


def test_only_columns_the_task_wrote_point_into_the_masks_folder(tmp_path):
    """An input named like a mask file ('00000_b.png', given relative) keeps its path in the image column; only
    the task's own column points into OUT_masks/."""
    from tpp.serve.predict import write_outputs

    row = {"image": "00000_b.png", "site": "s", "version": "v", "mask": "00000_b.png"}
    path, folder = write_outputs([row], {"00000_b.png": np.zeros((4, 4), np.uint8)}, str(tmp_path / "preds.csv"))
    written = rows(path)
    assert written[0]["image"] == "00000_b.png" and written[0]["mask"] == "preds_masks/00000_b.png"
    assert (folder / "00000_b.png").is_file()


def test_out_is_never_written_over_an_input(world, tmp_path, capsys):
    (tmp_path / "scan.png").write_bytes(png_bytes(world["images"][0]))
    mapping = tmp_path / "batch.csv"
    mapping.write_text(f"image,site\n{tmp_path / 'scan.png'},site_a\n")
    scan = tmp_path / "scan.png"
    for args, says in ((["--site-map", mapping, "--out", mapping], "is one of the inputs"),
                       (["--site", "site_a", scan, "--out", scan], "names an image file")):
        assert predict(world, *args) == 2
        assert says in capsys.readouterr().err
    assert mapping.read_text().startswith("image,site\n") and (tmp_path / "scan.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "linked.csv").symlink_to(mapping)  # found before any image is read, not after inference
    assert predict(world, "--site", "site_a", scan, "--out", tmp_path / "linked.csv") == 2
    assert "exists and is not a regular file" in capsys.readouterr().err and mapping.read_text().startswith("image")


def test_outputs_beside_out_replace_only_what_tpp_predict_wrote(world, tmp_path, capsys):
    """OUT_masks/ and OUT_skipped.csv used to be deleted whatever they were: a user's own study_masks/ beside
    --out study.csv, an input folder of that name, a site map named run_skipped.csv."""
    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(world["images"][0]))
    own = tmp_path / "study_masks"  # e.g. ground-truth masks of the user's
    own.mkdir()
    (own / "NOTES.txt").write_text("drawn by hand")
    assert predict(world, "--site", "site_a", scan, "--out", tmp_path / "study.csv") == 2
    assert "is no masks folder (marked by a .tpp-predict-masks file; one an older tpp" in capsys.readouterr().err
    assert predict(world, "--site", "site_a", own, "--out", tmp_path / "study.csv") == 2  # the input itself
    assert "which is an input or holds one" in capsys.readouterr().err
    mapping = tmp_path / "run_skipped.csv"
    mapping.write_text(f"image,site\n{scan},site_a\n")
    assert predict(world, "--site-map", mapping, "--out", tmp_path / "run.csv") == 2
    assert "which is an input or holds one" in capsys.readouterr().err
    mapping.rename(tmp_path / "map.csv")
    (tmp_path / "run_skipped.csv").write_text("patient,notes\np1,keep me\n")  # a user's file of that name
    assert predict(world, "--site-map", tmp_path / "map.csv", "--out", tmp_path / "run.csv") == 2
    assert "is no skipped list (first line image,site,reason)" in capsys.readouterr().err
    assert (own / "NOTES.txt").is_file() and (tmp_path / "run_skipped.csv").read_text().startswith("patient")
    assert not (tmp_path / "study.csv").exists() and not (tmp_path / "run.csv").exists()
    (tmp_path / "gone.png").unlink(missing_ok=True)  # what tpp predict wrote itself is replaced as before
    (tmp_path / "map.csv").write_text(f"image,site\n{scan},site_a\n{tmp_path / 'gone.png'},site_a\n")
    for _ in range(2):
        assert predict(world, "--site-map", tmp_path / "map.csv", "--out", tmp_path / "mine.csv") == 0
        assert len(rows(tmp_path / "mine_skipped.csv")) == 1


def test_a_masks_folder_tpp_predict_wrote_is_marked_and_replaced(tmp_path):
    from tpp.serve.predict import MASKS_MARK, write_outputs

    row = {"image": "a.png", "site": "s", "version": "v", "mask": "00000_a.png"}
    for value in (0, 1):
        _, folder = write_outputs([row], {"00000_a.png": np.full((4, 4), value, np.uint8)}, str(tmp_path / "p.csv"))
        assert (folder / MASKS_MARK).is_file() and np.asarray(Image.open(folder / "00000_a.png")).max() == value


def test_a_file_name_that_is_no_utf8_is_predicted_and_written_escaped(world, tmp_path):
    """Such a name (bytes 0xff 0xfe) used to crash the CSV write after every image was predicted, and the
    split hash of a training run."""
    import os
    from types import SimpleNamespace

    from tpp.data import Dataset

    folder = tmp_path / "scans"
    folder.mkdir()
    os.close(os.open(os.path.join(os.fsencode(folder), b"img\xff\xfe.png"), os.O_CREAT | os.O_WRONLY))
    odd = next(folder.iterdir())
    odd.write_bytes(png_bytes(world["images"][0]))
    (folder / "plain.png").write_bytes(png_bytes(world["images"][1]))
    out = tmp_path / "preds.csv"
    assert predict(world, "--site", "site_a", folder, "--out", out) == 0
    assert sorted(r["image"] for r in rows(out)) == [str(folder / "img\\xff\\xfe.png"), str(folder / "plain.png")]
    hashes = Dataset.split_files_sha256(SimpleNamespace(split_files={"train": [odd.name, "plain.png"]}))
    assert len(hashes["train"]) == 16


def test_reading_options_that_act_on_no_input_are_warned_about(world, tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(world["images"][0]))
    out = tmp_path / "preds.csv"
    with pytest.warns(UserWarning) as caught:
        assert predict(world, "--site", "site_a", folder, "--out", out, "--window", "40,400", "--frame", "0") == 0
    said = [str(w.message) for w in caught]
    assert any(s.startswith("--window acts on DICOM and NIfTI files only; none of the 1 inputs") for s in said)
    assert any(s.startswith("--frame acts on DICOM files only") for s in said) and len(rows(out)) == 1

    (folder / "IM00001").write_bytes(dicom_bytes((np.arange(28 * 28).reshape(28, 28) * 50) % 4000))
    with warnings.catch_warnings(record=True) as caught:  # a DICOM among the inputs: --window acts on it
        warnings.simplefilter("always")
        assert predict(world, "--site", "site_a", folder, "--out", out, "--window", "40,400") == 0
    assert not [w for w in caught if "--window" in str(w.message)] and len(rows(out)) == 2


def test_each_input_is_read_once_unless_only_its_content_tells_its_format(world, tmp_path, monkeypatch):
    """Every input's first bytes were read to tell its format (for the reading options' warning), also when its name
    told it, and then again whole to decode it. Now a file is read once, to decode it; only a file whose name does
    not tell its format (a PACS-style DICOM) has its header read first, once, to find it is an image."""
    from tpp.data import file_reading
    from tpp.serve import predict as predict_module

    folder = tmp_path / "scans"
    pacs_folder(world, folder)
    for bad in ("broken.png", "stray.bin"):
        (folder / bad).unlink()
    inputs = {str(folder / n): n for n in ("a.png", "b.png", "sub/IM00001", "sub/IM00001.dcm")}
    headers, decodes = {n: 0 for n in inputs.values()}, {n: 0 for n in inputs.values()}

    def counted_open(path, *args, **kwargs):
        if str(path) in inputs:
            headers[inputs[str(path)]] += 1
        return open(path, *args, **kwargs)

    def counted_read(path, *args, **kwargs):
        decodes[inputs[str(path)]] += 1
        return read(path, *args, **kwargs)

    read = predict_module.readers.read
    monkeypatch.setattr(file_reading, "open", counted_open, raising=False)  # where formats are told
    monkeypatch.setattr(predict_module.readers, "read", counted_read)
    out = tmp_path / "preds.csv"
    assert predict(world, "--site", "site_a", folder, "--out", out, "--window", "40,400", "--frame", "0") == 0
    assert len(rows(out)) == 4 and decodes == {n: 1 for n in decodes}
    assert headers == {"a.png": 0, "b.png": 0, "sub/IM00001": 1, "sub/IM00001.dcm": 0}


def test_a_dangling_link_in_a_folder_is_a_bad_file_as_in_training(world, tmp_path, capsys):
    """A link whose target moved was left out without a word (training reports it as an unreadable image)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(world["images"][0]))
    (folder / "gone.png").symlink_to(tmp_path / "moved" / "gone.png")
    (folder / "x.png").mkdir()  # a folder named like an image: searched like any sub-folder, as training does
    (folder / "x.png" / "b.png").write_bytes(png_bytes(world["images"][1]))
    out = tmp_path / "preds.csv"
    assert predict(world, "--site", "site_a", folder, "--out", out) == 0
    assert [r["image"] for r in rows(out)] == [str(folder / "a.png"), str(folder / "x.png" / "b.png")]
    (skipped,) = rows(tmp_path / "preds_skipped.csv")
    assert (skipped["image"], skipped["site"]) == (str(folder / "gone.png"), "site_a")
    assert skipped["reason"].startswith("dangling symbolic link: its target") and "1 input(s) skipped" in \
        capsys.readouterr().err
    assert predict(world, "--site", "site_a", folder, "--out", out, "--on-bad-file", "fail") == 2
    err = capsys.readouterr().err
    assert f"'{folder / 'gone.png'}': dangling symbolic link" in err and "--on-bad-file skip" in err


def test_a_site_map_row_naming_a_folder_is_named_as_one(world, tmp_path, capsys):
    (tmp_path / "ok.png").write_bytes(png_bytes(world["images"][2]))
    (tmp_path / "x.png").mkdir()
    mapping = tmp_path / "map.csv"
    mapping.write_text("image,site\nok.png,site_a\nx.png,site_a\n")
    out = tmp_path / "p.csv"
    assert predict(world, "--site-map", mapping, "--out", out) == 0
    assert [r["reason"] for r in rows(tmp_path / "p_skipped.csv")] == [
        f"listed in site map '{mapping}' but is a folder, not an image file"]
    assert predict(world, "--site-map", mapping, "--out", out, "--on-bad-file", "fail") == 2
    assert f"image '{tmp_path / 'x.png'}' is a folder, not an image file" in capsys.readouterr().err


def test_a_pipe_in_a_folder_is_listed_without_being_read(tmp_path):
    """Neither a file nor a folder (a named pipe: reading it would block): listed with its reason."""
    import os

    from tpp.serve.predict import collect

    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    os.mkfifo(tmp_path / "feed.png")
    skipped = []
    assert collect([str(tmp_path)], skipped) == [tmp_path / "a.png"]
    assert [(s.image, s.reason) for s in skipped] == [(str(tmp_path / "feed.png"),
                                                       "not a regular file (fifo)")]
