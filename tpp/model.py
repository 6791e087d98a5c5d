"""Encoder + target parameters + task head, and the pieces that move adapter weights around.

Adapter tensors are named relative to the transformers encoder (``base_model.model.layers.0...``),
never relative to a wrapper (task model, MAE pretext model), so TPP and fine-tuning hand off exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from tpp.adapters import Method, check_tensor_names, get_method
from tpp.backbones import Encoder, is_adapter_key, resolve_targets
from tpp.errors import TppError


def build_head(card: dict, hidden_size: int, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The head of the card's task (classifier, decoder ...) holding exactly ``state``."""
    from tpp.tasks import task_of_card

    task = task_of_card(card)
    if task is None:
        raise TppError(f"'{source}': the card names no registered task ({card.get('task')!r:.100}).")
    try:
        shapes = _meta_head_shapes(task, card, hidden_size)  # a card cannot make tpp allocate a head its tensors
        if shapes is not None and shapes != {k: tuple(v.shape) for k, v in state.items()}:  # do not fill
            raise ValueError("the head's tensor names or shapes differ from the card's")
        head = task.head_from_card(card["task"], hidden_size, card["input"]["channels"])
        head.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise TppError(f"'{source}' does not fit the head in the card "
                       f"({type(exc).__name__}: {str(exc)[:300]}).") from None
    check_head_frame(card, source)
    return head.eval()


def _meta_head_shapes(task, card: dict, hidden_size: int) -> dict | None:
    """{tensor name: shape} of the card's head built on the meta device (nothing allocated); None when the head
    cannot be built there (a plugin head reading values in its constructor): the real build then checks."""
    try:
        with torch.device("meta"):
            head = task.head_from_card(card["task"], hidden_size, card["input"]["channels"])
    except (RuntimeError, NotImplementedError):
        return None
    return {k: tuple(v.shape) for k, v in head.state_dict().items()}


def check_head_frame(card: dict, source: str) -> None:
    """A head that crops the input frame (segmentation's decoder) crops the one the card's input rule frames."""
    from tpp.tasks import task_of_card

    crop, frame = task_of_card(card).entry_frame(card["task"]), card["input"].get("frame", 0)
    if crop is not None and crop != frame:
        raise TppError(f"'{source}': the card's head crops a {str(crop)[:20]}-px input frame, but its input rule "
                       f"frames images with {str(frame)[:20]} px; the card was edited. Refused.")


class TaskModel(nn.Module):
    """``forward(pixel_values (B, C, H, W)) -> logits`` through the adapted encoder and a task head
    (classification (B, K), segmentation (B, K, H, W) ...). Every head takes
    ``(patch_tokens (B, N, D), grid (h, w), pixel_values)``."""

    def __init__(self, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(pixel_values)
        if not getattr(self.head, "reads_prefix_tokens", False):  # a CLS-reading head gets (B, P + N, D)
            tokens = self.encoder.patch_tokens(tokens)
        return self.head(tokens, self.encoder.grid(pixel_values), pixel_values)

    def after_optimizer_step(self) -> None:
        """The head's per-step hook, if it has one (label mapping's ILM counts epochs)."""
        hook = getattr(self.head, "after_optimizer_step", None)
        if hook is not None:
            hook()


def input_frame(model: nn.Module) -> int:
    """Pixels of the input border an attached method keeps for itself (a padding visual prompt's ``pad``;
    0 for every other method): the input pipeline brings the image to ``input_size - 2 x frame`` and puts
    a zero border of that width around it (``tpp.data.tensors.to_model_tensor``)."""
    return max((int(getattr(m, "input_frame", 0)) for m in model.modules()), default=0)


def attach_adapter(encoder: Encoder, method_name: str, options,
                   targets: list[str] | None = None) -> tuple[Method, object, list[str]]:
    """Add a method's target parameters to ``encoder`` in place (``encoder.method`` records it).

    ``options``: the method's options dataclass (as the config built it), or a dict (a card's, a parent's
    merged with the config's) turned into one here.

    ``targets`` (full module names, e.g. from a card) default to the family's resolution of the
    options' ``target_modules``; methods without that option (the baselines) have no targets.
    Returns (method, typed options, target names). Afterwards only the target parameters are
    trainable (every encoder weight for the ``full`` baseline).
    """
    method = get_method(method_name)
    typed = options if isinstance(options, method.options_cls) else method.options_cls(**options)
    if method.parts:  # a composed method: every part, in place (adapters/compose.py)
        from tpp.adapters.compose import attach_parts

        return method, typed, attach_parts(encoder, method, typed, targets, attach_adapter)
    if targets is None and method.resolve is not None:
        targets = method.resolve(encoder, typed)
    elif targets is None:
        targets = resolve_targets(encoder, typed.target_modules) if hasattr(typed, "target_modules") else []
    encoder.model = method.attach(encoder.model, typed, targets)
    encoder.method = method
    if method.kind == "adapter":
        for name, param in encoder.model.named_parameters():
            if param.requires_grad and not is_adapter_key(name):
                raise RuntimeError(f"method '{method_name}' left backbone parameter '{name}' trainable")
    return method, typed, targets


def adapter_state(encoder: Encoder) -> dict[str, torch.Tensor]:
    """The tensors the attached method saves, keyed relative to the encoder (peft's adapter state for
    peft methods: what ``adapter_model.safetensors`` holds)."""
    method = encoder.method
    raw = get_peft_model_state_dict(encoder.model) if method.uses_peft else method.state(encoder.model)
    return {k: v.detach().contiguous() for k, v in raw.items()}


def load_adapter_state(encoder: Encoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every saved tensor exactly; any key or shape difference lists the keys and fails."""
    if encoder.method.kind == "adapter":
        check_tensor_names(encoder.method, state, source)  # before anything is compared or copied
    current = adapter_state(encoder)
    expected = set(current)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise TppError(f"adapter '{source}' does not fit this model: missing {_short(missing)}, "
                       f"unexpected {_short(unexpected)}: its weights file does not hold the tensors its card's "
                       "method, options and target modules make (a parent for adapter.init_from must match them).")
    for key in expected:
        if state[key].shape != current[key].shape:
            raise TppError(f"adapter '{source}': tensor '{key}' has shape {tuple(state[key].shape)}, "
                           f"the model expects {tuple(current[key].shape)}.")
    if encoder.method.load is not None:
        encoder.method.load(encoder.model, state)
    elif encoder.method.uses_peft:
        set_peft_model_state_dict(encoder.model, state)
    else:
        encoder.model.load_state_dict(state, strict=False)
    loaded = adapter_state(encoder)
    differing = [k for k in expected if not torch.equal(loaded[k], state[k].to(loaded[k].dtype))]
    if differing:
        raise TppError(f"adapter '{source}': tensors {_short(differing)} did not load.")


def _short(keys: list, n: int = 5) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every trainable tensor (for best-on-validation selection)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
