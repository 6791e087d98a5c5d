"""Corruption shift: the MedMNIST-C corruptions per dataset, 5 severities, on numpy / PIL / scipy.

Families, formulas and per-dataset severity parameters follow MedMNIST-C (Di Salvo, Doerrich and Ledig,
"MedMNIST-C: Comprehensive benchmark and improved classifier robustness by simulating realistic image
corruptions", 2024; package ``medmnistc`` 0.1.0, ``medmnistc/corruptions/registry.py``, Apache-2.0). The
package pins medmnist 3.0.1 and scikit-image 0.23.2 and needs ImageMagick through Wand, so tpp re-implements
the families here:

- pixelate, JPEG, brightness, contrast: the same PIL calls as MedMNIST-C (equal outputs);
- gaussian / speckle / impulse / shot noise, gamma: the same formulas (noise drawn from tpp's own seeded
  generator, one per image: reproducible, not the package's draws);
- gaussian blur: torchvision's kernel-size rule (sigma = 0.3 ((k - 1) / 2 - 1) + 0.8, mirrored border) with scipy;
- defocus blur: MedMNIST-C's aliased disk kernel (scipy's gaussian filter for OpenCV's);
- motion blur: ImageMagick's one-sided Gaussian line kernel (radius, sigma, angle drawn in [-45, 45] degrees),
  re-implemented with scipy: close to, not equal to, ImageMagick's.

MedMNIST-C set its parameters on 224-px images; tpp applies them at the stored size. Severity 0 is the clean
image. Images are uint8 (H, W) or (H, W, 3) in and out.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage

from tpp.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)


# -- the families: f(image uint8, parameter, rng) -> uint8 ------------------------------------------------

def _float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def pixelate(img, factor, rng):
    pil = Image.fromarray(img)
    w, h = pil.size
    small = pil.resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.BOX)
    return np.array(small.resize((w, h), Image.BOX))


def jpeg(img, quality, rng):
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    return np.array(Image.open(buffer))


def gaussian_noise(img, scale, rng):
    x = _float(img)
    return _uint8(x + rng.normal(size=x.shape, scale=scale))


def speckle_noise(img, scale, rng):
    x = _float(img)
    return _uint8(x + x * rng.normal(size=x.shape, scale=scale))


def impulse_noise(img, amount, rng):
    """Salt and pepper (scikit-image's ``s&p``, half salt): a fraction ``amount`` of the values flipped."""
    x = _float(img)
    flip = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x = np.where(flip & salt, 1.0, np.where(flip & ~salt, 0.0, x))
    return _uint8(x)


def shot_noise(img, mult, rng):
    return _uint8(rng.poisson(_float(img) * mult) / mult)


def _per_channel(img: np.ndarray, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if img.ndim == 2:
        return f(img)
    return np.stack([f(img[..., c]) for c in range(img.shape[-1])], axis=-1)


def gaussian_blur(img, kernel, rng):
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    radius = (kernel - 1) // 2
    return _uint8(_per_channel(_float(img), lambda c: ndimage.gaussian_filter(c, sigma, mode="mirror",
                                                                              truncate=radius / sigma)))


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    size = 8 if radius <= 8 else int(np.ceil(radius))
    ax = np.arange(-size, size + 1)
    xx, yy = np.meshgrid(ax, ax)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    return ndimage.gaussian_filter(disk, alias_blur, mode="mirror")


def defocus_blur(img, params, rng):
    radius, alias = params
    kernel = _disk(radius, alias)
    return _uint8(_per_channel(_float(img), lambda c: ndimage.convolve(c, kernel, mode="mirror")))


def _motion_kernel(radius: float, sigma: float, angle: float) -> np.ndarray:
    """A one-sided line of Gaussian weights (ImageMagick's motion blur), ``radius`` pixels long at ``angle``."""
    length = max(1, int(np.ceil(radius)))
    steps = np.arange(length + 1)
    weights = np.exp(-(steps ** 2) / (2 * max(sigma, 1e-6) ** 2))
    size = 2 * length + 1
    kernel = np.zeros((size, size))
    dx, dy = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    for s, w in zip(steps, weights):
        kernel[int(round(length + s * dy)), int(round(length + s * dx))] += w
    return kernel / kernel.sum()


def motion_blur(img, params, rng):
    radius, sigma = params
    kernel = _motion_kernel(radius, sigma, rng.uniform(-45, 45))
    return _uint8(_per_channel(_float(img), lambda c: ndimage.convolve(c, kernel, mode="nearest")))


def brightness(img, factor, rng):
    return np.array(ImageEnhance.Brightness(Image.fromarray(img)).enhance(factor)).astype(np.uint8)


def contrast(img, factor, rng):
    return np.array(ImageEnhance.Contrast(Image.fromarray(img)).enhance(factor)).astype(np.uint8)


def gamma(img, value, rng):
    """torchvision's ``adjust_gamma`` on a PIL image (gain 1): a 256-entry table."""
    table = np.array([int((255 + 1 - 1e-3) * pow(v / 255.0, value)) for v in range(256)], dtype=np.uint8)
    return table[img]


# -- per-dataset parameters (MedMNIST-C registry.py), severities 1..5 -------------------------------------

_DIGITAL_224 = {"pixelate": (pixelate, [0.30, 0.25, 0.20, 0.15, 0.10]), "jpeg_compression": (jpeg, [50, 30, 15, 10, 7])}
_RADIOLOGY = {  # chest X-ray (ChestMNIST), the same for PneumoniaMNIST but pixelate / noise
    "gaussian_blur": (gaussian_blur, [3, 5, 7, 9, 11]),
    "brightness_up": (brightness, [1.1, 1.2, 1.3, 1.4, 1.5]),
    "brightness_down": (brightness, [0.9, 0.8, 0.7, 0.6, 0.5]),
    "contrast_up": (contrast, [1.1, 1.2, 1.3, 1.4, 1.6]), "contrast_down": (contrast, [0.9, 0.8, 0.7, 0.6, 0.4]),
    "gamma_corr_up": (gamma, [1.1, 1.2, 1.3, 1.4, 1.6]), "gamma_corr_down": (gamma, [0.9, 0.8, 0.7, 0.6, 0.4]),
}
_ORGAN = {
    "pixelate": (pixelate, [0.7, 0.6, 0.5, 0.40, 0.35]), "jpeg_compression": (jpeg, [50, 30, 15, 10, 7]),
    "gaussian_noise": (gaussian_noise, [0.04, 0.08, 0.12, 0.16, 0.20]),
    "speckle_noise": (speckle_noise, [0.05, 0.10, 0.20, 0.30, 0.40]),
    "impulse_noise": (impulse_noise, [0.01, 0.02, 0.03, 0.05, 0.08]),
    "shot_noise": (shot_noise, [200, 100, 50, 25, 15]), "gaussian_blur": (gaussian_blur, [11, 13, 15, 17, 21]),
    "brightness_up": (brightness, [1.2, 1.3, 1.4, 1.5, 1.6]),
    "brightness_down": (brightness, [0.8, 0.75, 0.7, 0.65, 0.60]),
    "contrast_up": (contrast, [1.3, 1.4, 1.6, 1.7, 1.8]), "contrast_down": (contrast, [0.8, 0.7, 0.6, 0.55, 0.5]),
    "gamma_corr_up": (gamma, [1.3, 1.4, 1.6, 1.8, 2.0]), "gamma_corr_down": (gamma, [0.9, 0.8, 0.7, 0.6, 0.4]),
}
PRESETS: dict[str, dict[str, tuple[Callable, list]]] = {
    "breastmnist": {  # ultrasound
        **_DIGITAL_224, "speckle_noise": (speckle_noise, [0.10, 0.15, 0.20, 0.25, 0.30]),
        "motion_blur": (motion_blur, [(5, 5), (9, 7), (9, 10), (13, 10), (17, 12)]),
        "brightness_up": (brightness, [1.4, 1.5, 1.6, 1.8, 2.0]),
        "brightness_down": (brightness, [0.55, 0.5, 0.45, 0.4, 0.3]),
        "contrast_down": (contrast, [0.9, 0.8, 0.7, 0.6, 0.4]),
    },
    "pneumoniamnist": {  # chest X-ray
        "pixelate": (pixelate, [0.8, 0.7, 0.6, 0.5, 0.40]), "jpeg_compression": (jpeg, [50, 30, 15, 10, 7]),
        "gaussian_noise": (gaussian_noise, [0.04, 0.05, 0.06, 0.07, 0.08]),
        "speckle_noise": (speckle_noise, [0.05, 0.07, 0.10, 0.15, 0.20]),
        "impulse_noise": (impulse_noise, [0.005, 0.01, 0.013, 0.017, 0.02]),
        "shot_noise": (shot_noise, [300, 200, 150, 100, 80]), **_RADIOLOGY,
    },
    "chestmnist": {
        **_DIGITAL_224, "gaussian_noise": (gaussian_noise, [0.04, 0.08, 0.12, 0.18, 0.26]),
        "speckle_noise": (speckle_noise, [0.05, 0.15, 0.2, 0.35, 0.45]),
        "impulse_noise": (impulse_noise, [0.01, 0.03, 0.06, 0.09, 0.17]),
        "shot_noise": (shot_noise, [60, 25, 18, 10, 5]), **_RADIOLOGY,
    },
    "octmnist": {  # retinal OCT
        "pixelate": (pixelate, [0.30, 0.25, 0.20, 0.15, 0.10]), "jpeg_compression": (jpeg, [30, 15, 10, 7, 5]),
        "speckle_noise": (speckle_noise, [0.15, 0.30, 0.40, 0.50, 0.60]),
        "defocus_blur": (defocus_blur, [(0.5, 0.6), (1, 0.5), (1.5, 0.1), (2.0, 0.5), (2.5, 0.1)]),
        "motion_blur": (motion_blur, [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]),
        "contrast_down": (contrast, [0.6, 0.4, 0.3, 0.2, 0.15]),
    },
    "organamnist": _ORGAN, "organcmnist": _ORGAN, "organsmnist": _ORGAN,  # abdominal CT
}


def preset(name: str) -> dict[str, tuple[Callable, list]]:
    """The corruptions of a dataset preset; a config error listing the presets for another name."""
    if name not in PRESETS:
        raise ConfigError(f"no MedMNIST-C corruption parameters for '{name}'. Presets: {', '.join(sorted(PRESETS))}; "
                          "pick the one closest to your modality with evaluate.corruption_preset=NAME.")
    return PRESETS[name]


def corrupt(image: np.ndarray, name: str, severity: int, preset_name: str, seed: int = 0) -> np.ndarray:
    """``image`` (uint8 (H, W) or (H, W, 3)) under corruption ``name`` at ``severity`` 0..5 (0: a copy of the
    image); random draws from ``seed``."""
    families = preset(preset_name)
    if name not in families:
        raise ConfigError(f"corruption '{name}' is not one of {preset_name}'s: {', '.join(families)}.")
    if severity not in (0, *SEVERITIES):
        raise ConfigError(f"corruption severity must be 0..5, got {severity!r}.")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if severity == 0:
        return image.copy()
    family, params = families[name]
    out = family(image, params[severity - 1], np.random.default_rng(seed))
    return out.reshape(image.shape).astype(np.uint8)


class CorruptedImages:
    """Stored images (an array or ImageFiles: ``images[i]`` uint8) seen corrupted, one image at a time:
    ``len`` and ``[i]`` like the images themselves; image ``i`` draws from ``seed + i``."""

    def __init__(self, images, name: str, severity: int, preset_name: str, seed: int = 0):
        preset(preset_name)
        self.images, self.name, self.severity, self.preset, self.seed = images, name, severity, preset_name, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return corrupt(np.asarray(self.images[int(i)]), self.name, self.severity, self.preset, self.seed + int(i))
