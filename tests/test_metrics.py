import pytest
import torch

from tpp.metrics import classification_metrics


def test_metrics_binary_and_multiclass():
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4], [0.8, 0.2]])
    m = classification_metrics(probs, labels)
    assert m["auroc"] == pytest.approx(1.0) and m["accuracy"] == pytest.approx(5 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == [[3, 0], [1, 2]]
    labels3 = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2])
    probs3 = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 1, 0, 0, 1, 2]), 3).float() * 0.8 + 0.2 / 3
    m3 = classification_metrics(probs3, labels3)
    assert m3["accuracy"] == pytest.approx(8 / 9) and 0.5 < m3["auroc"] <= 1.0
    assert len(m3["confusion_matrix"]) == 3 and m3["auroc_ci95"][0] <= m3["auroc_ci95"][1]


def test_auroc_undefined_on_one_class_is_nan_and_written_as_null(tmp_path):
    """A split with one class has no AUROC (torchmetrics says 0.0); metrics.json stays strict JSON."""
    import json
    import math

    from tpp.rundir import RunDir

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    m = classification_metrics(probs, torch.tensor([1, 1, 1]))
    assert math.isnan(m["auroc"]) and m["accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(m["specificity"]) and m["sensitivity"] == pytest.approx(2 / 3)  # no negatives: undefined
    assert math.isnan(classification_metrics(probs, torch.tensor([0, 0, 0]))["sensitivity"])
    m3 = classification_metrics(torch.softmax(torch.randn(4, 3), 1), torch.tensor([0, 0, 1, 1]), resamples=0)
    assert math.isnan(m3["auroc"])
    run = RunDir(tmp_path / "run")
    path = run.publish_json("metrics.json", {"test": m, "arr": torch.tensor([float("inf"), 1.0])})
    run.log(event="eval", val_auroc=float("nan"))

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    written = json.loads(path.read_text(), parse_constant=refuse)
    assert written["test"]["auroc"] is None and written["arr"] == [None, 1.0]
    assert written["test"]["accuracy"] == pytest.approx(2 / 3)
    last = (tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1]
    assert json.loads(last, parse_constant=refuse)["val_auroc"] is None


def test_selection_never_picks_a_nan_score():
    """train_loop restores the best finite score; NaN scores (undefined validation AUROC) are skipped."""
    from accelerate import Accelerator

    from tpp.training import make_loader, train_loop

    model = torch.nn.Linear(2, 1)
    loader = make_loader(torch.randn(8, 2), batch_size=4, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scores = iter([float("nan"), 0.2, float("nan"), 0.1])
    weights = {}

    def eval_fn(m):
        score = next(scores)
        weights[score if score == score else f"nan{len(weights)}"] = m.weight.detach().clone()
        return score, {"val": score}

    result = train_loop(Accelerator(cpu=True), model, lambda m, b: m(b[0]).pow(2).mean(), loader, optimizer,
                        scheduler, num_steps=4, log=lambda **_: None, eval_fn=eval_fn, eval_every=1)
    assert result.best_step == 2 and result.best_score == pytest.approx(0.2)
    assert torch.equal(model.weight, weights[0.2])


def test_an_undefined_metric_is_null_in_the_adapter_card_and_undefined_in_its_model_card(tiny_mae, tmp_path):
    """tpp_card.json is strict JSON (an AUROC of a one-class split is null, not NaN); README.md says 'undefined'."""
    import json

    import yaml

    from tpp.adapter_dir import CARD, write_adapter_dir
    from tpp.backbones import load_backbone
    from tpp.model import attach_adapter
    from tpp.model_card import README

    encoder, _, _ = load_backbone(str(tiny_mae))
    method, typed, targets = attach_adapter(encoder, "lora", {"r": 2})
    card = {"kind": "adapter", "method": method.name, "options": dict(vars(typed)), "target_modules": targets,
            "task": {"type": "classification"}, "metrics": {"val/auroc": float("nan"), "test/auroc": 0.75,
                                                            "test/loss": float("inf")}}
    write_adapter_dir(tmp_path / "a", encoder, None, card)

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    written = json.loads((tmp_path / "a" / CARD).read_text(), parse_constant=refuse)
    assert written["metrics"] == {"val/auroc": None, "test/auroc": 0.75, "test/loss": None}
    readme = (tmp_path / "a" / README).read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert front["tpp"]["metrics"]["val/auroc"] is None and front["tpp"]["metrics"]["test/auroc"] == 0.75
    assert "| val/auroc | undefined |" in readme and "| test/auroc | 0.7500 |" in readme and "nan" not in readme.lower()
