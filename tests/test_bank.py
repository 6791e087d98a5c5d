"""Adapter store and AdapterBank: publishing, routing per row, LRU, reload, the backbone never written."""
import json
import os

import pytest
import torch
from serving_fixtures import SITES, build_store, finetune_site, offline_probs, pixels

from tpp.serve import store
from tpp.backbones import backbone_hash
from tpp.serve.bank import AdapterBank
from tpp.errors import TppError
from tpp.serve.images import to_model_input


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("serving"))


def test_publish_versions_by_content_and_moves_pointer_atomically(world, tmp_path):
    s = tmp_path / "store"
    first = store.publish(world["runs"]["site_a"], s, "a")
    again = store.publish(world["runs"]["site_a"] / "adapter", s, "a")
    assert first.version == again.version and len(first.version) == 16
    assert {p.name for p in (s / "a").iterdir()} == {first.version, "current"}
    second = store.publish(world["runs"]["site_b"], s, "a")
    assert second.version != first.version and store.current(s, "a").version == second.version
    assert sorted(os.listdir(second.path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                               "head.safetensors", "tpp_card.json"]
    assert not [p for p in (s / "a").iterdir() if p.name.startswith(".")]  # no temp folders left
    head = first.path / "head.safetensors"
    head.write_bytes(head.read_bytes()[:-8] + b"\0" * 8)  # the old version damaged on disk since
    repaired = store.publish(world["runs"]["site_a"], s, "a")  # made current again: written whole, not trusted
    assert repaired.version == first.version and store.open_version(s, "a").version == first.version
    assert not [p for p in (s / "a").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("site", ["../x", "/abs", "a/b", "..", ".hidden", "a b", "é", "", "x" * 65])
def test_site_names_cannot_leave_the_store(world, tmp_path, site):
    with pytest.raises(TppError, match="not allowed"):
        store.publish(world["runs"]["site_a"], tmp_path / "store", site)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_publish_refuses_a_run_that_did_not_succeed(world, tmp_path):
    """An interrupted extension of a finished run leaves status failed beside the earlier adapter/."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["runs"]["site_a"], run)
    (run / "status.json").write_text(json.dumps({"status": "failed", "error": "KeyboardInterrupt"}))
    with pytest.raises(TppError, match=r"is failed, so its adapter/ is not that run's result"):
        store.publish(run, tmp_path / "store", "a")
    assert not (tmp_path / "store").exists()
    assert store.publish(run / "adapter", tmp_path / "store", "a").version  # named itself: the user's choice


def test_publish_refuses_full_models_and_tpp_adapters(world, tmp_path):
    run = finetune_site(world["backbone"], world["root"], tmp_path / "full", ["adapter={method: full}"])
    with pytest.raises(TppError, match="full_model"):
        store.publish(run, tmp_path / "store", "x")
    card = json.loads((world["runs"]["site_a"] / "adapter" / "tpp_card.json").read_text())
    tpp_like = tmp_path / "tpp_adapter"
    tpp_like.mkdir()
    for f in (world["runs"]["site_a"] / "adapter").iterdir():
        (tpp_like / f.name).write_bytes(f.read_bytes())
    (tpp_like / "tpp_card.json").write_text(json.dumps(dict(card, task={"type": "none"})))
    with pytest.raises(TppError, match="no task head"):
        store.publish(tpp_like, tmp_path / "store", "x")
    (tpp_like / "head.safetensors").unlink()  # what `tpp run tpp` writes: no head file, stage 'tpp'
    (tpp_like / "tpp_card.json").write_text(json.dumps(dict(card, task={"type": "none"}, stage="tpp")))
    with pytest.raises(TppError, match=r"lacks head.safetensors: it is a 'tpp'-stage adapter .* Fine-tune it first"):
        store.publish(tpp_like, tmp_path / "store", "x")


def test_listing_and_check_against_the_backbone(world, tmp_path):
    bank = AdapterBank(str(world["backbone"]), str(world["store"]))
    rows = store.listing(world["store"], bank.info.hash)
    assert [r["site"] for r in rows] == sorted(SITES) and all(r["backbone_match"] == "yes" for r in rows)
    assert {r["method"] for r in rows} == {"lora", "linear_probe", "loha"} and all(r["labels"] == 60 for r in rows)
    assert store.check(world["store"], bank.info.hash) == []
    assert len(store.check(world["store"], "0" * 64)) == len(SITES)


def test_bank_matches_offline_predictions_per_site_and_in_mixed_batches(world):
    bank = AdapterBank(str(world["backbone"]), str(world["store"]))
    images = world["images"]
    names = list(SITES)
    expected = {s: offline_probs(world["backbone"], world["store"] / s / store.current_version(world["store"], s),
                                 images) for s in names}
    for a in names:  # distinct adapters give distinct outputs, or the routing test below proves nothing
        for b in names:
            if a < b:
                assert not torch.allclose(expected[a], expected[b], atol=1e-4)
    rows = [names[i % len(names)] for i in range(len(images))]  # every row another site
    sites = [bank.site(s) for s in rows]
    x = torch.cat([to_model_input(im, sites[i].input_rule) for i, im in enumerate(images)])
    got = bank.predict(sites, x)
    for i, s in enumerate(rows):
        torch.testing.assert_close(got[i], expected[s][i], atol=1e-5, rtol=0)
    assert bank.site("site_a").encoder is None and bank.site("site_c").encoder is not None  # LoRA group vs own copy


def test_switching_a_b_a_is_exact_and_backbone_never_changes(world):
    bank = AdapterBank(str(world["backbone"]), str(world["store"]))
    before = backbone_hash(bank.encoder.model)
    x = pixels(world["images"][:4], bank.site("site_a").card)
    outs = {}
    for s in ["site_a", "site_b", "site_c", "site_d", "site_e", "site_a", "site_c", "site_e"]:
        probs = torch.stack(bank.predict([bank.site(s)] * 4, x))
        if s in outs:
            assert torch.equal(outs[s], probs)
        outs[s] = probs
    assert backbone_hash(bank.encoder.model) == before == bank.info.hash


def test_lru_bound_evicts_and_reloads(world):
    bank = AdapterBank(str(world["backbone"]), str(world["store"]), max_resident=2)
    x = pixels(world["images"][:2], bank.site("site_a").card)
    first = torch.stack(bank.predict([bank.site("site_a")] * 2, x))
    bank.site("site_b")
    bank.site("site_c")
    assert list(bank.resident) == ["site_b", "site_c"] and bank.loads == 3
    assert set(bank.groups["lora"].model.peft_config) == {f"site_b__{store.current_version(world['store'], 'site_b')}"}
    again = torch.stack(bank.predict([bank.site("site_a")] * 2, x))
    assert torch.equal(first, again) and bank.loads == 4 and list(bank.resident) == ["site_c", "site_a"]


def test_reload_serves_a_newly_published_version(world, tmp_path):
    s = tmp_path / "store"
    store.publish(world["runs"]["site_a"], s, "x")
    bank = AdapterBank(str(world["backbone"]), str(s))
    x = pixels(world["images"][:3], bank.site("x").card)
    old = torch.stack(bank.predict([bank.site("x")] * 3, x))
    new_version = store.publish(world["runs"]["site_b"], s, "x").version
    assert torch.equal(torch.stack(bank.predict([bank.site("x")] * 3, x)), old)  # until reloaded
    assert bank.reload("x")[1] == new_version
    new = torch.stack(bank.predict([bank.site("x")] * 3, x))
    torch.testing.assert_close(new, offline_probs(world["backbone"], s / "x" / new_version, world["images"][:3]),
                               atol=1e-5, rtol=0)


def test_bank_refuses_adapters_of_another_backbone(world, tmp_path):
    from conftest import make_backbone

    other = make_backbone(tmp_path / "other", "vit_mae", seed=5)
    bank = AdapterBank(str(other), str(world["store"]))
    with pytest.raises(TppError, match="hash"):
        bank.site("site_a")
    with pytest.raises(store.UnknownSite):
        bank.site("nobody")
    assert not bank.resident


def test_a_tampered_weights_file_is_refused_not_unpickled(world, tmp_path):
    import pickle

    s = tmp_path / "store"
    version = store.publish(world["runs"]["site_a"], s, "x").version
    (s / "x" / version / "adapter_model.safetensors").write_bytes(pickle.dumps({"evil": 1}))
    bank = AdapterBank(str(world["backbone"]), str(s))
    with pytest.raises(TppError, match="content hash does not match"):  # refused before it is parsed at all
        bank.site("x")
    assert not bank.resident and not bank.groups


def test_listing_survives_a_broken_site(world, tmp_path):
    s = tmp_path / "store"
    store.publish(world["runs"]["site_a"], s, "good")
    version = store.publish(world["runs"]["site_b"], s, "bad").version
    (s / "bad" / version / "tpp_card.json").write_text("{ not json")
    rows = {r["site"]: r for r in store.listing(s, "0" * 64)}
    assert rows["good"]["backbone_match"] == "NO" and rows["bad"]["backbone_match"] == "UNREADABLE"
    assert "not valid JSON" in rows["bad"]["method"]
    assert len(store.check(s, "0" * 64)) == 2


def test_predict_batches_group_sites_and_respect_the_resident_bound():
    from pathlib import Path

    from tpp.serve.predict import plan_batches

    pairs = [(Path(f"{i}.png"), f"s{i % 5}") for i in range(23)]
    batches = plan_batches(pairs, batch_size=6, max_sites=2)
    assert sorted(i for b in batches for i in b) == list(range(23))
    assert all(len(b) <= 6 and len({pairs[i][1] for i in b}) <= 2 for b in batches)
    assert sum(len({pairs[i][1] for i in b}) for b in batches) <= 5 + len(batches)  # grouped: few reloads


def test_a_card_cannot_point_outside_its_directory(world, tmp_path):
    import shutil

    evil = tmp_path / "evil"
    shutil.copytree(world["runs"]["site_a"] / "adapter", evil)
    card = json.loads((evil / "tpp_card.json").read_text())
    (evil / "tpp_card.json").write_text(json.dumps(dict(card, weights_file="../../x.bin")))
    with pytest.raises(TppError, match="weights_file"):
        store.publish(evil, tmp_path / "store", "x")
    (evil / "tpp_card.json").write_text(json.dumps([1, 2]))
    with pytest.raises(TppError, match="JSON object"):
        store.publish(evil, tmp_path / "store", "x")
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "store" / "x.bin").exists()


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_site_published_again_after_a_refusal_is_served_without_a_restart(world, tmp_path):
    """The refusal says 'publish the adapter again': doing so (same content, same version, files rewritten)
    is tried again at the next request, and by reload; untouched, the refusal stands without reading again."""
    s = tmp_path / "store"
    version = store.publish(world["runs"]["site_a"], s, "x").version
    _flip_a_byte(s / "x" / version / "adapter_model.safetensors")
    bank = AdapterBank(str(world["backbone"]), str(s))
    for _ in range(2):
        with pytest.raises(TppError, match="content hash does not match"):
            bank.site("x")
    assert bank.loads == 0 and bank.refused["x"][0] == version  # refused from memory the second time
    assert store.publish(world["runs"]["site_a"], s, "x").version == version  # rewritten whole
    assert bank.site("x").version == version and "x" not in bank.refused
    _flip_a_byte(s / "x" / version / "adapter_model.safetensors")
    bank.evict("x")
    with pytest.raises(TppError, match="content hash does not match"):
        bank.site("x")
    store.publish(world["runs"]["site_a"], s, "x")
    assert bank.reload("x")[1] == version  # reload tries it again too


def test_a_failed_reload_leaves_the_served_version_serving_also_after_eviction(world, tmp_path):
    """A damaged new version refused at reload does not take the working one down, and a site evicted by the
    LRU bound comes back at the version it served, not at whatever was published meanwhile."""
    s = tmp_path / "store"
    old = store.publish(world["runs"]["site_a"], s, "x").version
    store.publish(world["runs"]["site_c"], s, "y")
    bank = AdapterBank(str(world["backbone"]), str(s), max_resident=1)
    x = pixels(world["images"][:2], bank.site("x").card)
    before = torch.stack(bank.predict([bank.site("x")] * 2, x))
    new = store.publish(world["runs"]["site_b"], s, "x").version
    bank.site("y")  # evicts x
    assert bank.site("x").version == old  # back at the version it served, not the newly published one
    _flip_a_byte(s / "x" / new / "head.safetensors" if (s / "x" / new / "head.safetensors").exists()
                 else next((s / "x" / new).glob("*.safetensors")))
    with pytest.raises(TppError, match=rf"content hash does not match.*still serves version {old}"):
        bank.reload("x")
    assert bank.refused["x"][0] == new and torch.equal(torch.stack(bank.predict([bank.site("x")] * 2, x)), before)
    bank.site("y")
    assert bank.site("x").version == old  # also after eviction


def test_a_damaged_store_version_is_not_republished_loaded_or_evaluated_as_good(world, tmp_path):
    """A store version folder (or a copy of one) whose bytes changed used to be re-signed by publish into a new
    valid version, and loaded by tpp.load / evaluate without a word: it is refused by its name's hash."""
    import shutil

    import tpp
    from tpp.adapter_read import read_adapter_dir

    s = tmp_path / "store"
    version = store.publish(world["runs"]["site_a"], s, "x").version
    folder = s / "x" / version
    assert read_adapter_dir(folder).card["method"]
    assert store.publish(folder, tmp_path / "prod", "x").version == version
    copy = tmp_path / "staging" / version
    shutil.copytree(folder, copy)
    _flip_a_byte(copy / "adapter_model.safetensors")
    for attempt in (lambda: store.publish(copy, tmp_path / "other", "x"), lambda: read_adapter_dir(copy).card,
                    lambda: tpp.load(copy, backbone=world["backbone"])):
        with pytest.raises(TppError, match="content hash does not match version"):
            attempt()
    assert not (tmp_path / "other").exists()
    renamed = tmp_path / "mine"
    copy.rename(renamed)  # no store version: an adapter folder like any other
    assert read_adapter_dir(renamed).card["method"]
    linked = tmp_path / "linked" / version  # the very files, plus a symbolic link: no published version holds one
    shutil.copytree(folder, linked)
    (linked / "extra.bin").symlink_to(folder / "adapter_model.safetensors")
    with pytest.raises(TppError, match="is a symbolic link or no regular file"):
        read_adapter_dir(linked).card


@pytest.mark.parametrize("damage", ["flipped byte", "foreign file", "linked file"])
def test_a_damaged_version_folder_gets_one_message_whoever_reads_it(world, tmp_path, damage):
    """The store's loads, ``read_adapter_dir`` (publish, evaluate, tpp.load) and ``tpp adapters push`` check a
    version's files with one function: the same problem is the same sentence (push adds that nothing was pushed)."""
    from tpp.adapter_read import read_adapter_dir
    from tpp.serve.hub import verified_version

    s = tmp_path / "store"
    folder = s / "x" / store.publish(world["runs"]["site_a"], s, "x").version
    weights = folder / "adapter_model.safetensors"
    if damage == "flipped byte":
        _flip_a_byte(weights)
    elif damage == "foreign file":
        (folder / "notes.txt").write_text("reviewed")
    else:
        weights.rename(tmp_path / "weights")
        weights.symlink_to(tmp_path / "weights")
    said = []
    for read in (lambda: read_adapter_dir(folder).card, lambda: store.open_version(s, "x"),
                 lambda: verified_version(s, "x", None, None)):
        with pytest.raises(TppError) as refused:
            read()
        said.append(str(refused.value))
    assert said[0] == said[1] and said[2] == f"{said[0]} Nothing was pushed."


def test_a_site_refused_while_serving_follows_the_next_published_version(world, tmp_path):
    """A version refused at predict time (non-finite outputs) must not stay pinned: once another version is
    published the next request serves it, as before versions were pinned."""
    s = tmp_path / "store"
    first = store.publish(world["runs"]["site_a"], s, "x").version
    bank = AdapterBank(str(world["backbone"]), str(s))
    assert bank.site("x").version == first
    bank.refuse("x", first, "outputs are not finite")  # what the worker does when a prediction fails
    with pytest.raises(TppError, match="not finite"):
        bank.site("x")
    second = store.publish(world["runs"]["site_b"], s, "x").version
    assert bank.site("x").version == second and "x" not in bank.refused
