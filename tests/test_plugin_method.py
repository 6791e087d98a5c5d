"""A method is one file plus one registration: a toy method from a temporary folder runs target parameter
pre-training, the hand-off into fine-tuning, publishing, and a mixed-site service batch, with nothing in
tpp naming it (its capabilities come from its registration)."""
import json

import numpy as np
import pytest
import torch
from helpers import HANG_S, plugin_from_file, run_cli
from serving_fixtures import offline_probs, paused

TOY_METHOD = '''
"""rank_one: LoRA of rank 1 on the attention projections (peft), registered from outside tpp."""
from dataclasses import dataclass, field
from typing import Optional

from peft import LoraConfig, get_peft_model

from tpp.adapters import Method, register


@dataclass
class RankOneOptions:
    alpha: float = field(default=2.0, metadata={"help": "scale numerator"})
    target_modules: Optional[list] = field(default=None, metadata={"help": "leaf names of Linear layers"})


def config(options, target_names):
    return LoraConfig(r=1, lora_alpha=options.alpha, target_modules=list(target_names))


def attach(encoder, options, target_names):
    return get_peft_model(encoder, config(options, target_names))


register(Method(name="rank_one", options_cls=RankOneOptions, attach=attach, identity_at_init=True,
                pretrainable=True, summary="toy: rank-1 LoRA", inherited=("alpha", "target_modules"),
                tensor_keys=r"\\.lora_[AB]\\.weight", prefix="lora_", mixed_batch=config))
'''


@pytest.fixture()
def toy_method(tmp_path, monkeypatch):
    import tpp.adapters as adapters

    with plugin_from_file(adapters, "_REGISTRY", "rank_one", TOY_METHOD, tmp_path / "plugins", monkeypatch):
        yield adapters.get_method("rank_one")
    adapters.adapter_marker.cache_clear()


def run(recipe: str, config: str, *overrides) -> int:
    no_eval = ["train.eval_every=1000"] if recipe == "finetune" else []  # tpp never validates
    return run_cli("run", recipe, "--config", config, "train.batch_size=16", *no_eval, *overrides)


def test_a_method_from_one_file_runs_tpp_finetuning_publishing_and_a_mixed_batch(toy_method, tiny_mae, tmp_path):
    from conftest import make_medmnist

    from tpp.serve import store
    from tpp.serve.bank import AdapterBank
    from tpp.serve.worker import InferenceWorker

    root = make_medmnist(tmp_path / "data")
    common = [f"backbone.path={tiny_mae}", f"data.root={root}", "adapter={method: rank_one, alpha: 4.0}"]
    assert run("tpp", "breast_us/mae_vit_tiny_lora_tpp.yaml", *common, "train.max_steps=4",
               f"output_dir={tmp_path / 'tpp'}") == 0
    for site, init in (("a", [f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}"]), ("b", ["seed=1"])):
        assert run("finetune", "breast_us/mae_vit_tiny_lora_finetune.yaml", *common, "train.max_steps=6",
                   "train.lr=1e-2", f"output_dir={tmp_path / site}", *init) == 0
        store.publish(tmp_path / site, tmp_path / "store", site)
    card = json.loads((tmp_path / "a" / "adapter" / "tpp_card.json").read_text())
    assert card["method"] == "rank_one" and card["parent"]["stage"] == "tpp" and card["options"]["alpha"] == 4.0
    images = np.load(root / "breastmnist.npz")["test_images"][:3]
    worker = InferenceWorker(AdapterBank(str(tiny_mae), str(tmp_path / "store")), max_wait_ms=1)
    for site in ("a", "b"):  # resident first: a site that is not waits aside for its files (test_serve_loading.py)
        worker.predict(site, images[:1]).result(HANG_S)
    worker.call(lambda bank: None).result(HANG_S)  # the last warm-up batch is counted after its answer is set
    batches = worker.batches
    with paused(worker):
        futures = {s: worker.predict(s, images) for s in ("a", "b")}
    for site, future in futures.items():
        expected = offline_probs(tiny_mae, tmp_path / "store" / site / store.current_version(tmp_path / "store", site),
                                 images)
        assert torch.allclose(torch.tensor(future.result(HANG_S).outputs), expected, atol=1e-5)
    worker.call(lambda bank: None).result(HANG_S)  # the batch is counted after its answers are set
    assert worker.batches == batches + 1 and set(worker.bank.groups) == {"rank_one"}  # one forward for both sites
    assert len(worker.bank.groups["rank_one"].model.peft_config) == 2
    worker.stop()


def test_registering_a_method_leaves_the_registry_as_it_was():
    from tpp.adapters import all_methods
    from tpp.backbones import is_adapter_key

    assert "rank_one" not in {m.name for m in all_methods()}  # also after the toy test
    assert is_adapter_key("layers.0.attention.q_proj.lora_A.weight") and not is_adapter_key("layers.0.fc1.weight")
