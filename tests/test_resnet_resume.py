"""A ResNet-18 suite cell paused at its deadline continues to exactly the model of an uninterrupted run."""
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_medmnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report  # noqa: E402
import resnet  # noqa: E402

PROTOCOL = dict(resnet.PROTOCOL, epochs=4, milestones=[2], batch_size=16)


@pytest.fixture()
def dataset(tmp_path):
    from tpp.data.arrays import load_medmnist

    return load_medmnist("breastmnist", str(make_medmnist(tmp_path / "data", n=(40, 10, 20))))


def trained(monkeypatch, dataset, **kwargs) -> dict:
    """The final weights train_resnet tests (captured at its evaluation) and its result."""
    final = {}
    real = resnet.evaluate

    def capture(model, images, labels):
        final.update({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, images, labels)

    monkeypatch.setattr(resnet, "evaluate", capture)
    result = resnet.train_resnet(dataset, 1.0, 3, PROTOCOL, widths=(4, 4, 8, 8), **kwargs)
    return {"weights": final, "result": result}


def test_a_paused_cell_continues_to_the_weights_of_an_uninterrupted_run(monkeypatch, dataset, tmp_path):
    straight = trained(monkeypatch, dataset)
    state = tmp_path / "partial" / "f1_s3.pt"
    for stop in (1, 2, 3):  # one epoch per segment, across the learning-rate milestone (the schedule's state)
        with pytest.raises(report.CellPaused, match=f"breastmnist resnet18 100% seed 3 after epoch {stop} of 4"):
            resnet.train_resnet(dataset, 1.0, 3, PROTOCOL, widths=(4, 4, 8, 8), checkpoint=state, deadline=0.0)
        assert resnet.epochs_done(state) == stop
    resumed = trained(monkeypatch, dataset, checkpoint=state)
    assert resumed["weights"].keys() == straight["weights"].keys()
    assert all(torch.equal(resumed["weights"][k], straight["weights"][k]) for k in straight["weights"])
    assert resumed["result"]["test"] == straight["result"]["test"]
    assert not state.exists() and not state.with_suffix(".json").exists()  # nothing left behind
    assert straight["result"]["device"].startswith("cuda:0 (" if torch.cuda.is_available() else "cpu (")  # auto


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cell_paused_on_the_cpu_continues_on_the_gpu(monkeypatch, dataset, tmp_path):
    """The saved state is device-free: a cell paused on a CPU machine finishes on a GPU one (weights and Adam's
    moments moved there), records the GPU, and ends near the CPU's uninterrupted run (GPU kernels round
    differently, so not bit-identical: closer to it than a tenth of the way training moved the weights)."""
    straight = trained(monkeypatch, dataset, device="cpu")
    state = tmp_path / "f1_s3.pt"
    with pytest.raises(report.CellPaused):
        resnet.train_resnet(dataset, 1.0, 3, PROTOCOL, widths=(4, 4, 8, 8), checkpoint=state, deadline=0.0,
                            device="cpu")
    resumed = trained(monkeypatch, dataset, checkpoint=state, device="cuda")
    assert resumed["result"]["device"].startswith("cuda:0 (") and not state.exists()
    assert all(v.is_cuda for v in resumed["weights"].values())
    start = resnet.TrainingState.fresh(1, 2, (4, 4, 8, 8), PROTOCOL, 3, "").model.state_dict()
    learned = [k for k, v in start.items() if v.is_floating_point()]
    moved = torch.cat([(straight["weights"][k] - start[k]).flatten() for k in learned]).norm()
    apart = torch.cat([(resumed["weights"][k].cpu() - straight["weights"][k]).flatten() for k in learned]).norm()
    assert moved > 0 and apart < 0.1 * moved


def test_the_state_of_another_cell_is_ignored_and_the_cell_starts_over(monkeypatch, dataset, tmp_path, capsys):
    state = tmp_path / "f1_s3.pt"
    with pytest.raises(report.CellPaused):
        resnet.train_resnet(dataset, 1.0, 4, PROTOCOL, widths=(4, 4, 8, 8), checkpoint=state, deadline=0.0)
    assert json.loads(state.with_suffix(".json").read_text())["epochs_done"] == 1  # seed 4's state
    straight = trained(monkeypatch, dataset)
    resumed = trained(monkeypatch, dataset, checkpoint=state)  # seed 3 with seed 4's file: from epoch 0
    assert "the state of another cell or protocol" in capsys.readouterr().out
    assert all(torch.equal(resumed["weights"][k], straight["weights"][k]) for k in straight["weights"])


def test_a_torn_state_file_is_reported_and_the_cell_starts_over(monkeypatch, dataset, tmp_path, capsys):
    state = tmp_path / "f1_s3.pt"
    state.write_bytes(b"PK\x03\x04 not a whole file")
    trained(monkeypatch, dataset, checkpoint=state)
    assert "unreadable" in capsys.readouterr().out and not state.exists()


def test_a_state_that_no_longer_fits_the_network_is_reported_and_the_cell_starts_over(monkeypatch, dataset, tmp_path,
                                                                                      capsys):
    """Its tag fits but its tensors do not (the network's code changed between invocations): the cell runs from
    epoch 0 instead of failing on every invocation."""
    state = tmp_path / "f1_s3.pt"
    with pytest.raises(report.CellPaused):
        resnet.train_resnet(dataset, 1.0, 3, PROTOCOL, widths=(4, 4, 8, 8), checkpoint=state, deadline=0.0)
    saved = torch.load(state, weights_only=True)
    saved["model"].pop("stem.0.weight")
    torch.save(saved, state)
    straight = trained(monkeypatch, dataset)
    resumed = trained(monkeypatch, dataset, checkpoint=state)
    assert "does not load into this network" in capsys.readouterr().out and not state.exists()
    assert all(torch.equal(resumed["weights"][k], straight["weights"][k]) for k in straight["weights"])
