"""Visual prompts (input-side adaptation; tpp's own) and MoVL.

A learnable additive pattern on the encoder's input pixels (after normalisation), the backbone untouched:

- ``mode: pad`` (visual reprogramming, ILM-VP, Chen et al. CVPR 2023): the pattern is the ``pad``-pixel frame
  of the ``S``-pixel input and the image lies inside it, outside the frame. The input pipeline puts it there
  (:func:`tpp.model.input_frame` tells it the frame; ``tpp.data.tensors.to_model_tensor`` brings the image to
  ``S - 2 * pad`` px, not resampling an image of that size, and puts a zero border around it); the wrapper
  replaces the border with the pattern and leaves the inner pixels as they are. With ``backbone.input_size`` =
  28 + 2 x pad (and ``adapter.input_size`` the same) a 28-px image reaches the backbone untouched.
- ``mode: full`` (Bahng et al. 2022): the pattern is added to the whole image.

The prompt is zeros at initialisation. ``movl`` (Tian et al., arXiv 2405.07411) is the same prompt trained with
the linear probe (the classification head) and a discrepancy term between the features of the prompted and
the plain image (:func:`auxiliary_loss`; ``discrepancy_weight`` 0 disables it).

The wrapper sits on the encoder's ``embeddings`` module, so every later stage (position embeddings, ViT-MAE's
masking, the token grid) sees an input of the size it expects. Shapes: pixels (B, C, S, S) in and out.
"""
from __future__ import annotations

import math

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.adapters import Method, register
from tpp.adapters.wrapping import method_tensors, wrap_modules
from tpp.errors import ConfigError, TppError

MODES = ("pad", "full")
DISCREPANCIES = ("mse", "cosine")


@dataclass
class VisualPromptOptions:
    mode: str = field(default="pad", metadata={"help": "pad: a learnable frame around the image (visual "
                                                       "reprogramming); full: a learnable pattern added to the "
                                                       "whole image"})
    pad: int = field(default=4, metadata={"help": "mode pad: frame width in pixels, outside the image; the image "
                                                  "gets the inner input_size - 2 x pad pixels (28-px images "
                                                  "untouched: backbone.input_size = adapter.input_size = "
                                                  "28 + 2 x pad)"})
    input_size: Optional[int] = field(default=None, metadata={
        "help": "pixels of the encoder input the prompt covers; default: the checkpoint's image size. Set it to "
                "backbone.input_size when that differs"})
    discrepancy_weight: float = field(default=0.0, metadata={
        "help": "weight of the discrepancy between prompted and plain features added to the task loss (MoVL); "
                "0 disables it"})
    discrepancy: str = field(default="mse", metadata={
        "help": "form of the discrepancy between mean patch features of prompted and plain images: mse or "
                "cosine (1 - cosine similarity)"})

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"adapter.mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        if not isinstance(self.pad, int) or isinstance(self.pad, bool) or self.pad < 1:
            raise ConfigError(f"adapter.pad must be a positive number of pixels, got {self.pad!r}.")
        if self.input_size is not None and (not isinstance(self.input_size, int) or self.input_size < 1):
            raise ConfigError(f"adapter.input_size must be a positive number of pixels, got {self.input_size!r}.")
        if self.mode == "pad" and self.input_size is not None and self.input_size <= 2 * self.pad:
            raise ConfigError(f"adapter.pad={self.pad} leaves no image inside a {self.input_size}-px input; "
                              "use a smaller pad or a larger adapter.input_size.")
        weight = self.discrepancy_weight
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 <= weight < math.inf:
            raise ConfigError(f"adapter.discrepancy_weight must be a finite number, 0 or more, got {weight!r}.")
        if self.discrepancy not in DISCREPANCIES:
            raise ConfigError(f"adapter.discrepancy must be one of {', '.join(DISCREPANCIES)}, "
                              f"got {self.discrepancy!r}.")


def declared_frame(method: str, options: dict) -> int:
    """The input frame (px) a card's method and options make the attached model keep for itself: the ``pad`` of
    a padding prompt (alone or a part), else 0; what :func:`tpp.model.input_frame` reads off the attached model,
    known here without a backbone (publishing checks the card's ``input.frame`` against it)."""
    from tpp.adapters import get_method
    from tpp.adapters.compose import part_names

    parts = part_names(method)
    sections = [options] if len(parts) == 1 else [options.get(p) or {} for p in parts]
    frames = [0]
    for name, section in zip(parts, sections):
        typed = get_method(name).options_cls(**section)
        if isinstance(typed, VisualPromptOptions) and typed.mode == "pad":
            frames.append(typed.pad)
    return max(frames)


