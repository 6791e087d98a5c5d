"""``data.slice`` (and ``tpp predict --slice``) choose one slice of each 3D NIfTI volume: ``AXIS:all``, every slice,
is refused saying why and what to do instead (it was refused as a malformed slice, naming only AXIS:INDEX)."""
import pytest

from tpp.config import load_config
from tpp.data.images import ImageError, parse_slice
from tpp.errors import ConfigError

FOLDER = ["data.source=folder", "data.modality=CT"]


@pytest.mark.parametrize("spec", ["2:all", "0:ALL", "1: all"])
def test_every_slice_of_a_volume_is_refused_saying_why(spec):
    with pytest.raises(ImageError, match=r"reading every slice of a volume is not supported: a file is read as one 2D "
                                         r"image .*AXIS:middle.*patient_id") as caught:
        parse_slice(spec)
    assert repr(spec) in str(caught.value)


def test_a_config_with_every_slice_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.slice: slice '2:all': reading every slice of a volume is not "
                                          r"supported"):
        load_config({"data": {"root": str(tmp_path)}}, [*FOLDER, "data.slice=2:all"])
    assert load_config({"data": {"root": str(tmp_path)}}, [*FOLDER, "data.slice=2:middle"]).data.options["slice"] \
        == "2:middle"


def test_other_malformed_slices_keep_their_message():
    for spec in ("all", "3:1", "2:-1", "2:x"):
        with pytest.raises(ImageError, match="must be AXIS:INDEX"):
            parse_slice(spec)
    assert parse_slice("2:40") == (2, 40) and parse_slice("1:Middle") == (1, None)
