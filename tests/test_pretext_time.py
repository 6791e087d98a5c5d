"""benchmarks/pretext_time.py: a run's log split into fixed and per-step time, the DINO / MAE ratios."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pretext_time  # noqa: E402


def write_log(path, step_times):
    lines = [{"time": 0.5, "event": "data"}] + [{"time": t, "event": "step", "step": i + 1}
                                                for i, t in enumerate(step_times)]
    path.write_text("\n".join(json.dumps(r) for r in lines))
    return path


def test_the_first_step_counts_as_fixed_time_and_the_rest_gives_seconds_per_step(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [10.0, 12.0, 13.0, 14.0, 15.0])  # step 1 carries 9 s of set-up
    before, per_step = pretext_time.split_log(log, 5)
    assert per_step == pytest.approx(1.0) and before == pytest.approx(9.0)
    with pytest.raises(RuntimeError, match="expected 6 step events"):
        pretext_time.split_log(log, 6)  # a run that stopped early is no measurement


def test_ratios_are_of_medians_and_projected_with_the_fixed_part(tmp_path):
    def run(pretext, wall, per_step, threads=1):
        return {"pretext": pretext, "threads": threads, "wall_s": wall, "per_step_s": per_step,
                "fixed_s": wall - 10 * per_step}

    results = [run("mae", 30, 1.0), run("mae", 32, 1.2), run("mae", 100, 9.0),  # one outlier: medians ignore it
               run("dino", 60, 4.0), run("dino", 62, 4.2), run("dino", 58, 3.8)]
    [row] = pretext_time.summarise(results, steps_at=400)
    assert row["mae_wall_s"] == 32 and row["ratio_wall"] == pytest.approx(60 / 32)
    assert row["ratio_per_step"] == pytest.approx(4.0 / 1.2)
    mae_fixed, dino_fixed = 20.0, 20.0  # medians of (20, 20, 10) and (20, 20, 20)
    assert row["ratio_projected"] == pytest.approx((dino_fixed + 400 * 4.0) / (mae_fixed + 400 * 1.2))
    assert "| 1 |" in pretext_time.markdown([row], 10)
