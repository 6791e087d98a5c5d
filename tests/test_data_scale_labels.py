"""``benchmarks/data_scale.py seg``: rows are labelled by the revision measured, not by what that revision held."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import data_scale  # noqa: E402

OLD_ROWS = [{"n": n, "path": path, "revision": rev, "tpp": "x", "recipe": recipe, "peak_minus_baseline_mib": mib,
             "seconds": 1.0, "size": 128}
            for n, mib in ((500, 100.0), (2000, 110.0)) for recipe in ("finetune", "evaluate")
            for path, rev in (("streamed", "HEAD"), ("held", "b5cd6fe~1"))]


def _fake_measurement(monkeypatch, calls):
    """seg() with its folders, backbone, worktree and recipe runs replaced: run() records its env, makes its
    output folder (seg() removes it) and reports 300 MiB for the baseline, 120 for this checkout."""
    monkeypatch.setattr(data_scale, "checkout", lambda rev, where: {"PYTHONPATH": f"worktree of {rev}"})
    monkeypatch.setattr(data_scale, "make_backbone", lambda path, *a: path)
    monkeypatch.setattr(data_scale, "seg_config", lambda path, *a: path)
    monkeypatch.setattr(data_scale, "make_seg_folder", lambda path, *a: path.mkdir() or path)

    def run(recipe, overrides, backbone, env, config):
        out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
        Path(out).mkdir(parents=True)
        calls.append((recipe, env.get("PYTHONPATH")))
        return {"tpp": env.get("PYTHONPATH", "here"), "seconds": 1.0,
                "peak_minus_baseline_mib": 300.0 if "PYTHONPATH" in env else 120.0}
    monkeypatch.setattr(data_scale, "run", run)


def test_a_baseline_is_labelled_by_its_revision_and_stored_rows_of_another_one_are_not_taken_for_it(
        tmp_path, monkeypatch):
    (tmp_path / "data_scale_seg_rows.json").write_text(json.dumps(OLD_ROWS))
    calls = []
    _fake_measurement(monkeypatch, calls)
    args = SimpleNamespace(out=tmp_path, malloc_threshold=0, baseline="938b57d", depth=1, sizes=[500, 2000],
                           recipes=["finetune", "evaluate"], steps=1, batch_size=2, num_workers=0, data_root="-")
    data = data_scale.seg(args)
    # this checkout's sizes were stored already; only 938b57d runs (the stored b5cd6fe~1 rows are not its)
    assert calls == [("finetune", "worktree of 938b57d"), ("evaluate", "worktree of 938b57d")] * 2
    paths = {(r["path"], r["revision"]) for r in data["rows"]}
    assert paths == {("HEAD", "HEAD"), ("baseline (b5cd6fe~1)", "b5cd6fe~1"), ("baseline (938b57d)", "938b57d")}
    stored = json.loads((tmp_path / "data_scale_seg_rows.json").read_text())
    assert {(r["path"], r["revision"]) for r in stored} == paths  # the first version's rows read and relabelled
    assert data["flat_within_20pct"] and set(data["largest_over_smallest"]) == {
        f"{p} {r}" for p in ("HEAD", "baseline (b5cd6fe~1)", "baseline (938b57d)") for r in ("finetune", "evaluate")}
    diff = {(d["baseline"], d["n"], d["recipe"]): d["mib"] for d in data["baseline_minus_head"]}
    assert diff["baseline (938b57d)", 2000, "finetune"] == 190.0 and diff["baseline (b5cd6fe~1)", 500, "evaluate"] == 0
    table = data_scale.seg_table(data)
    assert "| baseline (938b57d) | finetune | 300 |" in table and "| HEAD | evaluate |" in table
    assert "held (" not in table and "Held minus" not in table and "baseline (938b57d) minus HEAD" in table
