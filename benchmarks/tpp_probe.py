"""Diagnostic: does target parameter pre-training make the features more linearly separable?

    python benchmarks/tpp_probe.py --target breastmnist --fraction 0.1
    python benchmarks/tpp_probe.py --target pneumoniamnist --fraction 1.0 --tpp-dirs 'pneumoniamnist_mae_s{seed}'

For each seed: mean patch-token features (N, D) of the frozen backbone and of the backbone with that
seed's cached TPP adapter (from ``tpp_gain.py``'s cache), an L2-regularised logistic regression fitted
with L-BFGS on the seed's label subset, test AUROC, and the relative size of the TPP weight update
||(alpha / r) B A|| / ||W|| over the adapted projections. No fine-tuning: this isolates what the
pretext did to the representation.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@torch.no_grad()
def features(encoder, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """(N, C, H, W) -> mean patch tokens (N, D)."""
    return torch.cat([encoder.patch_tokens(encoder(images[i:i + batch])).mean(1) for i in range(0, len(images), batch)])


def logistic_auroc(x_train, y_train, x_test, y_test, weight_decay: float = 1e-3) -> float:
    """Fit softmax regression on standardised features; test AUROC (binary or macro one-vs-rest)."""
    from tpp.metrics import quick_metrics

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    k = int(y_test.max()) + 1
    linear = torch.nn.Linear(x_train.shape[1], k)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x_train), y_train) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return quick_metrics(torch.softmax(linear(x_test), -1), y_test)["auroc"]


def update_size(encoder, base: dict) -> float:
    """Mean over adapted projections of ||delta W|| / ||W|| (delta W = merged LoRA update)."""
    rel = []
    for name, module in encoder.model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            clean = name.replace("base_model.model.", "") + ".weight"
            rel.append(float(module.get_delta_weight("default").detach().norm() / base[clean].norm()))
    return float(np.mean(rel))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="breastmnist")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tpp-dirs", nargs="+", default=["{target}_mae_s{seed}"],
                        help="cached TPP run folders (patterns with {target} and {seed})")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "tpp_gain")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    from report import backbone_cache
    from tpp.adapter_dir import WEIGHTS
    from tpp.adapter_read import read_tensors
    from tpp.backbones import base_state_dict, load_backbone
    from tpp.builders import tensors
    from tpp.data.arrays import load_medmnist
    from tpp.data.subsets import label_fraction_index
    from tpp.model import attach_adapter, load_adapter_state

    dataset = load_medmnist(args.target, args.data_root)
    encoder, info, _ = load_backbone(args.backbone)
    base = base_state_dict(encoder.model)
    train, test = dataset.split("train"), dataset.split("test")
    x_train, x_test = tensors(train.images, info), tensors(test.images, info)
    y_train, y_test = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    frozen_train, frozen_test = features(encoder, x_train), features(encoder, x_test)
    attach_adapter(encoder, "lora", {"r": 8, "alpha": 16})
    rows = []
    for seed in range(args.seeds):
        index = torch.from_numpy(label_fraction_index(train.labels, args.fraction, dataset.name, seed))
        row = {"seed": seed, "labels": len(index),
               "frozen": logistic_auroc(frozen_train[index], y_train[index], frozen_test, y_test)}
        for pattern in args.tpp_dirs:
            tpp_dir = pattern.format(target=args.target, seed=seed)
            folder = backbone_cache(args.cache, args.backbone) / "tpp" / tpp_dir / "adapter"
            if not folder.is_dir():
                continue
            load_adapter_state(encoder, read_tensors(folder, WEIGHTS), str(folder))
            f_train, f_test = features(encoder, x_train[index]), features(encoder, x_test)
            label = pattern.replace("{target}_", "").replace("_s{seed}", "")
            row[label] = logistic_auroc(f_train, y_train[index], f_test, y_test)
            row[label + " update"] = update_size(encoder, base)
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "labels")]
    summary = {k: (float(np.mean([r[k] for r in rows if k in r])),
                   float(np.std([r[k] for r in rows if k in r], ddof=1)))
               for k in keys}
    print(f"\n{args.target}, {args.fraction:.0%} labels, logistic regression on mean patch tokens, {len(rows)} seeds:")
    for k, (m, s) in summary.items():
        print(f"  {k}: {m:.3f} ± {s:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"target": args.target, "fraction": args.fraction, "rows": rows,
                                        "summary": summary, "command": "python benchmarks/tpp_probe.py " +
                                        " ".join(sys.argv[1:])}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
