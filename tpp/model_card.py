"""The Hugging Face model card (``README.md``) of an adapter directory, rendered from its ``tpp_card.json``.

Front matter (what the Hub and ``huggingface_hub.ModelCard`` read): ``base_model``, ``library_name: peft`` for
peft methods, ``tags`` (tpp, medical-imaging, method, modality, task), ``pipeline_tag`` and a ``tpp`` block
(data name, content hash and counts, metrics, decision threshold). The body says what the adapter is, how it
was measured, its intended use and limits, and how to load it:

- classification adapters of peft methods, the ``full`` baseline and a linear probe: a code block of plain
  transformers + peft + safetensors + torch (:func:`hf_snippet`) that reproduces tpp's probabilities
  (``tests/test_hf_native.py`` runs that very block);
- tpp's own methods (bottleneck, SSF, BitFit, VPT, ...), segmentation and TPP-stage adapters: tpp is needed
  (``tpp.load`` / ``tpp predict``), and the card says why peft refuses the folder.

Nothing here holds a path of the machine: the backbone is named by :func:`portable_backbone_id`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from tpp.backbones import BUILTIN_PREFIX as BUILTIN
from tpp.safe_write import finite_json

README = "README.md"
SNIPPET_START = "```python\n"
SNIPPET_END = "```\n"


def portable_backbone_id(backbone_id: str) -> str:
    """A hub id stays as it is; a local folder (absolute, relative or existing) becomes its folder name, so no
    adapter file holds a path of the machine that trained it (the card's backbone hash identifies it)."""
    text = str(backbone_id)
    local = text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text or Path(text).exists()
    return Path(text.rstrip("/\\")).expanduser().resolve().name if local else text


def hub_base_model(backbone_id) -> str | None:
    """``backbone_id`` when it is a Hub repo id (``owner/name`` that is not a local folder), else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(backbone_id or "")
    if portable_backbone_id(text) != text or text.startswith(BUILTIN) or text.count("/") != 1:
        return None
    try:
        validate_repo_id(text)
    except HFValidationError:
        return None
    return text


def _snippet_backbone(backbone_id: str) -> tuple[str, str]:
    """(the snippet's ``backbone = ...`` literal, its comment): a hub id as it is; a backbone shipped with tpp
    (``builtin:NAME``) as the folder to pass, with the one line that prints it; else the folder name."""
    if str(backbone_id).startswith(BUILTIN):
        name = str(backbone_id)[len(BUILTIN):]
        return (json.dumps(f"path/to/{name}"), f"shipped with tpp: python -c \"from tpp.backbones import "
                f"resolve_backbone; print(resolve_backbone('{BUILTIN}{name}'))\"")
    return json.dumps(portable_backbone_id(backbone_id)), "hub id or your copy of it (sha256 in tpp_card.json)"


def hf_loadable(card: dict, uses_peft: bool) -> bool:
    """True when plain transformers (+ peft) reproduce this adapter's outputs: a classification head on a peft
    method, the ``full`` baseline (its encoder is saved in transformers' format) or a linear probe."""
    rule, backbone = card.get("input"), card.get("backbone")
    complete = (isinstance(rule, dict) and all(k in rule for k in ("image_size", "image_channels", "channels", "mean",
                                                                    "std"))
                and isinstance(backbone, dict) and "patch_size" in backbone)
    if card.get("task", {}).get("type") != "classification" or not complete:
        return False
    return uses_peft or card.get("kind") == "full_model" or card.get("method") == "linear_probe"


def render(card: dict, uses_peft: bool) -> str:
    """The whole ``README.md``: YAML front matter, then Markdown."""
    meta = yaml.safe_dump(front_matter(card, uses_peft), sort_keys=False, allow_unicode=True)
    sections = [_title(card), _summary(card, uses_peft), _data(card), _metrics(card), _intended_use(card),
                _how_to_use(card, uses_peft), _files(card, uses_peft)]
    return f"---\n{meta}---\n\n" + "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


def front_matter(card: dict, uses_peft: bool) -> dict:
    """The card's metadata for the Hub (keys it knows, plus a ``tpp`` block of what tpp measured)."""
    task = card.get("task", {})
    task_type = task.get("type", "none")
    meta = {}
    base = hub_base_model(card.get("backbone", {}).get("id"))
    if base:  # the Hub checks base_model against its repo ids: a folder name or builtin:NAME is left out
        meta["base_model"] = base
    if uses_peft:
        meta["library_name"] = "peft"
    tags = ["tpp", "medical-imaging", str(card.get("method")), str(card.get("modality") or "unknown-modality")]
    tags.append(task_type if task_type != "none" else "target-parameter-pretraining")
    meta["tags"] = list(dict.fromkeys(tags))
    pipeline = {"classification": "image-classification", "segmentation": "image-segmentation"}.get(task_type)
    if pipeline:
        meta["pipeline_tag"] = pipeline
    data = card.get("data", {})
    block = {"format": card.get("format"), "kind": card.get("kind"), "stage": card.get("stage"),
             "method": card.get("method"), "site": card.get("site"), "modality": card.get("modality"),
             "backbone_sha256": card.get("backbone", {}).get("hash"),
             "data": {"name": data.get("name"), "content_sha256": data.get("content_sha256"),
                      "counts": data.get("counts"), "used": data.get("used")},
             "metrics": card.get("metrics")}
    if task.get("label_names"):
        block["label_names"] = task["label_names"]
    if isinstance(task.get("decision"), dict):
        block["decision"] = _decision_summary(task)
    meta["tpp"] = json.loads(json.dumps(finite_json(block), allow_nan=False))  # plain JSON types only (safe YAML)
    return meta


def _decision_summary(task: dict) -> dict:
    decision = task["decision"]
    return {"positive_class": task.get("positive_class"), "threshold": decision.get("threshold"),
            "rule": decision.get("rule")}


def _number(value):
    """Floats to 4 decimals for reading (the front matter and tpp_card.json keep every digit); an undefined
    metric (None in the card, NaN in memory: the AUROC of a one-class split) reads "undefined"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "undefined"
    return f"{value:.4f}" if isinstance(value, float) else value


def _cell(value) -> str:
    """A value for a Markdown table cell (no pipes or line breaks from a card field)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _title(card: dict) -> str:
    task = card.get("task", {}).get("type", "none")
    what = "pre-trained target parameters (TPP)" if task == "none" else f"{task} adapter"
    return f"# tpp {_cell(card.get('method'))} {what}: site {_cell(card.get('site'))}, {_cell(card.get('modality'))}"


def _summary(card: dict, uses_peft: bool) -> str:
    b = card.get("backbone", {})
    rule = card.get("input", {})
    rows = [("method", f"{card.get('method')} ({'peft' if uses_peft else 'tpp'}), options {card.get('options')}"),
            ("stage / kind", f"{card.get('stage')} / {card.get('kind')}"),
            ("trainable parameters", f"{card.get('trainable_parameters')}"),
            ("backbone", f"`{portable_backbone_id(b.get('id', 'unknown'))}` ({b.get('model_type')}, "
                         f"{b.get('image_size')} px, patch {b.get('patch_size')}), weights sha256 `{b.get('hash')}`"),
            ("input", f"{rule.get('image_size')} px, {rule.get('image_channels')} image channel(s) -> "
                      f"{rule.get('channels')} backbone channel(s); resize: {rule.get('resize')}; scale "
                      f"{rule.get('scale')}; mean {rule.get('mean')}, std {rule.get('std')}")]
    task = card.get("task", {})
    if task.get("label_names"):
        rows.append(("labels", ", ".join(f"`{name}`" for name in task["label_names"])))
    if task.get("head"):
        rows.append(("head", task["head"]))
    if isinstance(task.get("decision"), dict):
        d = _decision_summary(task)
        rows.append(("decision", f"`{d['positive_class']}` where p({d['positive_class']}) >= {_number(d['threshold'])} "
                                 f"(rule {d['rule']}, chosen on the validation split)"))
    rows.append(("created", f"{card.get('created')} with tpp {card.get('versions', {}).get('tpp')}"))
    table = "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows)
    note = ("The backbone is named by its hub id, or by its folder name when it was a local folder; the sha256 in "
            "`tpp_card.json` (`backbone.hash`) identifies it either way: tpp refuses a backbone with other weights.")
    return f"| | |\n|---|---|\n{table}\n\n{note}"


def _data(card: dict) -> str:
    data = card.get("data", {})
    lines = [f"- name: `{_cell(data.get('name'))}`, modality {_cell(data.get('modality'))}",
             f"- content sha256: `{_cell(data.get('content_sha256'))}` (images and labels; no paths are recorded)",
             f"- images per split: {_cell(data.get('counts'))}; used: {_cell(data.get('used'))}"]
    if data.get("classes"):
        lines.append(f"- classes: {_cell(', '.join(f'`{name}`' for name in data['classes']))}")
    if isinstance(data.get("reading"), dict):  # read new images the same way
        from tpp.data.file_reading import CARD_KEYS, shown

        flags = " ".join(shown(CARD_KEYS[k], v) for k, v in data["reading"].items() if k in CARD_KEYS)
        lines.append(f"- each file was read as `tpp predict {_cell(flags)}` reads it: predict with the same options")
    return "## Training data\n\n" + "\n".join(lines)


def _metrics(card: dict) -> str:
    metrics = card.get("metrics") or {}
    task = card.get("task", {}).get("type")
    unit = {"classification": "AUROC", "segmentation": "Dice"}.get(task, "value")
    rows = "\n".join(f"| {_cell(k)} | {_cell(_number(v))} |" for k, v in metrics.items())
    return f"## Metrics\n\n| split / metric | {unit} |\n|---|---|\n{rows}" if rows else ""


def _intended_use(card: dict) -> str:
    data = card.get("data", {})
    return (
        "## Intended use and limitations\n\n"
        f"Research use: adapting the frozen backbone to {_cell(card.get('modality'))} images of site "
        f"`{_cell(card.get('site'))}`, for comparison with other adapters and for further fine-tuning or deployment "
        "with tpp. It is not a medical device and was not validated for clinical decisions.\n\n"
        f"- The metrics hold for the data named above ({_cell(data.get('name'))}) only; another scanner, protocol or "
        "population can change them. Re-evaluate on local data (`tpp run evaluate`) before any use.\n"
        "- Inputs must follow the input rule above (size, channels, intensity scaling); other preprocessing changes "
        "the outputs.\n"
        "- A binary decision threshold was chosen on a validation split that may be small; re-check it on local "
        "validation data.")


def _how_to_use(card: dict, uses_peft: bool) -> str:
    tpp_lines = ("```python\nimport tpp\n\nmodel = tpp.load(\"path/to/this/folder\", backbone=\"BACKBONE\")\n"
                 "probabilities = model.predict([\"scan.png\"])\n```\n\nor from the command line (an adapter store "
                 "serves one folder per site):\n\n```bash\ntpp adapters publish path/to/this/folder STORE --site SITE\n"
                 "tpp predict --backbone BACKBONE --store STORE --site SITE scans/ --out predictions.csv\n```")
    if hf_loadable(card, uses_peft):
        return ("## How to use\n\nWith tpp:\n\n" + tpp_lines + "\n\nWith plain transformers"
                + (" + peft" if uses_peft else "") + " (reproduces tpp's probabilities to within 1e-5; images as uint8 "
                "arrays, read as tpp reads files: 8-bit gray stays gray, everything else RGB; DICOM / NIfTI need "
                "tpp's reader):\n\n" + hf_snippet(card, uses_peft))
    why = _why_tpp(card, uses_peft)
    return f"## How to use\n\n{why}\n\n{tpp_lines}"


def _why_tpp(card: dict, uses_peft: bool) -> str:
    task = card.get("task", {}).get("type")
    if task in (None, "none"):
        return ("This folder holds pre-trained target parameters without a task head: it is the starting point of a "
                "tpp fine-tuning run (`tpp run finetune ... adapter.init_from=path/to/this/folder`), not a predictor."
                + (" peft's `PeftModel.from_pretrained` loads its tensors onto the backbone, but there is nothing to "
                   "predict with." if uses_peft else ""))
    if not uses_peft:
        return (f"`{_cell(card.get('method'))}` is tpp's own method, not a peft one: this folder has no "
                "`adapter_config.json`, so peft's `PeftModel.from_pretrained` refuses it. Load it with tpp:")
    return (f"The {task} head is tpp's own module (`head.safetensors`), which plain transformers cannot rebuild: "
            "the adapter tensors load with peft, but predictions need tpp:")


def _files(card: dict, uses_peft: bool) -> str:
    rows = [("tpp_card.json", "tpp's card: everything above, machine-readable (tpp reads this, not README.md)")]
    if uses_peft:
        rows.append(("adapter_config.json, adapter_model.safetensors", "peft's adapter (tensor names relative to "
                     "the encoder, no backbone weights)"))
    elif card.get("weights_file") == "model.safetensors":
        rows.append(("config.json, model.safetensors", "the whole fine-tuned encoder in transformers' format "
                     "(mask_ratio 0.0: no random masking)"))
    elif card.get("weights_file"):
        rows.append(("adapter_model.safetensors", f"tpp's {card.get('method')} tensors (safetensors)"))
    if card.get("task", {}).get("type") not in (None, "none"):
        rows.append(("head.safetensors", "the task head (classification: `linear.weight` (K, D), `linear.bias` (K,))"))
    return "## Files\n\n" + "\n".join(f"- `{a}`: {b}" for a, b in rows)


def hf_snippet(card: dict, uses_peft: bool) -> str:
    """The plain transformers (+ peft) code block reproducing tpp's class probabilities for this card.

    It mirrors :func:`tpp.data.images.to_model_input` (the card's input rule) and :class:`tpp.backbones.Encoder`
    (ViT-MAE without masking, patches in raster order; mean of the patch tokens, prefix tokens dropped) followed
    by :class:`tpp.tasks.classification.ClassificationHead` and a softmax."""
    from tpp.backbones import FAMILIES

    b, rule, task = card["backbone"], card["input"], card["task"]
    mae = b.get("model_type") == "vit_mae"
    family = FAMILIES.get(b.get("model_type"), FAMILIES["vit"])
    size = int(rule["image_size"])
    config_kwargs = ", mask_ratio=0.0" if mae else ""
    call = "pixel_values=x"
    if mae:
        call += ", noise=noise"
    if b.get("model_type") != "dinov2" and size != b.get("image_size"):
        call += ", interpolate_pos_encoding=True"
    if uses_peft:
        load = (f"base = AutoModel.from_pretrained(backbone{config_kwargs})"
                + ("  # ViT-MAE: no random masking" if mae else "")
                + "\nmodel = PeftModel.from_pretrained(base, adapter_dir).eval()")
    elif card.get("kind") == "full_model":
        load = "model = AutoModel.from_pretrained(adapter_dir).eval()  # the fine-tuned encoder (config: mask_ratio 0)"
    else:
        load = f"model = AutoModel.from_pretrained(backbone{config_kwargs}).eval()  # frozen backbone: a linear probe"
    labels = list(task.get("label_names", []))
    decision = ""
    if len(labels) == 2:
        positive = task.get("positive_class", labels[1])
        threshold = float(task.get("decision", {}).get("threshold", 0.5)) if isinstance(task.get("decision"),
                                                                                       dict) else 0.5
        k = labels.index(positive) if positive in labels else 1
        decision = (f"\n\n\ndef decide(probabilities):\n"
                    f"    \"\"\"tpp's binary decision: LABELS[{k}] (the positive class) where its probability >= "
                    f"the validated threshold.\"\"\"\n"
                    f"    return LABELS[{k}] if probabilities[{k}] >= {threshold!r} else LABELS[{1 - k}]")
    noise = ("\n    n = (x.shape[-2] // PATCH) * (x.shape[-1] // PATCH)\n"
             "    noise = torch.arange(n, dtype=torch.float32).expand(1, n)  # ViT-MAE keeps patches in raster order"
             if mae else "")
    peft_import = "from peft import PeftModel\n" if uses_peft else ""
    backbone, where = _snippet_backbone(b.get("id", "unknown"))
    return f'''{SNIPPET_START}import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
{peft_import}from safetensors.torch import load_file
from transformers import AutoModel

adapter_dir = "path/to/this/folder"
backbone = {backbone}  # {where}

# the card's input rule (tpp_card.json "input")
IMAGE_SIZE, IMAGE_CHANNELS, CHANNELS, PATCH = {size}, {int(rule["image_channels"])}, {int(rule["channels"])}, \
{int(b["patch_size"])}
FILE_RESIZE = {bool(rule.get("file_resize"))!r}  # trained on files: PIL bilinear to IMAGE_SIZE when read
MEAN, STD = {list(rule["mean"])!r}, {list(rule["std"])!r}
LABELS = {labels!r}


def to_pixels(image):
    """uint8 array (H, W) gray or (H, W, 3) RGB -> pixel_values (1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)."""
    if FILE_RESIZE:
        mode = "RGB" if IMAGE_CHANNELS == 3 else "L"
        pil = Image.fromarray(np.ascontiguousarray(image), "RGB" if image.ndim == 3 else "L")
        image = np.array(pil.convert(mode).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.uint8)
    elif IMAGE_CHANNELS == 1 and image.ndim == 3:  # RGB -> gray (ITU-R 601 luma)
        image = np.round(image @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
    elif IMAGE_CHANNELS == 3 and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    x = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    if x.shape[1] == 1 and CHANNELS > 1:
        x = x.expand(-1, CHANNELS, -1, -1)
    elif x.shape[1] == 3 and CHANNELS == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)


{load}
head = load_file(f"{{adapter_dir}}/head.safetensors")  # linear.weight (K, D), linear.bias (K,)


@torch.no_grad()
def predict(image):
    """Class probabilities (K,) of one image, in LABELS order."""
    x = to_pixels(image){noise}
    tokens = model({call}).last_hidden_state  # (1, {family.num_prefix_tokens} + N, D)
    pooled = tokens[:, {family.num_prefix_tokens}:].mean(dim=1)  # mean of the patch tokens
    logits = pooled @ head["linear.weight"].T + head["linear.bias"]
    return logits.softmax(dim=-1)[0]{decision}
{SNIPPET_END}'''


def snippet_of(readme: str) -> str:
    """The plain-transformers code block of a rendered card (what its readers copy); '' if it has none."""
    marker = "With plain transformers"
    if marker not in readme:
        return ""
    rest = readme[readme.index(marker):]
    start = rest.index(SNIPPET_START) + len(SNIPPET_START)
    return rest[start:rest.index("\n" + SNIPPET_END, start) + 1]
