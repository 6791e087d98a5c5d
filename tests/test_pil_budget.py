"""tpp's pixel budget (``data.max_image_pixels``, ``--max-image-pixels``) rules PIL's decode, not PIL's global bomb
limit (``Image.MAX_IMAGE_PIXELS``, ~89M; refusal past twice that): a site may raise the budget above PIL's, and an
image past either is refused by tpp's own named error. PIL's global is patched small here (decoding an image past
the real limit would take GBs); it is left as it was after every read. Tiny images built in code."""
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from tpp.data.file_reading import FileReading
from tpp.data.images import ImageTooLarge, read
from tpp.data.pixels import PixelLimits, pil_budget
from tpp.data.segmentation import load_seg_folder
from tpp.errors import TppError

from test_data_hostile import png_claiming


@pytest.fixture
def small_pil_limit(monkeypatch):
    """PIL's bomb limit at 100 pixels: a 64x64 image (4,096) is past twice it, refused by PIL itself."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)


@pytest.fixture
def no_bomb_warning():
    """An image within the budget decodes without PIL's DecompressionBombWarning (an error here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def gradient_png(path, side: int = 64):
    Image.fromarray((np.arange(side * side) % 251).astype(np.uint8).reshape(side, side)).save(path)
    return path


def test_a_budget_above_pils_limit_decodes_and_pils_limit_is_restored(tmp_path, small_pil_limit, no_bomb_warning):
    path = gradient_png(tmp_path / "a.png")
    expected = np.asarray(Image.fromarray((np.arange(4096) % 251).astype(np.uint8).reshape(64, 64)))
    assert np.array_equal(read(path, limits=PixelLimits(10_000)), expected)
    assert np.array_equal(FileReading(max_image_pixels=10_000).read(path), expected)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(Image.DecompressionBombError):  # PIL's own opens elsewhere keep PIL's limit
        Image.open(path)


@pytest.mark.parametrize("budget", [1_000, 4_095])  # past twice the budget (PIL refuses the header), or just past
def test_an_image_past_the_budget_is_refused_by_tpps_named_error_not_pils(tmp_path, small_pil_limit, budget):
    path = gradient_png(tmp_path / "a.png")
    with pytest.raises(ImageTooLarge, match=rf"a\.png': 4,096 pixels, more than the per-image limit of {budget:,} "):
        read(path, limits=PixelLimits(budget))
    assert Image.MAX_IMAGE_PIXELS == 100


def test_the_default_budget_refuses_a_header_past_pils_own_limit_by_tpps_named_error(tmp_path):
    png_claiming(tmp_path / "huge.png", 20_000, 20_000)  # 400M pixels: past twice PIL's 89M, never decoded
    with pytest.raises(ImageTooLarge, match=r"huge\.png': 400,000,000 pixels, more than the per-image limit of "
                                            r"67,108,864 \(tpp predict / serve --max-image-pixels"):
        read(tmp_path / "huge.png")


def seg_folder(root, side: int = 64, n: int = 6):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        gradient_png(root / "images" / f"a{i}.png", side)
        mask = np.zeros((side, side), np.uint8)
        mask[: side // 2] = 255
        Image.fromarray(mask).save(root / "masks" / f"a{i}.png")
    return root


def test_seg_folder_masks_decode_under_a_budget_above_pils_limit(tmp_path, small_pil_limit, no_bomb_warning):
    root = seg_folder(tmp_path / "seg")
    data = load_seg_folder("x", None, str(root), image_size=16, modality="US",
                           reading=FileReading(max_image_pixels=10_000))
    train = data.splits["train"]
    mask = train.masks[0]  # decoded again, as a batch decodes it
    assert mask.shape == (16, 16) and set(np.unique(mask).tolist()) == {0, 1}
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(TppError, match=r"more than the per-image limit of 1,000"):
        load_seg_folder("x", None, str(root), image_size=16, modality="US", reading=FileReading(max_image_pixels=1_000))


def test_a_mask_header_past_pils_own_limit_is_refused_by_tpps_named_error(tmp_path):
    root = seg_folder(tmp_path / "seg", side=8)
    png_claiming(root / "masks" / "a0.png", 20_000, 20_000)
    with pytest.raises(TppError, match=r"mask '.*a0\.png': 400,000,000 pixels, more than the per-image limit of "
                                       r"67,108,864 \(data\.max_image_pixels\)"):
        load_seg_folder("x", None, str(root), image_size=16, modality="US")


def test_nested_budgets_raise_pils_limit_to_the_largest_and_restore_it(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pil_budget(1_000):
        assert Image.MAX_IMAGE_PIXELS == 1_000
        with pil_budget(5_000):
            assert Image.MAX_IMAGE_PIXELS == 5_000
            with pil_budget(50):  # below PIL's own: changes nothing
                assert Image.MAX_IMAGE_PIXELS == 5_000
        assert Image.MAX_IMAGE_PIXELS == 1_000
    assert Image.MAX_IMAGE_PIXELS == 100
    with pil_budget(50):
        assert Image.MAX_IMAGE_PIXELS == 100
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a site that switched PIL's check off keeps it off
    with pil_budget(1_000):
        assert Image.MAX_IMAGE_PIXELS is None
    assert Image.MAX_IMAGE_PIXELS is None


def test_a_limit_set_by_other_code_during_a_budget_is_kept(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pil_budget(1_000):
        Image.MAX_IMAGE_PIXELS = 20_000  # the site's own code changes PIL's limit meanwhile
        with pil_budget(5_000):
            assert Image.MAX_IMAGE_PIXELS == 20_000
    assert Image.MAX_IMAGE_PIXELS == 20_000


def test_reads_in_threads_with_different_budgets_all_decode_and_restore_pils_limit(tmp_path, small_pil_limit):
    path = gradient_png(tmp_path / "a.png")
    errors, shapes = [], []

    def work(budget):
        try:
            for _ in range(20):
                shapes.append(read(path, limits=PixelLimits(budget)).shape)
        except Exception as exc:  # collected: a thread's exception would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(b,)) for b in (4_096, 10_000, 2**20, 5_000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and shapes == [(64, 64)] * 80
    assert Image.MAX_IMAGE_PIXELS == 100
