"""The hostile-traffic benchmark (``benchmarks/hostile.py``) in its quick form: ``tpp serve`` in a subprocess
on loopback, over a store with good sites and forged / tampered / linked entries, under good requests mixed
with hostile ones. Bounded by request count, never by the clock: good requests all answered and all equal to
the offline predictions, hostile ones refused with their 4xx, no 5xx, the secret never echoed."""
import sys
from pathlib import Path

import pytest
from conftest import make_backbone, make_medmnist
from serving_fixtures import finetune_site

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import hostile  # noqa: E402

pytestmark = [pytest.mark.hostile,
              pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")]


def test_good_traffic_is_served_exactly_while_hostile_sites_and_inputs_are_refused(tmp_path):
    backbone = make_backbone(tmp_path / "backbone", "vit_mae")
    root = make_medmnist(tmp_path / "data")
    finetune_site(backbone, root, tmp_path / "work" / "site_real", ["seed=0"])  # make_sites reuses it
    r = hostile.scenario(tmp_path / "work", str(backbone), str(root), sites=3, clients=4, max_requests=160,
                         seconds=None, good_per_hostile=2, images=8)
    print(hostile.markdown(r))
    assert r["bound"] == ["127.0.0.1"]
    assert r["good_requests"] >= 100 and r["good_errors"] == 0
    assert r["wrong_answers"] == 0
    assert r["server_errors_5xx"] == 0 and r["connection_errors"] == 0
    assert r["secret_echoed"] == 0
    cases = r["hostile_by_case"]
    assert {"forged_base_key", "full_as_adapter", "flipped_bytes", "labels_misfit", "linked_site", "linked_pointer",
            "png_8192x20", "gzip_bomb", "not_an_image"} <= set(cases)
    wrong = {name: c["statuses"] for name, c in cases.items() if not c["ok"]}
    assert not wrong, f"hostile cases answered with other statuses than expected: {wrong}"
    assert all(set(c["statuses"]) <= {"400", "404", "409"} for c in cases.values() if c["kind"] == "site")
    assert set(cases["png_8192x20"]["statuses"]) == {"413"} and set(cases["png_over_limit"]["statuses"]) == {"413"}
    assert r["backbone_hash"]["before"] == r["backbone_hash"]["after"]
    assert r["reload_ok"], r["reload"]
    assert not r["hostile_listed_healthy"] and r["good_listed_healthy"] and r["alive_at_end"]
    assert all(r["checks"].values()), r["checks"]
