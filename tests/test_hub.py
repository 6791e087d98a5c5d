"""`tpp adapters push` / `pull`, never over the network: push commits to a stub Hub on 127.0.0.1 (the routes
huggingface_hub calls: repo create, branch, validate-yaml, preupload, NDJSON commit), pull reads a pre-filled
Hugging Face cache with HF_HUB_OFFLINE=1. A hostile repo (a pickle file, a tampered card, foreign files,
links out of the cache) is refused with one line and the store stays as it was."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import run_cli, run_cli_subprocess
from serving_fixtures import finetune_site

from tpp.capped_read import METADATA_LIMIT
from tpp.serve import store

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a commit hash of the cached snapshot


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny backbone, one LoRA fine-tune published as site 'a', and the version's files."""
    from conftest import make_backbone, make_medmnist

    base = tmp_path_factory.mktemp("hub")
    backbone = make_backbone(base / "backbone", "vit_mae")
    run = finetune_site(backbone, make_medmnist(base / "data"), base / "runs" / "a", ["adapter.r=2"])
    sv = store.publish(run, base / "store", "a")
    files = {p.name: p.read_bytes() for p in sv.path.iterdir()}
    return {"backbone": backbone, "store": base / "store", "version": sv.version, "files": files}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes): what 'the store is unchanged' compares."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- a stub Hub on loopback ------------------------------------------------------------------------------

class StubHub(BaseHTTPRequestHandler):
    """The Hub routes huggingface_hub's create_repo / create_branch / create_commit call; every request is
    recorded in ``server.calls`` as (method, path, parsed body)."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        ndjson = self.headers.get("Content-Type", "").startswith("application/x-ndjson")
        body = [json.loads(line) for line in raw.splitlines() if line] if ndjson else json.loads(raw or b"{}")
        self.server.calls.append(("POST", path, body, self.headers.get("Authorization")))
        if self.server.refuse:
            return self._reply(self.server.refuse, {"error": "Invalid credentials in Authorization header"})
        endpoint = f"http://127.0.0.1:{self.server.server_port}"
        if path == "/api/repos/create":
            self._reply(200, {"url": f"{endpoint}/{body.get('organization')}/{body['name']}"})
        elif path == "/api/validate-yaml":
            bad = self.server.bad_yaml
            self._reply(400 if bad else 200, {"errors": [{"message": bad}] if bad else [], "warnings": []})
        elif "/preupload/" in path:
            self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                        for f in body["files"]]})
        elif "/branch/" in path:
            self._reply(200, {})
        elif "/commit/" in path:
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            self._reply(200, {"commitUrl": f"{endpoint}/{repo}/commit/{COMMIT}", "commitOid": COMMIT,
                              "pullRequestUrl": None})
        else:
            self._reply(404, {"error": f"no route {path}"})

    def do_GET(self):  # noqa: N802
        self.server.calls.append(("GET", self.path, None, None))
        if "/tree/" in self.path and not self.server.refuse:  # the repo's file list: [{type, path, size, oid}]
            return self._reply(200, [dict(type="file", oid="0" * 40, **f) for f in self.server.tree])
        path = self.path.split("?")[0]
        repo = path.removeprefix("/api/models/").split("/revision/")[0]
        if path.startswith("/api/models/") and repo.count("/") == 1 and not self.server.refuse:  # model_info
            siblings = [{"rfilename": f["path"], "size": f["size"]} for f in self.server.tree]
            return self._reply(200, {"id": repo, "sha": COMMIT, "siblings": siblings})
        if "/resolve/" in path and not self.server.refuse:
            return self._file(path, body=True)
        self._reply(self.server.refuse or 404, {"error": "not in the stub"})

    def do_HEAD(self):  # noqa: N802
        self.server.calls.append(("HEAD", self.path, None, None))
        self._file(self.path.split("?")[0], body=False)

    def _file(self, path: str, body: bool) -> None:
        """``/OWNER/NAME/resolve/REV/FILE``: the bytes in ``server.content`` with the headers hf_hub_download reads."""
        import hashlib

        data = self.server.content.get(path.split("/resolve/")[1].split("/", 1)[1])
        if data is None:
            return self._reply(404, {"error": "no such file"})
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


@contextlib.contextmanager
def stub_hub(refuse: int | None = None):
    """The stub on a free loopback port; ``refuse``: answer every request with this status instead."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHub)
    server.calls, server.refuse, server.tree, server.content, server.bad_yaml = [], refuse, [], {}, None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def committed_files(calls) -> tuple[dict, dict[str, bytes], list[str]]:
    """(commit header, {path: bytes}, deleted paths) of the one NDJSON commit the stub received."""
    commits = [body for method, path, body, _ in calls if "/commit/" in path]
    assert len(commits) == 1, calls
    header = next(item["value"] for item in commits[0] if item["key"] == "header")
    files = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
             for item in commits[0] if item["key"] == "file"}
    deleted = [item["value"]["path"] for item in commits[0] if item["key"] == "deletedFile"]
    assert all(item["key"] in ("header", "file", "deletedFile") for item in commits[0])  # no LFS pointers
    return header, files, deleted


