"""A store whose bytes changed after publishing, files that are not what they claim, and paths that try
to leave the store: refused with a message that never echoes file content; `tpp adapters check` counts true."""
import errno
import json
import os
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from serving_fixtures import finetune_site, forge

from tpp.serve import store
from tpp.serve.bank import AdapterBank, SiteRefused
from tpp.cli import main
from tpp.errors import TppError

SECRET = "TOP-SECRET-patient-list-4711"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import make_backbone, make_medmnist

    base = tmp_path_factory.mktemp("tampered")
    backbone = make_backbone(base / "backbone", "vit_mae")
    other = make_backbone(base / "other", "vit_mae", seed=3)
    root = make_medmnist(base / "data")
    run = finetune_site(backbone, root, base / "runs" / "a", ["adapter.r=2"])
    other_run = finetune_site(other, root, base / "runs" / "other", ["adapter.r=2"])
    (base / "secret.txt").write_text(SECRET)
    return {"backbone": backbone, "run": run, "other_run": other_run, "secret": base / "secret.txt"}


def files_of(run) -> dict[str, bytes]:
    return store.read_source(run)[1]


def write_dir(path, files):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def test_flipped_bytes_after_publishing_are_refused_not_served(world, tmp_path):
    s = tmp_path / "store"
    version = store.publish(world["run"], s, "x").version
    weights = s / "x" / version / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # a value byte: still parses, different prediction
    weights.write_bytes(bytes(data))
    bank = AdapterBank(str(world["backbone"]), str(s))
    with pytest.raises(SiteRefused, match="content hash does not match"):
        bank.site("x")
    loads = bank.loads
    with pytest.raises(SiteRefused, match="content hash does not match"):  # remembered: not read again
        bank.site("x")
    assert bank.loads == loads and "x" in bank.refused
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))  # the original bytes again, plus a file that is no part of an adapter
    (s / "x" / version / "extra.bin").write_bytes(b"")
    with pytest.raises(SiteRefused, match="not part of an adapter"):
        AdapterBank(str(world["backbone"]), str(s)).site("x")
    (s / "x" / version / "extra.bin").unlink()
    assert AdapterBank(str(world["backbone"]), str(s)).site("x").version == version


def corruptions(files: dict[str, bytes]) -> dict[str, tuple[dict, str]]:
    import pickle

    card = json.loads(files["tpp_card.json"])
    state = load_bytes(files["adapter_model.safetensors"])
    nan = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    return {
        "pickle": ({"adapter_model.safetensors": pickle.dumps({"w": 1})}, "not a readable safetensors file"),
        "truncated": ({"adapter_model.safetensors": files["adapter_model.safetensors"][:-40]},
                      "not a readable safetensors file"),
        "unknown_method": ({"tpp_card.json": json.dumps(dict(card, method="lorax")).encode()},
                           "unknown adapter.method 'lorax'"),
        "mismatched_method": ({"tpp_card.json": json.dumps(dict(card, method="loha")).encode()},
                              "its options do not fit method 'loha'"),  # lora's options: refused before the tensors
        "mismatched_tensors": ({"tpp_card.json": json.dumps(dict(card, method="loha", options={})).encode()},
                               "not loha target parameters"),
        "labels": ({"tpp_card.json": json.dumps(dict(card, task=dict(card["task"], label_names=["a", "b", "c"])))
                    .encode()}, "does not fit the card"),
        "nan": ({"adapter_model.safetensors": save_bytes(nan)}, "NaN"),
        "huge_input": ({"tpp_card.json": json.dumps(dict(card, input=dict(card["input"], image_size=10**6))).encode()},
                       "image_size"),
    }


def test_publish_verifies_what_it_publishes(world, tmp_path, capsys):
    files = files_of(world["run"])
    for name, (change, reason) in corruptions(files).items():
        folder = write_dir(tmp_path / name, dict(files, **change))
        assert main(["adapters", "publish", str(folder), str(tmp_path / "store"), "--site", name]) == 2, name
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err, (name, err)
    assert not (tmp_path / "store").exists()


def test_publish_with_a_backbone_dry_loads_and_refuses_another_backbones_adapter(world, tmp_path, capsys):
    s = tmp_path / "store"
    assert main(["adapters", "publish", str(world["other_run"]), str(s), "--site", "o",
                 "--backbone", str(world["backbone"])]) == 2
    assert "hash" in capsys.readouterr().err and not s.exists()
    assert main(["adapters", "publish", str(world["run"]), str(s), "--site", "a", "--backbone",
                 str(world["backbone"])]) == 0
    assert "loaded and checked against the backbone" in capsys.readouterr().out


