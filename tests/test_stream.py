"""The streaming data path: stored uint8 images (arrays or files) become model input one batch at a time, with
the same order and the same numbers as the whole split converted at once, in worker processes too."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder

from tpp.data import Dataset, Split
from tpp.data.build import to_model_tensor
from tpp.data.files import ImageFiles
from tpp.data.folders import load_folder
from tpp.data.stream import ConcatInputs, ModelInputs, concat_images, stream_loader
from tpp.training import make_loader

SIZE, MEAN, STD = 16, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def eager(images) -> np.ndarray:
    return np.stack([images[i] for i in range(len(images))])


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_equal_the_whole_split_converted_at_once_in_the_same_order(workers):
    images = np.random.default_rng(1).integers(0, 256, (37, 20, 20), dtype=np.uint8)
    labels = torch.arange(37)
    whole = to_model_tensor(images, 3, SIZE, MEAN, STD)
    before = make_loader(whole, labels, batch_size=8, shuffle=True, seed=3)
    after = stream_loader(ModelInputs(images, 3, SIZE, MEAN, STD), labels, batch_size=8, shuffle=True, seed=3,
                          num_workers=workers)
    pairs = [pair for _ in range(3) for pair in zip(before, after)]  # three epochs: each reshuffles alike
    assert len(pairs) == 15
    for (x0, y0), (x1, y1) in pairs:
        assert torch.equal(y0, y1) and torch.equal(x0, x1)


def test_a_folder_stays_on_disk_and_hashes_as_the_decoded_arrays(tmp_path):
    dataset = load_folder("toy", str(make_image_folder(tmp_path / "img")), None, modality="US", image_size=SIZE)
    train = dataset.split("train")
    assert isinstance(train.images, ImageFiles) and train.images.shape == (len(train), SIZE, SIZE)
    in_memory = Dataset("toy", "US", dataset.class_names, split_id=dataset.split_id,
                        splits={k: Split(eager(v.images), v.labels) for k, v in dataset.splits.items()})
    assert dataset.content_hash() == in_memory.content_hash()
    assert dataset.content_hash(labels=False) == in_memory.content_hash(labels=False) != dataset.content_hash()
    assert dataset.split_sha256() == in_memory.split_sha256()
    picked = train.subset(np.array([2, 0]))  # label fractions subset the files without reading them
    assert isinstance(picked.images, ImageFiles) and np.array_equal(eager(picked.images), eager(train.images)[[2, 0]])


def test_one_colour_file_makes_every_image_rgb_as_before(tmp_path):
    dataset = load_folder("toy", str(make_image_folder(tmp_path / "img", rgb_at=5)), None, modality="US",
                          image_size=SIZE)
    images = concat_images([dataset.split(s).images for s in ("train", "val", "test")])
    assert isinstance(images, ImageFiles) and images.shape[1:] == (SIZE, SIZE, 3) and images[0].shape == (SIZE, SIZE, 3)


def test_model_inputs_of_files_equal_the_eager_conversion(tmp_path):
    dataset = load_folder("toy", str(make_image_folder(tmp_path / "img")), None, modality="US", image_size=SIZE)
    files = dataset.split("train").images
    inputs = ModelInputs(files, 3, 32, MEAN, STD)
    index = np.array([3, 1, 4, 1])
    assert torch.equal(inputs[index], to_model_tensor(eager(files)[index], 3, 32, MEAN, STD))


def test_a_pool_of_gray_files_and_colour_arrays_converts_per_batch_as_the_whole_pool(tmp_path):
    """pretrain_backbone's pool: parts of other kinds and channels behind one index, in the loader's order."""
    files = load_folder("toy", str(make_image_folder(tmp_path / "img")), None, modality="US",
                        image_size=SIZE).split("train").images
    colour = np.random.default_rng(2).integers(0, 256, (9, 20, 20, 3), dtype=np.uint8)
    pool = ConcatInputs([ModelInputs(files, 3, SIZE, MEAN, STD), ModelInputs(colour, 3, SIZE, MEAN, STD)])
    whole = torch.cat([to_model_tensor(eager(files), 3, SIZE, MEAN, STD), to_model_tensor(colour, 3, SIZE, MEAN, STD)])
    assert len(pool) == len(files) + 9 == len(whole)
    index = np.array([len(files) + 8, 0, len(files), len(files) - 1, 3, len(files) + 8])  # across both parts
    assert torch.equal(pool[index], whole[index])
    labels = torch.arange(len(whole))
    for (x0, y0), (x1, y1) in zip(make_loader(whole, labels, batch_size=5, shuffle=True, seed=1),
                                  stream_loader(pool, labels, batch_size=5, shuffle=True, seed=1)):
        assert torch.equal(y0, y1) and torch.equal(x0, x1)
    with pytest.raises(ValueError, match="same channels and size"):
        ConcatInputs([ModelInputs(colour, 3, SIZE, MEAN, STD), ModelInputs(colour, 1, SIZE, MEAN[:1], STD[:1])])


def test_predict_streams_the_same_rows_as_a_tensor():
    from accelerate import Accelerator

    from tpp.training import predict

    images = np.random.default_rng(2).integers(0, 256, (21, 16, 16), dtype=np.uint8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 4))
    accelerator = Accelerator(cpu=True)
    expected = predict(accelerator, model, to_model_tensor(images, 3, SIZE, MEAN, STD), 5, lambda x: x)
    for workers in (0, 2):
        got = predict(accelerator, model, ModelInputs(images, 3, SIZE, MEAN, STD), 5, lambda x: x, workers)
        assert torch.equal(got, expected)


def test_a_file_removed_after_loading_is_named_and_mixed_shapes_are_refused(tmp_path):
    from tpp.errors import TppError

    dataset = load_folder("toy", str(make_image_folder(tmp_path / "img")), None, modality="US", image_size=SIZE)
    files = dataset.split("train").images
    Path(files.paths[0]).unlink()
    with pytest.raises(TppError, match="changed or disappeared since the data was loaded"):
        files[0]
    gray, colour = files[np.array([1])], ImageFiles(files.paths[1:2], files.decode, (SIZE, SIZE, 3))
    with pytest.raises(TppError, match="decode to different shapes"):
        concat_images([gray, colour])