# -- push ------------------------------------------------------------------------------------------------

def test_push_commits_the_verified_version_with_its_model_card(world, tmp_path):
    """Through a fresh process, so HF_ENDPOINT is read as a user sets it: the repo is created private, the
    branch made, and one commit carries exactly the version's files (README.md included) and names site,
    version and content hash."""
    assert world["files"]["README.md"].startswith(b"---\n")  # the model card publishing keeps (content-hashed)
    with stub_hub() as hub:
        hub.tree = [{"path": ".gitattributes", "size": 10}, {"path": "model.safetensors", "size": 10},
                    {"path": "README.md", "size": 10}]  # an earlier push of another method's adapter
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}", "HF_HUB_OFFLINE": "0",
               "HF_TOKEN": "hf_stub_token", "HF_HOME": str(tmp_path / "hf_home")}
        result = run_cli_subprocess("adapters", "push", world["store"], "--site", "a", "--repo", "owner/site-a",
                                    "--revision", "dev", "--private", "--backbone", world["backbone"], env=env)
        calls = list(hub.calls)
    assert result.returncode == 0, result.stderr
    assert f"a@{world['version']}" in result.stdout and "owner/site-a@dev" in result.stdout
    create = next(body for _, path, body, _ in calls if path == "/api/repos/create")
    assert create["name"] == "site-a" and create["organization"] == "owner" and create["visibility"] == "private"
    assert any(path == "/api/models/owner/site-a/branch/dev" for _, path, _, _ in calls)
    assert any(path == "/api/models/owner/site-a/preupload/dev" for _, path, _, _ in calls)
    assert all(auth == "Bearer hf_stub_token" for method, _, _, auth in calls if method == "POST")
    header, files, deleted = committed_files(calls)
    assert files == world["files"]
    assert deleted == ["model.safetensors"] and "removed model.safetensors" in result.stdout
    assert "site a" in header["summary"] and header["summary"].count(world["version"]) == 2


