"""Helpers shared by the test modules (fixtures are in conftest.py, the deployment ones in serving_fixtures.py):
the CLI in this process or in a fresh one, the tiny-run settings, image encoders, and waiting that only a
hang can time out. Test modules import from here, never from each other."""
from __future__ import annotations

import io
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
from PIL import Image

from tpp.cli import main
from tpp.config import AdapterConfig, parse_override, repeated_overrides
from tpp.errors import ConfigError

# The only time limit a test puts on a subprocess, a reply or a wait it polls for: one that a hang reaches
# and a slow or loaded machine does not (a test whose subject is a timeout sets its own small one).
HANG_S = 3 * 3600

FINETUNE_CONFIG = "breast_us/mae_vit_tiny_lora_finetune.yaml"
TPP_CONFIG = "breast_us/mae_vit_tiny_lora_tpp.yaml"
FAST = ["train.batch_size=16", "train.eval_batch_size=64", "adapter.r=2"]  # tiny runs on the tiny backbone


# -- the CLI -------------------------------------------------------------------------------------------

def later_wins(args) -> list[str]:
    """``tpp run`` / ``tpp validate`` ARGS (each through ``str``) without the ``key=value`` overrides a later one
    replaces: tests add their own settings to a helper's defaults (``finetune(..., "train.max_steps=10")``), which
    ``tpp`` itself refuses as a key given twice. The earlier overrides yield as a config file's keys do in ``tpp``:
    one that ``tpp`` would call given twice with a later one (the same key, or one inside a value the later one sets
    whole: :func:`tpp.config.repeated_overrides`) is dropped, and a later method (``adapter.method=X`` or
    ``adapter={method: X}``) drops the earlier method options (the helper's ``adapter.r=2``), as a method switched
    on the command line drops the file's. A mapping merges, as in ``tpp``: ``train={lr: 1e-4}`` drops an earlier
    ``train.lr``, not ``train.batch_size``."""
    args = [str(a) for a in args]
    if not args or args[0] not in ("run", "validate"):
        return args
    overrides = [i for i, a in enumerate(args) if "=" in a and not a.startswith("-") and args[i - 1] != "--config"]
    dropped = {i for n, i in enumerate(overrides) for j in overrides[n + 1:]
               if repeated_overrides([args[i], args[j]]) or (_method_option(args[i]) and _sets_method(args[j]))}
    return [a for i, a in enumerate(args) if i not in dropped]


def _parsed(override: str) -> tuple[list, object]:
    try:
        return parse_override(override)
    except ConfigError:  # tpp names it
        return [], None


def _sets_method(override: str) -> bool:
    keys, value = _parsed(override)
    return keys == ["adapter", "method"] or (keys == ["adapter"] and isinstance(value, dict) and "method" in value)


def _method_option(override: str) -> bool:
    """An override of an adapter method's option (``adapter.r=2``), not of a key every method has."""
    keys, _ = _parsed(override)
    return len(keys) > 1 and keys[0] == "adapter" and keys[1] not in {f.name for f in fields(AdapterConfig)}


def run_cli(*args) -> int:
    """``tpp ARGS`` in this process (each argument through ``str``; :func:`later_wins`): its exit code. Output
    goes to pytest's capture (``capsys``); ``--help`` and ``--version`` raise SystemExit, as argparse does."""
    return main(later_wins(args))


def cli_command(*args, prelude: str = "") -> list[str]:
    """The command line of ``tpp ARGS`` in a fresh Python: ``python -m tpp.cli ARGS``, or, with ``prelude``,
    ``python -c`` running ``prelude`` (e.g. a patch) and then ``tpp.cli.main(ARGS)``."""
    if not prelude:
        return [sys.executable, "-m", "tpp.cli", *later_wins(args)]
    bootstrap = f"{prelude}\n\nimport sys\nfrom tpp.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", bootstrap, *later_wins(args)]


