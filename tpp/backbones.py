"""Frozen ViT-family backbones from transformers (ViT, ViT-MAE, DINOv2).

:class:`Encoder` gives every family one deterministic call: pixels (B, C, H, W) in, tokens
(B, P + N, D) out, P prefix tokens (CLS, registers) then N patch tokens in raster order.
ViT-MAE's encoder masks and shuffles patches on every call, also in eval mode: the wrapper turns
that off (mask ratio 0 and raster-order noise) outside the MAE pretext.
Inputs of another size than the checkpoint's (``backbone.input_size``, e.g. 64 px segmentation on a
28-px backbone) get bicubic-interpolated position embeddings (transformers' ``interpolate_pos_encoding``;
DINOv2 always interpolates).
A backbone is named by a hub id, a local checkpoint directory or ``builtin:NAME``, a checkpoint shipped inside
the package (``tpp/models/NAME``; :func:`resolve_backbone`, in :mod:`tpp.shipped`, is the one place that maps the
name to its folder).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from tpp.errors import TppError
# the shipped backbones' names, folders and hashes (torch-free, for `tpp ls`); MODELS_DIR is re-exported
from tpp.shipped import (BUILTIN_PREFIX, DEFAULT_BACKBONE, MODELS_DIR, builtin_backbones,  # noqa: F401
                         builtin_hash, resolve_backbone)


@dataclass(frozen=True)
class Family:
    """How tpp finds its way around one transformers model type."""
    model_type: str
    layer_pattern: str          # regex over module names: group 1 is the layer index
    default_targets: tuple      # leaf names of Linear layers LoRA-like methods adapt
    num_prefix_tokens: int = 1  # CLS (+ registers)


FAMILIES = {
    "vit": Family("vit", r"^layers\.(\d+)\.", ("q_proj", "v_proj")),
    "vit_mae": Family("vit_mae", r"^layers\.(\d+)\.", ("q_proj", "v_proj")),
    "dinov2": Family("dinov2", r"^encoder\.layer\.(\d+)\.", ("q_proj", "v_proj")),
}


MAX_PATCH_TOKENS = 4096  # patch tokens per image tpp trains or loads an adapter at (a 64 x 64 grid)


@dataclass
class BackboneInfo:
    """What the card records about a backbone and its input pipeline."""
    id: str
    model_type: str
    image_size: int
    patch_size: int
    channels: int
    hidden_size: int
    num_layers: int
    mean: list = field(default_factory=list)
    std: list = field(default_factory=list)
    hash: str = ""
    input_size: int = 0  # pixels fed to the encoder; 0 = image_size (set by load_backbone)
    # pixels of the input border that hold no image (a padding visual prompt's frame; set after attaching it)
    frame: int = 0

    def resolution_note(self) -> str:
        """How the input size relates to the checkpoint's, for cards."""
        if self.input_size == self.image_size:
            return f"native {self.image_size} px"
        return (f"{self.input_size} px input on a {self.image_size}-px checkpoint: "
                f"{(self.input_size // self.patch_size) ** 2} patches, position embeddings interpolated (bicubic)")