@pytest.fixture()
def hub_env(monkeypatch, tmp_path):
    """In this process: online (HF_HUB_OFFLINE off), a token, and no token file of the user's."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_stub_token")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "harnesses.json"))  # not in ~/.cache
    return constants


def test_push_refuses_a_version_that_does_not_verify_and_sends_nothing(world, tmp_path, hub_env, monkeypatch,
                                                                      capsys):
    s = tmp_path / "store"
    version = store.publish(world["store"] / "a" / world["version"], s, "a").version
    weights = s / "a" / version / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # flipped after publishing
    weights.write_bytes(bytes(data))
    with stub_hub() as hub:
        monkeypatch.setattr(hub_env, "ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
        assert run_cli("adapters", "push", s, "--site", "a", "--repo", "owner/x") == 2
        assert run_cli("adapters", "push", s, "--site", "a", "--version", "0" * 16, "--repo", "owner/x") == 2
        assert hub.calls == []
    err = capsys.readouterr().err.splitlines()
    assert "content hash does not match" in err[0] and "Nothing was pushed" in err[0]
    assert f"site 'a' has no version {'0' * 16}" in err[1] and len(err) == 2  # one line each, no traceback


def test_push_with_another_backbone_is_refused_before_anything_is_sent(world, tmp_path, hub_env, monkeypatch,
                                                                       capsys):
    from conftest import make_backbone

    other = make_backbone(tmp_path / "other", "vit_mae", seed=3)
    with stub_hub() as hub:
        monkeypatch.setattr(hub_env, "ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
        assert run_cli("adapters", "push", world["store"], "--site", "a", "--repo", "owner/x", "--backbone", other) == 2
        assert hub.calls == []
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "does not load on backbone" in err[0] and "nothing was pushed" in err[0], err


def test_push_never_deletes_foreign_files_of_the_repo(world, hub_env, monkeypatch, capsys):
    with stub_hub() as hub:
        hub.tree = [{"path": ".gitattributes", "size": 10}, {"path": "notes/protocol.pdf", "size": 10}]
        monkeypatch.setattr(hub_env, "ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
        assert run_cli("adapters", "push", world["store"], "--site", "a", "--repo", "owner/x") == 2
        assert not any("/commit/" in path or "/preupload/" in path for _, path, _, _ in hub.calls)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes/protocol.pdf" in err[0] and "Nothing was pushed" in err[0], err


def test_push_of_a_model_card_the_hub_refuses_is_one_line(world, hub_env, monkeypatch, capsys):
    with stub_hub() as hub:  # the published model card, refused by the Hub's YAML check
        hub.bad_yaml = "license must be a string"
        monkeypatch.setattr(hub_env, "ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
        assert run_cli("adapters", "push", world["store"], "--site", "a", "--repo", "owner/x") == 2
        assert not any("/commit/" in path for _, path, _, _ in hub.calls)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the commit" in err[0] and "license must be a string" in err[0], err


def test_push_without_a_token_or_offline_is_one_clear_line(world, hub_env, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    assert run_cli("adapters", "push", world["store"], "--site", "a", "--repo", "owner/x") == 2
    monkeypatch.setattr(hub_env, "HF_HUB_OFFLINE", True)
    assert run_cli("adapters", "push", world["store"], "--site", "a", "--repo", "owner/x") == 2
    assert run_cli("adapters", "push", world["store"], "--site", "a", "--repo", "not a repo") == 2
    err = capsys.readouterr().err.splitlines()
    assert "HF_TOKEN" in err[0] and "hf auth login" in err[0]
    assert "HF_HUB_OFFLINE is set" in err[1]
    assert "is not a Hugging Face repo id" in err[2] and len(err) == 3


def test_push_names_a_refusing_hub_in_one_line(world, hub_env, monkeypatch, capsys):
    """A Hub that refuses the token (401) or the repo (404): one line naming the repo and what to do."""
    for status, expected in ((401, "refused the token"), (404, "answered with an error (404)")):
        with stub_hub(refuse=status) as hub:
            monkeypatch.setattr(hub_env, "ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
            assert run_cli("adapters", "push", world["store"], "--site", "a", "--repo", "owner/x") == 2
            assert hub.calls and not any("/commit/" in path for _, path, _, _ in hub.calls)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'owner/x'" in err[0] and expected in err[0], err


# -- pull ------------------------------------------------------------------------------------------------

def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes], ref: str = "main",
               links: dict | None = None) -> Path:
    """The Hugging Face cache layout of one repo: blobs, ``snapshots/<commit>/`` linking to them, ``refs/REF``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, (name, data) in enumerate(sorted(files.items())):
        blob = repo / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    for name, target in (links or {}).items():
        os.symlink(target, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


def test_pull_from_the_offline_cache_publishes_the_same_version(world, tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 and HF_HUB_CACHE set as a user would: the pushed files (plus the
    .gitattributes, which is not kept) become the same version in another store, current for the new site."""
    cache = tmp_path / "hf_cache"
    fill_cache(cache, "owner/site-a", dict(world["files"], **{".gitattributes": b"*.x\n"}),
               ref="v1")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    s = tmp_path / "store"
    result = run_cli_subprocess("adapters", "pull", "owner/site-a@v1", s, "--site", "b", "--version",
                                world["version"], "--backbone", world["backbone"], env=env)
    assert result.returncode == 0, result.stderr
    assert f"b@{world['version']}" in result.stdout and COMMIT[:12] in result.stdout
    sv = store.open_version(s, "b")
    assert sv.version == world["version"] and sv.files == world["files"]
    assert not list(s.rglob(".*tmp*")) and not (s / "b" / world["version"] / ".gitattributes").exists()


@pytest.fixture()
def offline_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


def hostile_repos(files: dict[str, bytes], outside: Path) -> dict[str, tuple[dict, dict, str]]:
    """name -> (repo files, links in the snapshot, what the refusal says)."""
    card = json.loads(files["tpp_card.json"])
    tampered = dict(card, backbone=dict(card["backbone"], hash="f" * 64))
    flipped = bytearray(files["adapter_model.safetensors"])
    flipped[-3] ^= 0x40
    return {
        "pickle_weights": (dict(files, **{"pytorch_model.bin": b"\x80\x04K\x01."}), {}, "pickle-based file"),
        "pickle_only": ({k: v for k, v in files.items() if k != "adapter_model.safetensors"} |
                        {"adapter_model.pt": b"\x80\x04K\x01."}, {}, "pickle-based file"),
        "foreign_file": (dict(files, **{"run.py": b"import os"}), {}, "no part of a tpp adapter folder"),
        "tampered_backbone_hash": (dict(files, **{"tpp_card.json": json.dumps(tampered).encode()}), {},
                                   "not on --backbone"),
        "other_content": (dict(files, **{"adapter_model.safetensors": bytes(flipped)}), {}, "not the expected version"),
        "link_out_of_cache": ({k: v for k, v in files.items() if k != "head.safetensors"},
                              {"head.safetensors": str(outside)}, "leads outside the repo's cache folder"),
        "oversized_readme": (dict(files, **{"README.md": b"#" * (METADATA_LIMIT + 1)}), {},
                             f"has {METADATA_LIMIT + 1:,} bytes, larger than the {METADATA_LIMIT:,} bytes"),
        "no_card": ({k: v for k, v in files.items() if k != "tpp_card.json"}, {}, "not a tpp adapter directory"),
    }


@pytest.mark.parametrize("case", ["pickle_weights", "pickle_only", "foreign_file", "tampered_backbone_hash",
                                  "other_content", "link_out_of_cache", "oversized_readme",
                                  "no_card"])
def test_a_hostile_repo_is_refused_and_the_store_is_unchanged(world, tmp_path, offline_cache, capsys, case):
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(world["files"]["head.safetensors"])
    repo_files, links, reason = hostile_repos(world["files"], outside)[case]
    fill_cache(offline_cache, "owner/evil", repo_files, links=links)
    s = tmp_path / "store"
    store.publish(world["store"] / "a" / world["version"], s, "b")  # site b already serves a version
    before = tree(s)
    args = ["adapters", "pull", "owner/evil", s, "--site", "b", "--backbone", world["backbone"]]
    if case == "other_content":
        args += ["--version", world["version"]]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]  # not the backbone's progress bar
    assert len(lines) == 1 and reason in lines[0] and "owner/evil" in lines[0] and "Traceback" not in err, err
    assert tree(s) == before


def test_a_fifo_in_the_cache_is_refused_without_blocking(world, tmp_path, offline_cache, capsys):
    snapshot = fill_cache(offline_cache, "owner/fifo", {k: v for k, v in world["files"].items()
                                                         if k != "head.safetensors"})
    os.mkfifo(snapshot / "head.safetensors")  # opening it for reading would wait for a writer forever
    assert run_cli("adapters", "pull", "owner/fifo", tmp_path / "store", "--site", "b") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "head.safetensors' is not a regular file" in err[0], err
    assert not (tmp_path / "store").exists()



def test_a_snapshot_that_cannot_be_listed_is_one_line_naming_it(world, tmp_path, offline_cache, monkeypatch, capsys):
    """The cached snapshot folder cannot be listed (permission denied; root ignores chmod 000, so os.scandir and
    os.listdir refuse it here): one line naming the folder, exit 2, nothing published, never a raw OSError."""
    import errno

    snapshot = fill_cache(offline_cache, "owner/locked", world["files"])
    for name in ("scandir", "listdir"):
        def refused(path=".", *args, _real=getattr(os, name)):
            if not isinstance(path, int) and os.fspath(path) == str(snapshot):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return _real(path, *args)
        monkeypatch.setattr(os, name, refused)
    assert run_cli("adapters", "pull", "owner/locked", tmp_path / "store", "--site", "b") == 2
    err = capsys.readouterr().err
    assert err == f"error: folder '{snapshot}' cannot be listed (Permission denied); refused.\n", err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("listing, reason", [
    ([{"path": "tpp_card.json", "size": 900}, {"path": "pytorch_model.bin", "size": 4000}], "pickle-based file"),
    ([{"path": "tpp_card.json", "size": 900}, {"path": "adapter_model.safetensors", "size": 5 * 2**30}],
     "more than the 4096 MiB"),
    ([{"path": "tpp_card.json", "size": 50 * 2**20}], "has 50.0 MiB, more than the 1 MiB"),  # METADATA_LIMIT
    ([{"path": "sub/adapter_model.safetensors", "size": 10}], "no part of a tpp adapter folder"),
])
def test_online_pull_screens_the_file_list_before_downloading(tmp_path, hub_env, monkeypatch, capsys, listing,
                                                               reason):
    with stub_hub() as hub:
        hub.tree = listing
        monkeypatch.setattr(hub_env, "ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
        monkeypatch.setattr(hub_env, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        assert run_cli("adapters", "pull", "owner/evil", tmp_path / "store", "--site", "b") == 2
        paths = [path for _, path, _, _ in hub.calls if path != "/api/agent-harnesses"]  # the library's own
    assert paths == ["/api/models/owner/evil?blobs=true"]  # the file list, nothing downloaded
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and reason in err[0] and "owner/evil" in err[0], err
    assert not (tmp_path / "store").exists() and not (tmp_path / "hf_cache").exists()


def test_online_pull_downloads_screens_and_publishes(world, tmp_path, hub_env, monkeypatch):
    """Online through the stub: file list, snapshot_download into the cache (refs/main written), publish; then
    the same pull works offline from that cache."""
    with stub_hub() as hub:
        hub.content = dict(world["files"], **{".gitattributes": b"*.safetensors filter=lfs\n"})
        hub.tree = [{"path": name, "size": len(data)} for name, data in hub.content.items()]
        endpoint = f"http://127.0.0.1:{hub.server_port}"
        monkeypatch.setattr(hub_env, "ENDPOINT", endpoint)
        template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"  # read from HF_ENDPOINT at import
        monkeypatch.setattr(hub_env, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(hub_env, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        assert run_cli("adapters", "pull", "owner/site-a", tmp_path / "store", "--site", "b") == 0
        downloads = sorted(path.split("/")[-1] for method, path, _, _ in hub.calls if method == "GET" and
                           "/resolve/" in path)
    assert downloads == sorted(hub.content)
    assert store.open_version(tmp_path / "store", "b").files == world["files"]
    monkeypatch.setattr(hub_env, "HF_HUB_OFFLINE", True)
    assert run_cli("adapters", "pull", "owner/site-a", tmp_path / "store2", "--site", "c") == 0
    assert store.open_version(tmp_path / "store2", "c").version == world["version"]


def test_pull_with_the_hub_unreachable_uses_the_cache(world, tmp_path, hub_env, monkeypatch):
    """Online mode, but nothing listens at the endpoint: the cached snapshot is used, as snapshot_download does."""
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(hub_env, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hub_env, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    fill_cache(tmp_path / "hf_cache", "owner/site-a", world["files"])
    assert run_cli("adapters", "pull", "owner/site-a", tmp_path / "store", "--site", "b") == 0
    assert store.open_version(tmp_path / "store", "b").version == world["version"]


def test_pull_offline_with_nothing_cached_or_a_bad_name_is_one_line(tmp_path, offline_cache, capsys):
    offline_cache.mkdir()
    assert run_cli("adapters", "pull", "owner/absent", tmp_path / "store", "--site", "b") == 2
    assert run_cli("adapters", "pull", "../etc/passwd", tmp_path / "store", "--site", "b") == 2
    assert run_cli("adapters", "pull", "owner/x@..", tmp_path / "store", "--site", "b") == 2
    assert run_cli("adapters", "pull", "owner/x", tmp_path / "store", "--site", "../b") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not in the Hugging Face cache" in err[0] and "HF_HUB_OFFLINE" in err[0]
    assert "is not a Hugging Face repo id" in err[1]
    assert "is not a branch, tag or commit name" in err[2]
    assert "site name '../b' is not allowed" in err[3] and len(err) == 4
    assert not (tmp_path / "store").exists()
