"""Checks of an adapter directory's card against what was attached or read, shared by the recipes (evaluate,
a parent for ``adapter.init_from``) and the deployment package (``tpp.serve.integrity``, the bank), so that both
refuse the same adapters with the same words. Recipes never import ``tpp.serve``."""
from __future__ import annotations

import torch

from tpp.adapter_dir import CARD, HEAD
from tpp.data.images import rule_frame
from tpp.errors import TppError
from tpp.tasks import task_of_card


def attach_from_card(encoder, card: dict, source: str) -> None:
    """Attach the method an adapter card names, with its options and target modules, to ``encoder`` in place: what
    evaluate, predict and serve do before loading the card's tensors. A card whose targets or options the method
    cannot attach with (an edited card) is one TppError naming it, never a library's traceback."""
    from tpp.model import attach_adapter

    try:
        attach_adapter(encoder, card["method"], card["options"], card["target_modules"])
    except TppError:
        raise
    except Exception as exc:  # noqa: BLE001 (peft / torch refusing the card's modules: a hostile or edited card)
        raise TppError(f"'{source}/{CARD}': method {str(card.get('method'))[:40]!r} cannot be attached with the "
                       f"card's target_modules and options ({type(exc).__name__}: {str(exc)[:160]}); it was "
                       "edited or belongs to another backbone. Refused.") from None


def check_frame(card: dict, attached_frame: int, source: str) -> None:
    """The card's input frame (absent: 0) equals the frame the attached method keeps for itself
    (:func:`tpp.model.input_frame`): otherwise evaluate (which frames by the module) and predict / serve (which
    frame by the card) would feed the model different images. A mismatch is refused, naming the card."""
    rule = card.get("input") if isinstance(card.get("input"), dict) else {}
    if "image_size" in rule:
        try:
            frame = rule_frame(rule)
        except TppError as exc:
            raise TppError(f"'{source}/{CARD}': {exc}.") from None
    else:
        frame = rule.get("frame", 0)
    if frame != attached_frame:
        raise TppError(
            f"'{source}/{CARD}': its input rule frames images with a {frame}-px border (input.frame"
            f"{'' if 'frame' in rule else ' absent'}), but its method {str(card.get('method'))[:40]!r} with the "
            f"card's options keeps a {attached_frame}-px border for itself, so evaluate and predict / serve would "
            "place images differently. The adapter was written by an older tpp version or its card was edited: "
            "re-train (or re-fine-tune) it with this tpp version, which records the frame.")


def check_head(card: dict, head_state: dict[str, torch.Tensor], source: str) -> None:
    """The head's tensors fit the card's task entry (a classifier's rows match its classes and label names)."""
    problem = task_of_card(card).check_head(card["task"], head_state)
    if problem:
        raise TppError(f"'{source}/{HEAD}' does not fit the card: {problem}.")
