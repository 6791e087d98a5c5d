"""One failing site fails its own requests only: the rest of a mixed batch is answered, the site is shown
refused with its reason, and forged cards give 409 naming the site (service) or one paragraph (`tpp predict`)."""
import json

import pytest
import torch
from helpers import HANG_S, png_bytes
from serving_fixtures import build_store, forge, paused, request, serving

from tpp.serve import store
from tpp.serve.bank import AdapterBank, SiteRefused
from tpp.cli import main
from tpp.serve.worker import InferenceWorker

GOOD = {"lora_a": ["adapter.r=2", "seed=0"], "lora_b": ["adapter.r=4", "seed=1"],
        "probe": ["adapter={method: linear_probe}", "seed=3"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_store(tmp_path_factory.mktemp("poisoned"), GOOD, images=4, expected=True)
    store.publish(world["runs"]["lora_a"], world["store"], "bad")
    return world


class Broken(torch.nn.Module):
    """A head that fails the way a card that does not fit its tensors does, once in a batch."""

    def forward(self, tokens, grid=None, pixel_values=None):
        raise IndexError("index 7 is out of bounds for dimension 1 with size 2")


def test_a_site_failing_in_a_mixed_batch_fails_its_requests_alone(world):
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(world["store"])), max_wait_ms=1)
    worker.call(lambda bank: setattr(bank.site("bad"), "head", Broken())).result(HANG_S)
    worker.call(lambda bank: [bank.site(s) for s in GOOD]).result(HANG_S)  # resident: none waits for its files
    with paused(worker):  # 12 good requests and 4 poisoned ones in one batch
        futures = [(s, worker.predict(s, world["images"][:2])) for _ in range(4) for s in [*GOOD, "bad"]]
    for site, future in futures:
        if site == "bad":
            with pytest.raises(SiteRefused, match="site 'bad' .*IndexError"):
                future.result(HANG_S)
        else:
            assert torch.allclose(torch.tensor(future.result(HANG_S).outputs), world["expected"][site][:2], atol=1e-5)
    refused = worker.call(lambda bank: dict(bank.refused)).result(HANG_S)
    assert worker.batches == 1  # read after the call above: the batch is counted after its answers are set
    assert list(refused) == ["bad"] and "IndexError" in refused["bad"][1]
    loads = worker.bank.loads
    with pytest.raises(SiteRefused):  # answered from the refusal, not loaded again
        worker.predict("bad", world["images"][:1]).result(HANG_S)
    assert worker.bank.loads == loads
    worker.stop()


def test_the_service_answers_409_names_the_site_and_lists_it_refused(world, tmp_path):
    s = tmp_path / "store"
    for site, run in world["runs"].items():
        store.publish(run, s, site)
    files = store.read_source(world["runs"]["lora_a"])[1]
    card = json.loads(files["tpp_card.json"])
    forged = dict(card, task=dict(card["task"], num_classes=3, label_names=["a", "b", "c"]))
    forge(s, "forged", dict(files, **{"tpp_card.json": json.dumps(forged).encode()}))
    png = png_bytes(world["images"][0])
    with serving(world, store_path=s) as url:
        status, body = request(f"{url}/v1/sites/forged/predict", files=[("x.png", png)])
        assert status == 409 and "forged" in body["detail"] and "does not fit the card" in body["detail"]
        for site in GOOD:
            status, body = request(f"{url}/v1/sites/{site}/predict", files=[("x.png", png)])
            assert status == 200 and body["site"] == site
        status, body = request(f"{url}/v1/sites")
        rows = {r["site"]: r for r in body["sites"]}
        assert rows["forged"]["healthy"] is False and "does not fit the card" in rows["forged"]["refused_because"]
        assert all(rows[site]["healthy"] and rows[site]["refused_because"] is None for site in GOOD)
        store.publish(world["runs"]["lora_b"], s, "forged")  # a new version clears the refusal
        status, body = request(f"{url}/v1/sites/forged/predict", files=[("x.png", png)])
        assert status == 200


def test_tpp_predict_gives_one_paragraph_for_a_forged_site(world, tmp_path, capsys):
    s = tmp_path / "store"
    files = store.read_source(world["runs"]["lora_a"])[1]
    card = json.loads(files["tpp_card.json"])
    forge(s, "forged", dict(files, **{"tpp_card.json": json.dumps(dict(card, target_modules=["nope"])).encode()}))
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(world["images"][0]))
    code = main(["predict", "--backbone", str(world["backbone"]), "--store", str(s), "--site", "forged",
                 str(image), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "forged" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()