@dataclass
class MovlOptions(VisualPromptOptions):
    """MoVL: the visual prompt with the discrepancy term on by default."""
    discrepancy_weight: float = field(default=0.1, metadata={
        "help": "weight of the discrepancy between prompted and plain features added to the task loss (MoVL); "
                "0 disables it"})


class PromptedEmbeddings(nn.Module):
    """Wraps the encoder's ``embeddings``: pixels (B, C, S, S) get the prompt, then go on unchanged in size."""

    def __init__(self, base_layer: nn.Module, channels: int, size: int, options: VisualPromptOptions):
        super().__init__()
        self.base_layer = base_layer
        self.mode, self.pad, self.size = options.mode, options.pad, size
        self.discrepancy_weight, self.discrepancy = float(options.discrepancy_weight), options.discrepancy
        self.method_name = "movl" if isinstance(options, MovlOptions) else "visual_prompt"  # for error messages
        self.tpp_visual_prompt = nn.Parameter(torch.zeros(channels, size, size))
        mask = torch.ones(1, 1, size, size)
        if self.mode == "pad":
            mask[..., self.pad:size - self.pad, self.pad:size - self.pad] = 0
        self.register_buffer("mask", mask, persistent=False)
        self.enabled = True

    @property
    def input_frame(self) -> int:
        """Border pixels that hold the pattern, not the image (read by :func:`tpp.model.input_frame`)."""
        return self.pad if self.mode == "pad" else 0

    def prompt(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, C, S, S). pad: the border is replaced by the pattern, the inner
        ``S - 2 * pad`` pixels (the image, placed there by the input pipeline) pass unchanged; full: the
        pattern is added to every pixel."""
        if tuple(pixel_values.shape[-2:]) != (self.size, self.size):  # the config checks catch this before a run
            name = self.method_name
            raise TppError(f"the visual prompt was made for a {self.size}-px input, got "
                           f"{tuple(pixel_values.shape[-2:])}: the prompt's input size (adapter.input_size; "
                           f"adapter.{name}.input_size when {name} is part of a composed adapter.method) must "
                           "equal backbone.input_size. Set both to the same size.")
        pattern = self.tpp_visual_prompt.to(pixel_values.dtype)
        if self.mode == "pad":
            return torch.where(self.mask.bool(), pattern, pixel_values)
        return pixel_values + pattern

    def __getattr__(self, name: str):
        """Attributes of the wrapped embeddings (transformers reads ``embeddings.patch_embeddings``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    @property
    def inner(self) -> int:
        return self.size - 2 * self.pad

    def forward(self, pixel_values: torch.Tensor, *args, **kwargs):
        if self.enabled:
            pixel_values = self.prompt(pixel_values)
        return self.base_layer(pixel_values, *args, **kwargs)


def prompt_input_sizes(method_name, options) -> list[tuple[str, object]]:
    """``(config key, input_size)`` of every visual prompt (``visual_prompt``, ``movl``) in a method: the key is
    ``adapter.input_size`` for the method alone, ``adapter.<part>.input_size`` for a part of a composed method;
    the size None when unset (the prompt then covers the checkpoint's image size). ``options``: the method's
    options, typed (``AdapterConfig.typed()``) or a plain dict (an adapter card's). [] for other methods. The
    config checks compare each size with ``backbone.input_size`` (``tpp.config.checks``)."""
    from tpp.adapters import get_method

    def size(opts):
        if dataclasses.is_dataclass(opts):
            opts = dataclasses.asdict(opts)
        return opts.get("input_size") if isinstance(opts, dict) else None

    method = get_method(method_name)
    if method.parts:
        sections = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options
        sections = sections if isinstance(sections, dict) else {}
        return [(f"adapter.{part.name}.input_size", size(sections.get(part.name)))
                for part in method.parts if issubclass(part.options_cls, VisualPromptOptions)]
    if issubclass(method.options_cls, VisualPromptOptions):
        return [("adapter.input_size", size(options))]
    return []


def resolve(encoder, options) -> list[str]:
    """The embeddings module: the first to see the pixels in every supported family."""
    names = [n for n, _ in encoder.model.named_modules() if n.rsplit(".", 1)[-1] == "embeddings"]
    if len(names) != 1:
        raise TppError(f"the visual prompt needs one 'embeddings' module in the {encoder.family.model_type} "
                       f"encoder, found {names or 'none'}.")
    return names


def attach(model: nn.Module, options: VisualPromptOptions, target_names: list[str]) -> nn.Module:
    size = options.input_size or int(model.config.image_size)
    if options.mode == "pad" and size <= 2 * options.pad:
        raise TppError(f"adapter.pad={options.pad} leaves no image inside a {size}-px input.")
    channels = int(model.config.num_channels)
    return wrap_modules(model, target_names, lambda emb, _: PromptedEmbeddings(emb, channels, size, options))


def prompt_modules(model: nn.Module) -> list[PromptedEmbeddings]:
    return [m for m in model.modules() if isinstance(m, PromptedEmbeddings)]


@contextlib.contextmanager
def prompts_off(model: nn.Module):
    """Run ``model`` on the plain images, as the backbone alone sees them."""
    modules = prompt_modules(model)
    for m in modules:
        m.enabled = False
    try:
        yield
    finally:
        for m in modules:
            m.enabled = True


def discrepancy(prompted: torch.Tensor, plain: torch.Tensor, form: str) -> torch.Tensor:
    """A scalar between two (B, D) feature batches: mean squared difference, or mean 1 - cosine similarity."""
    if form == "cosine":
        return (1 - F.cosine_similarity(prompted, plain, dim=-1)).mean()
    return F.mse_loss(prompted, plain)


def _task_encoder(model: nn.Module):
    """A task model's (``.encoder``) encoder, through an accelerate / DDP wrapper; None for other models."""
    return getattr(getattr(model, "module", model), "encoder", None)


def _discrepancy_prompts(encoder: nn.Module | None) -> list[PromptedEmbeddings]:
    """The prompts of ``encoder`` (a task model's) that carry MoVL's discrepancy term (weight > 0)."""
    return [m for m in prompt_modules(encoder.model) if m.discrepancy_weight > 0] if encoder is not None else []


@contextlib.contextmanager
def encoder_output(model: nn.Module):
    """Inside the block, the last output of the task model's encoder ((B, P + N, D) tokens) is kept in the
    yielded dict under ``"tokens"``: :func:`auxiliary_loss` re-uses the prompted features of the task's own
    forward pass instead of running the prompted images through the backbone a second time. Only a model
    with a discrepancy term is hooked (for any other the dict stays empty)."""
    seen: dict = {}
    encoder = _task_encoder(model)
    hooked = encoder is not None and bool(_discrepancy_prompts(encoder))
    handle = encoder.register_forward_hook(lambda module, args, out: seen.update(tokens=out)) if hooked else None
    try:
        yield seen
    finally:
        if handle is not None:
            handle.remove()


def auxiliary_loss(model: nn.Module, pixel_values: torch.Tensor,
                   prompted_tokens: torch.Tensor | None = None) -> torch.Tensor | float:
    """MoVL's discrepancy term for a task model (``.encoder``) whose prompt has a ``discrepancy_weight``:
    ``weight * d(mean patch features of the prompted images, of the plain images)``; the plain pass runs
    without gradients. ``prompted_tokens``: the encoder's output (B, P + N, D) for ``pixel_values`` from the task's
    forward pass (:func:`encoder_output`), else the prompted pass runs here. 0 for any other model (nothing extra
    is computed)."""
    encoder = _task_encoder(model)
    if encoder is None or not getattr(model, "module", model).training:
        return 0.0
    modules = _discrepancy_prompts(encoder)
    if not modules:
        return 0.0
    tokens = encoder(pixel_values) if prompted_tokens is None else prompted_tokens
    prompted = encoder.patch_tokens(tokens).mean(1)
    with torch.no_grad(), prompts_off(encoder.model):
        plain = encoder.patch_tokens(encoder(pixel_values)).mean(1)
    m = modules[0]
    return m.discrepancy_weight * discrepancy(prompted, plain, m.discrepancy)


COMMON = dict(attach=attach, identity_at_init=False, pretrainable=True, state=method_tensors, resolve=resolve,
              inherited=("mode", "pad", "input_size"), tensor_keys=r"\.tpp_visual_prompt", prefix="tpp_",
              touches=("input",))

METHOD = register(Method(
    name="visual_prompt", options_cls=VisualPromptOptions,
    summary="visual prompt: a learnable frame around the image (pad) or pattern on it (full); backbone untouched",
    **COMMON))

MOVL = register(Method(
    name="movl", options_cls=MovlOptions,
    summary="MoVL: visual prompt + linear probe (the task head) + discrepancy between prompted and plain features",
    **COMMON))
