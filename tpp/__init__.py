"""tpp: parameter-efficient fine-tuning of medical-imaging backbones with target parameter pre-training.

From Python (details in :mod:`tpp.api` and the README's "From Python")::

    import tpp
    result = tpp.finetune("breast_us/mae_vit_tiny_lora_finetune.yaml", {"train.max_steps": 20})
    model = tpp.load(result.adapter)
    model.predict("scan.png")          # {'label': ..., 'probabilities': {...}, 'threshold': ...}
    tpp.AdapterStore("store").publish(result.adapter, "hospital_a")
    tpp.in_context("context_folder/", "scan.png")   # no training: K labelled examples define the task

``import tpp`` is cheap: the names below are imported on first use (torch and transformers only then).
"""
__version__ = "0.1.0"

_API = ("finetune", "pretrain_target_parameters", "evaluate", "load", "AdapterStore", "Model", "RunResult",
        "in_context")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The API's names, imported from :mod:`tpp.api` when first asked for."""
    if name in _API:
        from tpp import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tpp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
