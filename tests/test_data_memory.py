"""Memory of the data bookkeeping stays small per image: a folder's dataset holds its file paths packed (a
few numpy buffers), not a Python string per image, and predictions.csv is written in chunks. The benchmark
``benchmarks/data_scale.py scale`` measures peak RSS over 1k-50k images; these tests fail the moment a list
of per-image objects comes back, measured by allocation counts (tracemalloc), never by time."""
from __future__ import annotations

import csv
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import png_bytes

from tpp import predictions_csv
from tpp.data.files import ImageFiles, PackedStrings
from tpp.data.folders import load_folder, load_unlabeled_folder
from tpp.data.stream import concat_images
from tpp.tasks import get_task

N = 5_000  # enough that per-image objects (>= 2 allocations an image) dwarf the fixed ones
OPTS = dict(modality="US", image_size=8, seed=0)


def _folder(root, n: int):
    """``root/f`` with n tiny PNGs in two class folders, hard links of one file (cheap to make)."""
    one = root / "one.png"
    one.write_bytes(png_bytes(np.arange(64, dtype=np.uint8).reshape(8, 8)))
    for name in ("benign", "malignant"):
        (root / "f" / name).mkdir(parents=True)
    for i in range(n):
        os.link(one, root / "f" / ("benign" if i % 3 else "malignant") / f"img{i:06d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("many"), N)


def _intern_table_growth() -> list:
    """Filters for the lines of pathlib that call ``sys.intern`` (Python 3.11's pathlib; none in later ones):
    the allocation there is the interned-strings table resizing, not a Path object."""
    import pathlib

    with open(pathlib.__file__, encoding="utf-8") as fh:
        lines = [i for i, line in enumerate(fh, 1) if "sys.intern(" in line]
    return [tracemalloc.Filter(False, pathlib.__file__, lineno) for lineno in lines]


def _retained(build):
    """(object, bytes, blocks) the object returned by ``build()`` keeps allocated, by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = build()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # not the data's bookkeeping: the image library's own pools, and the interpreter's table of interned strings
    # (pathlib interns path parts; the table grows, and stays grown, while a listing's names are alive)
    ignore = [tracemalloc.Filter(False, "*/PIL/*"), *_intern_table_growth()]
    grown = [s for s in after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename")
             if s.size_diff > 0]
    return kept, sum(s.size_diff for s in grown), sum(max(s.count_diff, 0) for s in grown)


def _in_fresh_process(check: str, *folders) -> dict:
    """Run ``check(*folders)`` (a function of this module) in a fresh interpreter and return its dict: what an
    earlier test left in this process (caches, pools) must not count as the data's memory."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_data_memory as m; "
            f"print(json.dumps(m.{check}(*{[str(f) for f in folders]!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_dataset_retained(folder: str) -> dict:
    # the same folder once before measuring: every import and cache of the code path (progress bars only
    # shown for many files, numpy's lazy pieces) is done, so what is kept after is the dataset alone
    load_folder("warm", folder, "f", **OPTS)
    data, size, blocks = _retained(lambda: load_folder("many", folder, "f", **OPTS))
    train = data.split("train").images
    return {"images": sum(len(s) for s in data.splits.values()), "size": size, "blocks": blocks,
            "packed": isinstance(train, ImageFiles) and isinstance(train.paths, PackedStrings),
            "first": train.paths[0], "expected_first": str(Path(folder) / "f" / data.split_files["train"][0])}


def test_a_folder_dataset_holds_no_python_object_per_image(folder):
    got = _in_fresh_process("folder_dataset_retained", folder)
    assert got["images"] == N and got["packed"] and got["first"] == got["expected_first"]
    # packed paths (absolute in ImageFiles, relative in split_files), labels and split indices: ~150 B an
    # image; a str per path alone would be two allocations an image and ~200 B more
    assert got["blocks"] < N / 20, f"{got['blocks']} allocations kept for {N} images: per-image objects are back"
    assert got["size"] < 200 * N, f"{got['size'] / N:.0f} bytes kept per image"


def pretraining_images_retained(folder: str) -> dict:
    data = load_unlabeled_folder("all", folder, "f", modality="US", image_size=8)
    images, size, blocks = _retained(lambda: concat_images([data.split("train").images] * 3))
    return {"images": len(images), "blocks": blocks, "packed": isinstance(images.paths, PackedStrings),
            "picked": [images.paths[2 * N + 5], images.paths[5]],
            "expected": str(Path(folder) / "f" / data.split_files["train"][5])}


def test_pretraining_images_stay_packed(folder):
    got = _in_fresh_process("pretraining_images_retained", folder)
    assert got["images"] == 3 * N and got["blocks"] < 100 and got["packed"]
    assert got["picked"] == [got["expected"]] * 2


def test_packed_strings_behave_like_a_list_of_the_strings():
    words = ["b/x.png", "", "a/é.png", "c/" + "y" * 300]
    packed = PackedStrings(words)
    assert list(packed) == words and packed == words and packed[-1] == words[-1] and len(packed) == 4
    pick = np.array([3, 0, 0, 2])
    assert packed[pick] == [words[i] for i in pick] and packed[1:3] == words[1:3] and packed.index("a/é.png") == 2
    assert PackedStrings.concat([packed[:2], packed[2:]]) == packed and packed[np.array([], int)] == []
    assert sorted(packed) == sorted(words) and packed != words[::-1]
    with pytest.raises(IndexError):
        packed[4]


def test_predictions_are_made_and_written_in_chunks_with_the_same_rows(tmp_path, monkeypatch):
    """The rows, made chunk by chunk and streamed, equal the task's rows of the whole split, and no chunk
    of rows is larger than CHUNK."""
    monkeypatch.setattr(predictions_csv, "CHUNK", 7)
    task = get_task("classification")
    seen = []
    whole = task.prediction_rows

    def rows(p, t, names):
        seen.append(len(p))
        return whole(p, t, names)

    monkeypatch.setattr(task, "prediction_rows", rows, raising=False)
    probs = torch.softmax(torch.randn(30, 2, generator=torch.Generator().manual_seed(0)), 1)
    labels = torch.arange(30) % 2
    split = SimpleNamespace(images=ImageFiles([f"/d/{i}.png" for i in range(30)], None, (8, 8)))
    index = np.arange(100, 130)
    made = predictions_csv.split_rows(task, "val", split, index, probs, labels, ["a", "b"]) + \
        predictions_csv.split_rows(task, "test", SimpleNamespace(images=np.zeros((30, 8, 8))), None, probs, labels,
                                   ["a", "b"])
    run = SimpleNamespace(path=tmp_path, main=True)
    path = predictions_csv.publish_predictions(run, made)
    assert max(seen) == 7
    with open(path, newline="") as fh:
        written = list(csv.DictReader(fh))
    expected = [{"split": "val", "index": str(100 + i), "file": f"/d/{i}.png", **r}
                for i, r in enumerate(whole(probs, labels, ["a", "b"]))]
    expected += [{"split": "test", "index": str(i), "file": "", **r}
                 for i, r in enumerate(whole(probs, labels, ["a", "b"]))]
    assert written == expected
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # no temporary file left


def test_packed_strings_take_paths_and_refuse_a_mask_as_positions():
    from pathlib import Path

    from tpp.data.files import PackedStrings

    packed = PackedStrings([Path("a/b.png"), "c.png"])
    assert list(packed) == ["a/b.png", "c.png"] and packed[[True, False]] == ["a/b.png"]
    with pytest.raises(TypeError, match="integer positions"):
        packed.take([True, False])