def _environment(env: dict | None) -> dict:
    return dict(os.environ, **(env or {}))


def run_cli_subprocess(*args, env: dict | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """``tpp ARGS`` to the end in a fresh process (what is process-wide: Accelerate's precision, torchrun,
    signals, a crash), stdout and stderr captured as text. ``env``: variables set on top of this process's;
    ``prelude``: see :func:`cli_command`."""
    return subprocess.run(cli_command(*args, prelude=prelude), env=_environment(env), capture_output=True,
                          text=True, timeout=HANG_S)


def start_cli_subprocess(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    """``tpp ARGS`` started in a fresh process (text mode; ``popen``: stdout, stderr ... for Popen)."""
    return subprocess.Popen(cli_command(*args), env=_environment(env), text=True, **popen)


def recipe_args(recipe: str, config: str, backbone, root, out, *extra) -> list:
    """``run RECIPE --config CONFIG`` on ``backbone`` and the data in ``root``, writing ``out``."""
    return ["run", recipe, "--config", config, f"backbone.path={backbone}", f"data.root={root}",
            f"output_dir={out}", *extra]


def finetune(backbone, root, out, *extra) -> int:
    """6 steps of the shipped LoRA fine-tuning config with the tiny-run settings; the exit code."""
    return run_cli(*recipe_args("finetune", FINETUNE_CONFIG, backbone, root, out, "train.max_steps=6", *FAST, *extra))


def tpp(backbone, root, out, *extra) -> int:
    """4 steps of the shipped LoRA TPP config with the tiny-run settings; the exit code."""
    return run_cli(*recipe_args("tpp", TPP_CONFIG, backbone, root, out, "train.max_steps=4", *FAST, *extra))


def evaluate(backbone, root, adapter, out, *extra) -> int:
    """The evaluate recipe: ``adapter`` on the test split of ``root``; the exit code."""
    return run_cli(*recipe_args("evaluate", FINETUNE_CONFIG, backbone, root, out, f"adapter.path={adapter}",
                                "data.split=test", *extra))


# -- waiting -------------------------------------------------------------------------------------------

def wait_for(condition, what: str, proc: subprocess.Popen | None = None, poll_s: float = 0.1) -> None:
    """Poll ``condition()`` until it holds. Fails when ``proc`` exits first, or after :data:`HANG_S`."""
    deadline = time.monotonic() + HANG_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with code {proc.returncode} first")
        assert time.monotonic() < deadline, f"{what}: still waiting after {HANG_S} s (a hang)"
        time.sleep(poll_s)


# -- image files ---------------------------------------------------------------------------------------

def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def dicom_bytes(stored: np.ndarray, *, slope=1.0, intercept=0.0, window=None, photometric="MONOCHROME2",
                frames=1, bits=16) -> bytes:
    """A DICOM file of 16-bit ``stored`` values ((H, W), or (H, W, 3): RGB of ``bits`` stored bits), with a
    patient name and ID that must never be logged."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID = "SECRET^PATIENT", "ID-424242"
    rgb = stored.ndim == 3 and stored.shape[-1] == 3 and frames == 1
    ds.Rows, ds.Columns = stored.shape[:2] if rgb else stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3, "RGB") if rgb else (1, photometric)
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if frames > 1:
        ds.NumberOfFrames = frames
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def nifti_bytes(volume: np.ndarray, gz: bool = False) -> bytes:
    import gzip

    import nibabel

    data = nibabel.Nifti1Image(volume.astype(np.float32), np.eye(4)).to_bytes()
    return gzip.compress(data) if gz else data


def toy_segmentation_npz(path, n=40):
    """A tiny segmentation npz (16-px images, a box mask growing with the index, labels, names, groups)."""
    rng = np.random.default_rng(0)
    masks = np.zeros((n, 16, 16), np.uint8)
    for i in range(n):
        masks[i, 4:4 + i % 8 + 2, 3:9] = 255
    np.savez(path, images=rng.integers(0, 255, (n, 16, 16), dtype=np.uint8), masks=masks,
             label=(np.arange(n) % 2).astype(np.uint8), label_names=np.array(["benign", "malignant"]),
             group=np.arange(n) // 4)
    return path


# -- plug-ins --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def plugin_from_file(package, registry: str, name: str, source: str, folder, monkeypatch):
    """Register the plug-in in ``source`` (a module named ``name``) from ``folder`` as if it were a file of
    ``package`` (``tpp.tasks``, ``tpp.adapters`` ...), whose dict ``registry`` holds the registrations. The
    built-ins load first; afterwards the registry is as it was and the module is forgotten."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    package._load_builtin()  # the built-ins, before the path holds the toy
    monkeypatch.setattr(package, registry, dict(getattr(package, registry)))  # the toy is gone afterwards
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    package._load_builtin.cache_clear()
    try:
        yield
    finally:
        sys.modules.pop(f"{package.__name__}.{name}", None)
        package._load_builtin.cache_clear()


def interrupted_at(run, step: int) -> None:
    """``run`` as a run killed right after its checkpoint ``step``: later checkpoints and outputs gone."""
    import shutil

    for later in (run / "checkpoints").iterdir():
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    for name in ("backbone", "adapter", "heads", "metrics.json"):
        target = run / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    (run / "status.json").write_text('{"status": "failed", "error": "KeyboardInterrupt"}')


def without_config_name(text: str) -> str:
    """A config error's text less the config file it names in front (``config 'F' with its overrides: ``)."""
    import re

    return re.sub(r"^(error: )?config '[^']*'( with its overrides)?: ", r"\1", text, count=1)


def count_adapter_reads(monkeypatch, counts: dict, names=None, swaps: dict | None = None, folders=None,
                        store_alias: bool = False) -> None:
    """Count in ``counts`` ({file name: reads}) the reads of adapter files through ``tpp.adapter_read`` (whole-file
    reads and safetensors loads): files named in ``names`` (default every file), in ``folders`` only when given.
    Right after a file's first read, ``swaps[name]`` (tensors) replace it on disk: what a second read would find.
    ``store_alias``: also the adapter store's name for the whole-file read (``tpp.serve.store._read_regular``)."""
    from safetensors.torch import save_file

    from tpp import adapter_read
    places = None if folders is None else {str(folder) for folder in folders}

    def counted(read):
        def wrapper(path, *args, **kwargs):
            out = read(path, *args, **kwargs)
            folder, _, name = str(path).rpartition("/")
            if (names is None or name in names) and (places is None or folder in places):
                counts[name] = counts.get(name, 0) + 1
                if swaps and name in swaps and counts[name] == 1:
                    save_file(swaps[name], str(path))
            return out
        return wrapper

    monkeypatch.setattr(adapter_read, "read_regular", counted(adapter_read.read_regular))
    monkeypatch.setattr(adapter_read, "load_file", counted(adapter_read.load_file))
    if store_alias:
        from tpp.serve import store
        monkeypatch.setattr(store, "_read_regular", adapter_read.read_regular)


def adapter_and_version_copy(backbone, base, copies: str = "copies"):
    """A LoRA adapter fine-tuned on a tiny MedMNIST-format set under ``base`` and a copy of it in a folder named by
    its content hash (a store version, or a copy of one): (run folder's adapter, version copy, {name: bytes})."""
    import shutil

    from conftest import make_medmnist

    from tpp.adapter_dir import ADAPTER_FILES
    from tpp.adapter_read import content_hash

    assert finetune(backbone, make_medmnist(base / "data"), base / "run") == 0
    plain = base / "run" / "adapter"
    files = {f.name: f.read_bytes() for f in plain.iterdir() if f.name in ADAPTER_FILES}
    version = base / copies / content_hash(files)
    shutil.copytree(plain, version, ignore=lambda _, names: set(names) - set(ADAPTER_FILES))
    return plain, version, files