class Encoder(nn.Module):
    """Deterministic token extractor around a transformers encoder.

    ``forward(pixel_values (B, C, H, W)) -> tokens (B, P + N, D)``: all patches, raster order.
    ``self.model`` is the transformers module (later wrapped by peft); adapter keys are relative to it.
    """

    def __init__(self, model: nn.Module, family: Family):
        super().__init__()
        self.model = model
        self.family = family
        # load_backbone(with_decoder=True) of a ViT-MAE: what its weights held of the decoder (else None)
        self.decoder_weights: DecoderWeights | None = None
        if family.model_type == "vit_mae":
            model.config.mask_ratio = 0.0

    def forward(self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """``kwargs`` go to the model (e.g. peft's per-row ``adapter_names``)."""
        if self.family.model_type == "vit_mae":
            kwargs["noise"] = noise if noise is not None else raster_noise(pixel_values, self.num_patches(pixel_values))
        return self.model(pixel_values=pixel_values, **self.size_kwargs(pixel_values), **kwargs).last_hidden_state

    def num_patches(self, pixel_values: torch.Tensor | None = None) -> int:
        """Patches of an input (B, C, H, W); without one, of the checkpoint's image size."""
        cfg = self.base_config
        h, w = pixel_values.shape[-2:] if pixel_values is not None else (cfg.image_size, cfg.image_size)
        return (h // cfg.patch_size) * (w // cfg.patch_size)

    def grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of patch tokens for an input (B, C, H, W)."""
        p = self.base_config.patch_size
        return pixel_values.shape[-2] // p, pixel_values.shape[-1] // p

    def size_kwargs(self, pixel_values: torch.Tensor) -> dict:
        """``interpolate_pos_encoding=True`` when the input is not the checkpoint's size (ViT, ViT-MAE)."""
        size = self.base_config.image_size
        if self.family.model_type != "dinov2" and tuple(pixel_values.shape[-2:]) != (size, size):
            return {"interpolate_pos_encoding": True}
        return {}

    @property
    def base_config(self):
        return self.model.config

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) -> (B, N, D): drop CLS / register tokens."""
        return tokens[:, self.family.num_prefix_tokens:]


def raster_noise(pixel_values: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Noise whose argsort is the identity: ViT-MAE then keeps patches in raster order. (B, N)."""
    ramp = torch.arange(num_patches, dtype=torch.float32, device=pixel_values.device)
    return ramp.expand(pixel_values.shape[0], num_patches)


@contextlib.contextmanager
def mae_mask_ratio(config, ratio: float):
    """Temporarily set a ViT-MAE config's mask ratio (used only by the MAE pretext, single-threaded)."""
    old = config.mask_ratio
    config.mask_ratio = ratio
    try:
        yield
    finally:
        config.mask_ratio = old


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TppError(f"'{path}' is not valid JSON ({exc}).") from None


def _family_of(path: str, model_type: str | None) -> Family:
    if model_type not in FAMILIES:
        raise TppError(
            f"backbone '{path}' is a '{model_type}' model, not a supported vision encoder. "
            f"Supported families: {', '.join(sorted(FAMILIES))}. "
            "Pass backbone.path=<ViT / ViT-MAE / DINOv2 checkpoint>.")
    return FAMILIES[model_type]


def drop_random_pooler(model: nn.Module, missing_keys) -> None:
    """Remove the pooling layer transformers adds to some encoders (``ViTModel``'s dense + tanh over the CLS
    token) when the checkpoint did not hold it (``missing_keys`` of the load): a classifier checkpoint
    (``ViTForImageClassification``, most hub ViTs) stores none, so ``AutoModel`` draws it at random on every load
    and the backbone hash that adapters are verified against would change from one load to the next. tpp reads
    ``last_hidden_state`` only; a pooler the checkpoint stores is kept (it is part of the hash adapters saved)."""
    if getattr(model, "pooler", None) is not None and any(k.startswith("pooler.") for k in missing_keys):
        model.pooler = None


def skeleton(path: str) -> Encoder:
    """The encoder of backbone ``path`` built from its config on the meta device: module names and shapes, no
    weights read and no memory taken (``tpp validate`` attaches the configured method to it). A config that
    builds no model is the TppError :func:`load_backbone` would give."""
    from transformers import AutoModel

    config = backbone_config(path)
    family = _family_of(path, getattr(config, "model_type", None))
    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except Exception as exc:  # noqa: BLE001 (a user's config.json: transformers raises its own)
        raise unloadable(path, exc) from None
    return Encoder(model, family)


def unloadable(path: str, exc: Exception) -> TppError:
    """The one error for a backbone folder whose weights or config do not build a model."""
    return TppError(f"cannot load backbone '{path}' ({type(exc).__name__}: {str(exc)[:200]}); its weights are "
                    "damaged or do not fit its config.json.")


def load_backbone(path: str, mean=None, std=None, with_decoder: bool = False, input_size: int | None = None):
    """Load a frozen encoder (and, with ``with_decoder``, a ViT-MAE decoder) from a hub id or directory.

    ``input_size``: pixels fed to the encoder (default: the checkpoint's image size); a multiple of
    the patch size.

    Returns ``(encoder: Encoder, info: BackboneInfo, decoder: nn.Module | None)``; the decoder is None unless the
    checkpoint is a ViT-MAE whose weights hold its decoder whole (:func:`has_decoder_weights`); with
    ``with_decoder``, ``encoder.decoder_weights`` tells what a ViT-MAE's weights held of it (a hub id's too, whose
    files no pre-run check reads). All weights have ``requires_grad=False`` and the modules are in eval mode.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the decoder weights a ViT-MAE encoder skips are expected

    source = resolve_backbone(path)  # what is loaded; ``path`` (e.g. builtin:NAME) is what the card records
    local = Path(source)
    config = backbone_config(path)
    family = _family_of(path, getattr(config, "model_type", None))
    decoder = None
    try:  # a truncated weights file, shapes that do not fit the config ...: the folder named, never a traceback
        if with_decoder and family.model_type == "vit_mae":
            from transformers import ViTMAEForPreTraining

            full, loading = ViTMAEForPreTraining.from_pretrained(source, output_loading_info=True)
            # a decoder the weights do not hold whole would be transformers' random one: none, never that
            held = loaded_decoder(str(path), full, loading)
            model, decoder, missing = full.vit, full.decoder if held.whole else None, ()
        else:
            model, loading = AutoModel.from_pretrained(source, output_loading_info=True)
            missing = loading.get("missing_keys", ())
    except Exception as exc:  # noqa: BLE001 (a user's file: safetensors, torch and transformers raise their own)
        raise unloadable(path, exc) from None
    drop_random_pooler(model, missing)
    for module in (model, decoder):
        if module is not None:
            module.requires_grad_(False).eval()
    encoder = Encoder(model, family)
    if with_decoder and family.model_type == "vit_mae":
        encoder.decoder_weights = held
    mean, std = _normalisation(local, config.num_channels, mean, std)
    info = BackboneInfo(
        id=str(path), model_type=family.model_type, image_size=int(config.image_size),
        patch_size=int(config.patch_size), channels=int(config.num_channels),
        hidden_size=int(config.hidden_size), num_layers=int(config.num_hidden_layers),
        mean=mean, std=std, hash=backbone_hash(model))
    _check_builtin(path, info.hash)
    info.input_size = check_input_size(input_size or info.image_size, info)
    return encoder, info, decoder


def _check_builtin(path: str, digest: str) -> None:
    """A shipped backbone must hash to the value its card records (a damaged install fails, never trains)."""
    if isinstance(path, str) and path.startswith(BUILTIN_PREFIX):
        recorded = builtin_hash(path[len(BUILTIN_PREFIX):])
        if recorded is None:
            raise TppError(f"the shipped backbone '{path}' ({resolve_backbone(path)}) has no README.md card with "
                           "its encoder_hash, so its weights cannot be checked: the installed files are damaged. "
                           "Reinstall tpp.")
        if recorded != digest:
            raise TppError(f"the shipped backbone '{path}' ({resolve_backbone(path)}) hashes to {digest[:12]}..., "
                           f"not {recorded[:12]}... as its README.md records: the installed files are damaged. "
                           "Reinstall tpp.")


def backbone_config(path: str):
    """The transformers config of a checkpoint directory, hub id (offline: from the local cache) or
    ``builtin:NAME``, with a clear error when it does not resolve; nothing but the config is read
    (``tpp validate`` uses it)."""
    from transformers import AutoConfig

    path = resolve_backbone(path)
    local = Path(path)
    if local.exists() and not local.is_dir():
        raise TppError(f"backbone.path '{path}' is a file; pass the checkpoint directory (config.json + weights).")
    if local.is_dir() and not (local / "config.json").is_file():
        raise TppError(f"backbone.path '{path}' has no config.json: it is not a transformers checkpoint directory.")
    if not local.exists() and (path.startswith((".", "/", "~")) or path.endswith(("/", os.sep)) or path.count("/") > 1):
        raise TppError(f"backbone.path '{path}' does not exist. Pass a local checkpoint directory, a hub id or "
                       f"{DEFAULT_BACKBONE} (shipped with tpp).")
    if local.is_dir() and not any(local.glob("*.safetensors")) and not (local / "pytorch_model.bin").is_file():
        raise TppError(f"backbone.path '{path}' has a config.json but no weights (model.safetensors): copy the whole "
                       "checkpoint folder.")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 (a user's file: transformers and huggingface_hub raise their own)
        offline = not local.exists() and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
        hint = (" Offline (HF_HUB_OFFLINE is set) a hub id loads only from the local Hugging Face cache: fetch it "
                "once with internet access, or pass a local checkpoint folder." if offline else "")
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        if not local.exists():
            hint += " (read as a hub id: no local folder of that name exists)"
        raise TppError(f"cannot read backbone '{path}': {first}{hint}".strip()) from None
    _check_config(config, path)
    return config


def has_decoder_weights(path: str) -> bool | None:
    """Whether a checkpoint folder's weights hold its ViT-MAE decoder whole (:func:`decoder_weights`); None when
    that cannot be told without loading (a hub id, a ``pytorch_model.bin``)."""
    report = decoder_weights(path)
    return None if report is None else report.whole


@dataclass(frozen=True)
class DecoderWeights:
    """What a ViT-MAE checkpoint's weights file holds of the decoder its config describes."""
    file: str            # the weights file read (or its shard index)
    expected: int        # decoder tensors the model has
    missing: tuple = ()  # decoder tensors absent or of another shape, as transformers names them

    @property
    def whole(self) -> bool:
        return not self.missing

    @property
    def present(self) -> bool:
        """Some of the decoder is there (a partial save), as opposed to none of it (an encoder-only save)."""
        return len(self.missing) < self.expected

    def describe(self, first: int = 4) -> str:
        shown = ", ".join(self.missing[:first]) + (f" and {len(self.missing) - first} more" if
                                                   len(self.missing) > first else "")
        return (f"'{self.file}' holds {self.expected - len(self.missing)} of the {self.expected} decoder tensors "
                f"whole; missing or of another shape: {shown}")


def decoder_weights(path: str) -> DecoderWeights | None:
    """Which decoder tensors a local ViT-MAE checkpoint's safetensors lack or hold at another shape than its config
    gives them, told by transformers loading it onto the meta device (names and shapes from the headers, no tensor
    read; its renaming of older checkpoints' names applies). None when that cannot be told without loading (a hub
    id, a ``pytorch_model.bin``, another model type) or the folder does not load (loading it names the problem)."""
    from transformers import ViTMAEForPreTraining
    from transformers.utils import logging as hf_logging

    try:
        local = Path(resolve_backbone(path))
        files = [local / name for name in ("model.safetensors.index.json", "model.safetensors")]
        file = next((f for f in files if f.is_file()), None)
        if file is None or (_read_json(local / "config.json") or {}).get("model_type") != "vit_mae":
            return None
        hf_logging.set_verbosity_error()  # transformers' load report: the missing keys are what is asked
        model, loading = ViTMAEForPreTraining.from_pretrained(str(local), device_map="meta", use_safetensors=True,
                                                              ignore_mismatched_sizes=True, output_loading_info=True)
    except Exception:  # noqa: BLE001 (a damaged file, a builtin name not shipped: loading it names the problem)
        return None
    expected = [k for k in model.state_dict() if k.startswith("decoder.")]
    absent = {k for k in loading.get("missing_keys", ()) if k.startswith("decoder.")}
    absent |= {k[0] if isinstance(k, tuple) else k for k in loading.get("mismatched_keys", ())}
    return DecoderWeights(str(file), len(expected), tuple(sorted(k for k in absent if k.startswith("decoder."))))


def loaded_decoder(path: str, model, loading: dict) -> DecoderWeights:
    """What a loaded ``ViTMAEForPreTraining`` (``model``, its ``loading`` info from transformers) got of its decoder
    from the weights of backbone ``path``; shapes that differ fail the load itself."""
    expected = sum(1 for k in model.state_dict() if k.startswith("decoder."))
    missing = sorted(k for k in loading.get("missing_keys", ()) if k.startswith("decoder."))
    return DecoderWeights(path, expected, tuple(missing))


CONFIG_BOUNDS = {"image_size": (1, 4096), "patch_size": (1, 4096), "num_channels": (1, 4), "hidden_size": (1, 8192),
                 "num_hidden_layers": (1, 256), "num_attention_heads": (1, 256)}  # what a ViT-family config may say


def _check_config(config, path: str) -> None:
    """The config's sizes are whole numbers in sane ranges (a forged ``hidden_size=2**40`` would try to
    allocate it; ``patch_size=0`` divides by zero), the patch fits the image and the heads divide the width.
    Another model family is left to :func:`_family_of`, whose error names the supported ones."""
    if getattr(config, "model_type", None) not in FAMILIES:
        return
    for key, (low, high) in CONFIG_BOUNDS.items():
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
            value = value[0]  # a square (size, size)
        if value is None and key == "num_attention_heads":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise TppError(f"backbone '{path}': config.json's {key} is {repr(value)[:40]}; a whole number in "
                           f"{low}..{high} is expected.")
    if config.patch_size > _side(config.image_size):
        raise TppError(f"backbone '{path}': config.json's patch_size {config.patch_size} exceeds its image_size.")
    heads = getattr(config, "num_attention_heads", None)
    if heads and config.hidden_size % heads:
        raise TppError(f"backbone '{path}': config.json's hidden_size {config.hidden_size} is not a multiple of "
                       f"num_attention_heads {heads}.")


def _side(size) -> int:
    return size[0] if isinstance(size, (list, tuple)) else size


def check_input_size(size: int, info: BackboneInfo) -> int:
    if size < info.patch_size or size % info.patch_size:
        raise TppError(f"backbone.input_size={size} must be a positive multiple of the patch size "
                       f"({info.patch_size}) of backbone '{info.id}'.")
    return size


def _normalisation(local: Path, channels: int, mean, std) -> tuple[list, list]:
    """Mean/std from the config, else the checkpoint's image-processor config, else ImageNet's."""
    if mean is None or std is None:
        proc = _read_json(local / "preprocessor_config.json") if local.is_dir() else None
        if proc is None and not local.is_dir():
            proc = _hub_preprocessor(str(local))
        proc = proc or {}
        mean = mean if mean is not None else proc.get("image_mean", [0.485, 0.456, 0.406])
        std = std if std is not None else proc.get("image_std", [0.229, 0.224, 0.225])
    try:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
    except (TypeError, ValueError):
        raise TppError(f"backbone '{local}': image_mean / image_std must be lists of numbers, not "
                       f"{str(mean)[:40]!r} / {str(std)[:40]!r}.") from None
    if not all(math.isfinite(v) for v in mean + std) or any(v <= 0 for v in std):
        raise TppError(f"backbone '{local}': image_mean must be finite and image_std positive.")
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise TppError(f"backbone normalisation has {len(mean)} means / {len(std)} stds for {channels} channels.")
    return mean, std


def _hub_preprocessor(hub_id: str) -> dict | None:
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(hub_id)
        return {"image_mean": list(proc.image_mean), "image_std": list(proc.image_std)}
    except (OSError, ValueError, AttributeError):
        return None


def backbone_hash(model: nn.Module) -> str:
    """sha256 over the encoder's own tensors (sorted names, dtypes, shapes, bytes).

    Adapter tensors (names containing ``lora_`` or other peft markers) and wrapper prefixes are
    excluded, so the same checkpoint hashes the same whatever class loaded it. Computed once at
    load time and kept in :class:`BackboneInfo`.
    """
    state = base_state_dict(model)
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def is_adapter_key(name: str) -> bool:
    """True for tensors an adapter method adds (each registered method's ``prefix``: peft's ``lora_``,
    ``hada_`` ...; tpp's own methods name theirs ``tpp_*``), false for the backbone's own."""
    from tpp.adapters import adapter_marker

    return bool(adapter_marker().search(name))


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own tensors with peft wrapper names undone: ``layers.0.attention.q_proj.weight``."""
    out = {}
    for name, tensor in model.state_dict().items():
        if is_adapter_key(name):
            continue
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        out[clean] = tensor
    return out


def resolve_targets(encoder: Encoder, leaf_names=None) -> list[str]:
    """Full names of the encoder's ``nn.Linear`` modules whose last name part is in ``leaf_names``.

    Raises TppError when nothing matches or a transformer layer gets no target: a silent no-op
    adapter would train only the head.
    """
    leaf_names = tuple(leaf_names or encoder.family.default_targets)
    return resolve_modules(encoder, lambda name, m: isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in leaf_names,
                           f"adapter.target_modules {list(leaf_names)}",
                           "Use leaf names of Linear layers such as q_proj, v_proj, fc1.", leaves=leaf_names)


def resolve_modules(encoder: Encoder, predicate, what: str, hint: str = "", leaves=None) -> list[str]:
    """Full names of modules inside the encoder's transformer layers with ``predicate(name, module)``;
    every layer must get at least one, and every requested leaf name in ``leaves`` must match (a typo
    in one name is not silently dropped); else TppError naming ``what``."""
    layer_re = re.compile(encoder.family.layer_pattern)
    names, layers = [], set()
    for name, module in encoder.model.named_modules():
        match = layer_re.match(name)
        if match and predicate(name, module):
            names.append(name)
            layers.add(int(match.group(1)))
    if not names:
        raise TppError(f"{what} match no module of the {encoder.family.model_type} encoder's layers. {hint}".strip())
    missing = set(range(encoder.model.config.num_hidden_layers)) - layers
    if missing:
        raise TppError(f"{what} leave encoder layers {sorted(missing)} without targets.")
    unmatched = sorted(set(leaves or ()) - {name.rsplit(".", 1)[-1] for name in names})
    if unmatched:
        raise TppError(f"{what}: {unmatched} match no module of the {encoder.family.model_type} encoder's layers. "
                       f"{hint}".strip())
    return names