def test_adapters_check_loads_every_site_and_counts_true(world, tmp_path, capsys):
    s = tmp_path / "store"
    store.publish(world["run"], s, "good1")
    store.publish(world["run"], s, "good2")
    store.publish(world["other_run"], s, "other_backbone")
    files = files_of(world["run"])
    for name, (change, _) in corruptions(files).items():
        forge(s, name, dict(files, **change))
    flipped = s / "good2" / store.current_version(s, "good2") / "head.safetensors"
    flipped.write_bytes(flipped.read_bytes()[:-1] + b"\x00")
    assert main(["adapters", "check", str(s), "--backbone", str(world["backbone"])]) == 1
    out = capsys.readouterr().out
    refused = len(corruptions(files)) + 2
    assert f"1 sites ok, {refused} refused" in out
    assert out.count("REFUSED ") == refused and "REFUSED good1" not in out


def test_links_out_of_the_store_are_refused_and_never_echoed(world, tmp_path):
    s = tmp_path / "store"
    version = store.publish(world["run"], s, "a").version
    outside = tmp_path / "outside"
    store.publish(world["run"], outside, "b")
    # the pointer links to a secret file
    (s / "p").mkdir()
    os.symlink(world["secret"], s / "p" / "current")
    # a site folder and a version folder that lead outside the store
    os.symlink(outside / "b", s / "b")
    (s / "v").mkdir()
    os.symlink(outside / "b" / version, s / "v" / version)
    (s / "v" / "current").write_text(version + "\n")
    # a file inside a version folder that links out
    (s / "f").mkdir()
    (s / "f" / version).mkdir()
    for name in os.listdir(s / "a" / version):
        os.symlink(s / "a" / version / name, s / "f" / version / name)
    (s / "f" / "current").write_text(version + "\n")
    # a pointer holding the secret itself
    (s / "q").mkdir()
    (s / "q" / "current").write_text(SECRET)
    bank = AdapterBank(str(world["backbone"]), str(s))
    for site in ("p", "b", "v", "f", "q"):
        with pytest.raises(TppError) as err:
            bank.site(site)
        assert SECRET not in str(err.value), site
    rows = store.listing(s, bank.info.hash)
    assert SECRET not in json.dumps(rows)
    assert {r["site"] for r in rows if r["version"] != "?"} == {"a"}
    assert bank.site("a").version == version


def test_a_fifo_in_the_store_is_refused_without_blocking(tmp_path):
    """Opening a FIFO for reading waits for a writer forever: a card, pointer or weights file replaced by one hung
    ``GET /v1/sites``, every predict's pointer read (on the event loop) or the loader thread. Refused at once."""
    version = "0123456789abcdef"
    folder = tmp_path / "store" / "x" / version
    folder.mkdir(parents=True)
    os.mkfifo(folder / "tpp_card.json")
    (tmp_path / "store" / "x" / "current").write_text(version)
    with pytest.raises(TppError, match="tpp_card.json' is not a regular file"):
        store.current(tmp_path / "store", "x")
    assert store.listing(tmp_path / "store")[0]["backbone_match"] == "UNREADABLE"
    with pytest.raises(TppError, match="tpp_card.json' is (not a regular file|a symbolic link or no regular file)"):
        store.open_version(tmp_path / "store", "x")
    (tmp_path / "store" / "y").mkdir()
    os.mkfifo(tmp_path / "store" / "y" / "current")
    assert store.current_version(tmp_path / "store", "y") is None


def unlistable(monkeypatch, *folders) -> None:
    """``os.scandir`` and ``os.listdir`` of ``folders`` fail as a folder without read permission does (chmod 000
    means nothing to root, so the permission error is made here instead)."""
    locked = {os.fspath(f) for f in folders}
    for name in ("scandir", "listdir"):
        def refused(path=".", *args, _real=getattr(os, name)):
            if not isinstance(path, int) and os.fspath(path) in locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return _real(path, *args)
        monkeypatch.setattr(os, name, refused)


