"""tpp from Python: run recipes (:mod:`tpp.api.runs`), load a fine-tuned adapter and predict, manage an adapter
store, predict in context (:mod:`tpp.api.deploy`). The names below are the API; ``import tpp`` reaches them
lazily (``tpp.finetune``, ``tpp.load`` ...). Everything heavy (torch, transformers, peft) is imported inside the
functions."""
from tpp.api.deploy import (AdapterStore, Model, card_backbone, check_loads, fine_tuned_adapter, in_context, load,
                            open_bank, read_image)
from tpp.api.runs import (RunResult, evaluate, finetune, override_args, pretrain_target_parameters, quiet, run)

__all__ = ["AdapterStore", "Model", "RunResult", "card_backbone", "check_loads", "evaluate", "fine_tuned_adapter",
           "finetune", "in_context", "load", "open_bank", "override_args", "pretrain_target_parameters", "quiet",
           "read_image", "run"]