def test_a_version_folder_that_cannot_be_listed_is_refused_by_name(world, tmp_path, monkeypatch):
    """Loading, publishing again and serving a version folder that cannot be listed: one TppError naming the
    folder (through HTTP the refusal's 409, as for any damaged version), never a raw OSError or a 500."""
    from helpers import png_bytes
    from serving_fixtures import publish_context, request, serving

    from tpp.serve import contexts
    from tpp.serve.worker import InferenceWorker

    s = tmp_path / "store"
    version = store.publish(world["run"], s, "x").version
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(s)))
    cv = publish_context(tmp_path / "ctx", s, "c", worker.bank.info.hash)
    unlistable(monkeypatch, s / "x" / version, cv.path)
    said = "cannot be listed (Permission denied); refused."
    with pytest.raises(TppError, match=f"'{s / 'x' / version}' {re.escape(said)}"):
        store.open_version(s, "x")
    with pytest.raises(TppError, match=f"'{s / 'x' / version}' {re.escape(said)}"):
        store.publish(world["run"], s, "x")  # the same content again: is that folder whole?
    with pytest.raises(TppError, match=f"'{cv.path}' {re.escape(said)}"):
        contexts.open_context(s, "c", backbone_hash=worker.bank.info.hash)
    image = [("q.png", png_bytes(np.zeros((8, 8), np.uint8)))]
    with serving(world, store_path=s, worker=worker) as url:
        for path, folder in (("sites/x", s / "x" / version), ("contexts/c", cv.path)):
            status, answer = request(f"{url}/v1/{path}/predict", image)
            assert (status, answer.get("detail")) == (409, f"folder '{folder}' {said}"), path


def published_pointers(tmp_path):
    """A store of one adapter site ``s`` and one context site ``c``, pointers only (nothing is loaded)."""
    from tpp.serve import contexts

    s = tmp_path / "store"
    for site in (s / "s", s / contexts.FOLDER / "c"):
        site.mkdir(parents=True)
        (site / "current").write_text("0123456789abcdef\n")
    return s


def test_store_folders_that_cannot_be_listed_are_named_by_every_listing(tmp_path, monkeypatch, capsys):
    """store.sites / versions, contexts.sites, the CLI listings (and publish's check of the store) and GET /v1/sites,
    /v1/contexts over folders that cannot be listed: one TppError naming the folder (CLI: one line, exit 2; HTTP:
    the 409 of a store refusal), never a raw OSError (through the service: a 500)."""
    from serving_fixtures import StubWorker, call

    from tpp.serve import contexts
    from tpp.serve.server import create_app

    s = published_pointers(tmp_path)
    app = create_app(StubWorker(), str(s))
    (tmp_path / "plain").mkdir()  # no _contexts: `tpp context publish` lists it to tell whether it is a store
    unlistable(monkeypatch, s, s / "s", s / contexts.FOLDER, tmp_path / "plain")
    said = "cannot be listed (Permission denied); refused."
    for listed, folder in ((lambda: store.sites(s), s), (lambda: store.versions(s, "s"), s / "s"),
                           (lambda: contexts.sites(s), s / contexts.FOLDER), (lambda: store.listing(s), s)):
        with pytest.raises(TppError, match=re.escape(f"'{folder}' {said}")):
            listed()
    for args, folder in ((["adapters", "ls", s], s), (["adapters", "rollback", s, "--site", "s"], s / "s"),
                         (["context", "list", s], s / contexts.FOLDER),
                         (["context", "publish", tmp_path / "plain", tmp_path / "no_set", "--site", "c"],
                          tmp_path / "plain")):
        assert main([str(a) for a in args]) == 2
        assert capsys.readouterr().err == f"error: folder '{folder}' {said}\n", args
    for path, folder in (("/v1/sites", s), ("/v1/contexts", s / contexts.FOLDER)):
        status, answer, _ = call(app, "GET", path)
        assert (status, answer) == (409, {"detail": f"folder '{folder}' {said}"}), path



def test_a_site_whose_pointer_cannot_be_looked_at_is_listed_saying_why(tmp_path, monkeypatch):
    """A site folder without search permission (its pointer cannot even be stat'ed; made here for root): the store
    still lists, that site among the others with the reason, and opening it is a TppError naming the pointer."""
    s = published_pointers(tmp_path)
    (s / "t").mkdir()  # a folder without a pointer: no site
    pointer = os.fspath(s / "s" / "current")
    for name in ("stat", "lstat"):
        def refused(path, *args, _real=getattr(os, name), **kwargs):
            if not isinstance(path, int) and os.fspath(path) == pointer:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), pointer)
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, refused)
    assert store.sites(s) == ["s"]
    [row] = store.listing(s)
    assert row["backbone_match"] == "UNREADABLE" and "cannot be looked at (Permission denied)" in row["method"]
    with pytest.raises(TppError, match=re.escape(f"'{pointer}' cannot be looked at (Permission denied); refused.")):
        store.open_version(s, "s")

def test_store_folders_without_read_permission_are_named(tmp_path):
    """The same with real permissions (chmod 000): skipped where they mean nothing (root)."""
    from tpp.serve import contexts

    s = published_pointers(tmp_path)
    (tmp_path / "locked").mkdir()
    locked = [tmp_path / "locked", s / "s", s / contexts.FOLDER]
    for folder in locked:
        folder.chmod(0)
    try:
        if os.access(s / "s", os.R_OK):
            pytest.skip("chmod 000 does not stop this user (root) from listing a folder")
        for listed, folder in ((lambda: store.sites(tmp_path / "locked"), locked[0]),
                               (lambda: store.versions(s, "s"), s / "s"),
                               (lambda: contexts.sites(s), s / contexts.FOLDER)):
            with pytest.raises(TppError, match=re.escape(f"'{folder}' cannot be listed (Permission denied)")):
                listed()
        [row] = store.listing(s)  # a site whose pointer cannot be looked at is listed, saying why
        assert row["site"] == "s" and row["backbone_match"] == "UNREADABLE" and "Permission denied" in row["method"]
    finally:
        for folder in locked:
            folder.chmod(0o755)


def test_store_files_over_their_size_cap_are_refused_unread_naming_file_and_size(tmp_path, monkeypatch):
    """A card, README.md or weights file of a store (or of a folder being published) over its cap is refused from
    its size, before it is read, naming the file and the size: a forged store cannot make tpp read gigabytes."""
    from tpp import capped_read
    from tpp.capped_read import METADATA_LIMIT

    version = "0123456789abcdef"

    def forged(site, **files):
        write_dir(tmp_path / "store" / site / version, files)
        (tmp_path / "store" / site / "current").write_text(version + "\n")
        return tmp_path / "store" / site / version

    def refused(path, size, limit=METADATA_LIMIT):
        return re.escape(f"'{path}' has {size:,} bytes, larger than the {limit:,} bytes such a file may have")

    big = b" " * (METADATA_LIMIT + 1)
    folder = forged("card", **{"tpp_card.json": big})
    for read in (lambda: store.current(tmp_path / "store", "card"),
                 lambda: store.card_of(tmp_path / "store", "card", version),
                 lambda: store.open_version(tmp_path / "store", "card")):
        with pytest.raises(TppError, match=refused(folder / "tpp_card.json", len(big))):
            read()
    with pytest.raises(TppError, match=refused(folder / "tpp_card.json", len(big))):
        store.publish(folder, tmp_path / "other", "y")  # publishing a folder reads its card capped too
    folder = forged("readme", **{"README.md": big, "tpp_card.json": b"{}"})
    with pytest.raises(TppError, match=refused(folder / "README.md", len(big))):
        store.open_version(tmp_path / "store", "readme")
    monkeypatch.setattr(capped_read, "WEIGHTS_LIMIT", 2**20)  # the real cap (4 GiB) would need a huge file
    folder = forged("weights", **{"tpp_card.json": b"{}"})
    with open(folder / "adapter_model.safetensors", "wb") as fh:
        fh.truncate(2**33)  # sparse: 8 GiB that take no disk; reading them would take 8 GiB of memory
    with pytest.raises(TppError, match=refused(folder / "adapter_model.safetensors", 2**33, 2**20)):
        store.open_version(tmp_path / "store", "weights")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs RLIMIT_AS and /proc/self/status (Linux)")
def test_a_small_file_is_read_without_a_buffer_the_size_of_its_cap(tmp_path):
    """read_regular asked the file object for limit + 1 bytes, and Python allocates a read's whole buffer before
    reading: every weights file, 7 KiB or not, took a 4 GiB allocation (a MemoryError under ulimit -v, with strict
    overcommit or on a host with less memory), every context image one of its byte cap. Read in a process allowed
    1 GiB more address space than it uses once tpp is imported."""
    import subprocess
    import sys
    import textwrap

    from safetensors.torch import save_file

    from tpp.adapter_dir import WEIGHTS

    weights = tmp_path / WEIGHTS
    save_file({"w": torch.ones(4)}, str(weights))
    script = textwrap.dedent(f"""
        import resource
        from tpp.capped_read import read_regular
        used = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY))
        print(len(read_regular({str(weights)!r})))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(weights.stat().st_size)]


def test_a_file_growing_while_it_is_read_is_read_to_its_cap_and_refused_past_it(tmp_path, monkeypatch):
    """The size checked (fstat) is not trusted while reading: a file that grows after it stays readable up to the
    cap, and is refused past it."""
    from tpp import capped_read

    path = tmp_path / "tpp_card.json"
    path.write_bytes(b"x" * 10)
    real = os.fstat

    def grown(fd):  # the file grows right after its size was taken
        info = real(fd)
        with open(path, "ab") as fh:
            fh.write(b"y" * 90)
        return info

    monkeypatch.setattr(capped_read.os, "fstat", grown)
    assert capped_read.read_regular(path, limit=200) == b"x" * 10 + b"y" * 90
    with pytest.raises(TppError, match="grew larger than the 150 bytes"):
        capped_read.read_regular(path, limit=150)
