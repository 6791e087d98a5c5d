"""Self-distillation in the spirit of DINO, for the target parameters only.

Student = frozen backbone + target parameters + a fresh projection head. Teacher = the same modules
with an exponential moving average (EMA) of the student's *trainable* tensors, run through
``torch.func.functional_call`` so the frozen backbone exists once. Two augmented global views per
image; the student on each view predicts the teacher's centred, sharpened output on the other.
The projection head is trained alongside and discarded afterwards (the card records it).

Pieces (B images, C channels, H x W pixels, D encoder width, K prototypes):
  random_views -> embed -> ProjectionHead -> dino_loss, with update_teacher / update_center.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from tpp.backbones import Encoder
from tpp.errors import ConfigError
from tpp.pretext import register


@dataclass
class DINOOptions:
    dino_out_dim: int = field(default=256, metadata={"help": "prototypes in the projection head"})
    dino_student_temp: float = field(default=0.1, metadata={"help": "student softmax temperature"})
    dino_teacher_temp: float = field(default=0.04, metadata={"help": "teacher softmax temperature (sharpening)"})
    dino_ema: float = field(default=0.99, metadata={"help": "teacher EMA momentum per step"})
    dino_crop_min: float = field(default=0.4, metadata={"help": "smallest crop area fraction of a view"})

    def __post_init__(self):
        checks = [(self.dino_out_dim >= 1, "pretext.dino_out_dim must be at least 1"),
                  (0 <= self.dino_ema < 1, "pretext.dino_ema must be in [0, 1)"),
                  (0 < self.dino_crop_min <= 1, "pretext.dino_crop_min must be in (0, 1]"),
                  (self.dino_student_temp > 0 and self.dino_teacher_temp > 0, "DINO temperatures must be positive")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")


def random_views(pixel_values: torch.Tensor, crop_min: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One augmented view per image: random resized crop (area fraction in [crop_min, 1], aspect
    3/4..4/3), horizontal flip, brightness / contrast jitter. (B, C, H, W) -> (B, C, H, W)."""
    b, device = pixel_values.shape[0], pixel_values.device

    def uniform(low, high):
        return low + (high - low) * torch.rand(b, generator=generator).to(device)

    area = uniform(crop_min, 1.0)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx, ty = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
    flip = torch.where(torch.rand(b, generator=generator).to(device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, list(pixel_values.shape), align_corners=False)
    views = F.grid_sample(pixel_values, grid.to(pixel_values.dtype), mode="bilinear", padding_mode="reflection",
                          align_corners=False)
    contrast, brightness = uniform(0.7, 1.3).view(b, 1, 1, 1), uniform(-0.3, 0.3).view(b, 1, 1, 1)
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    return (views - mean) * contrast + mean + brightness


def embed(encoder: Encoder, pixel_values: torch.Tensor) -> torch.Tensor:
    """Mean of the patch tokens, as the task heads see them: (B, C, H, W) -> (B, D)."""
    return encoder.patch_tokens(encoder(pixel_values)).mean(dim=1)


class ProjectionHead(nn.Module):
    """DINO head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes. (B, D) -> logits (B, K)."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(features), dim=-1))


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-view cross-entropy. student/teacher: one (B, K) logit tensor per view; center (1, K).

    The teacher's output is centred and sharpened (softmax at ``teacher_temp``); each student view
    predicts the teacher's output on the *other* views.
    """
    targets = [F.softmax((t - center) / teacher_temp, dim=-1) for t in teacher]
    total, pairs = 0.0, 0
    for i, t in enumerate(targets):
        for j, s in enumerate(student):
            if i != j:
                total = total + torch.sum(-t * F.log_softmax(s / student_temp, dim=-1), dim=-1).mean()
                pairs += 1
    return total / pairs


class Student(nn.Module):
    """Adapted encoder + projection head: (B, C, H, W) -> logits (B, K)."""

    def __init__(self, encoder: Encoder, head: ProjectionHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(embed(self.encoder, pixel_values))


class DINOPretext(nn.Module):
    """``forward(pixel_values (B, C, H, W)) -> loss``; updates the teacher and centre after each call
    in training mode (the EMA follows the optimiser step of the previous call)."""

    def __init__(self, encoder: Encoder, out_dim: int, student_temp: float, teacher_temp: float,
                 ema: float, crop_min: float, center_momentum: float = 0.9):
        super().__init__()
        self.student = Student(encoder, ProjectionHead(encoder.base_config.hidden_size, out_dim))
        self.student_temp, self.teacher_temp, self.ema = student_temp, teacher_temp, ema
        self.crop_min, self.center_momentum = crop_min, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher = {n: p.detach().clone() for n, p in self.student.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update_teacher(self) -> None:
        """teacher <- ema * teacher + (1 - ema) * student, over the trainable tensors only."""
        for name, param in self.student.named_parameters():
            if name in self.teacher:
                if self.teacher[name].device != param.device:  # after accelerate moved the student
                    self.teacher[name] = self.teacher[name].to(param.device)
                self.teacher[name].mul_(self.ema).add_(param.detach(), alpha=1 - self.ema)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the teacher's mean output; averaged over processes when data-parallel (as in DINO)."""
        batch_center = teacher_logits.mean(0, keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_center)
            batch_center /= torch.distributed.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def teacher_logits(self, views: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return functional_call(self.student, self.teacher, (views,), strict=False)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """State outside the parameters (checkpointed): the EMA teacher and the centre."""
        return {**{f"teacher.{k}": v for k, v in self.teacher.items()}, "center": self.center}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            if key == "center":
                self.center.copy_(value)
            else:
                self.teacher[key.removeprefix("teacher.")] = value.to(self.center.device).clone()

    def after_optimizer_step(self) -> None:
        """Called by the training loop once per optimiser step (not per micro-batch)."""
        self.update_teacher()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        views = [random_views(pixel_values, self.crop_min) for _ in range(2)]
        teacher = [self.teacher_logits(v) for v in views]
        student = [self.student(v) for v in views]
        loss = dino_loss(student, teacher, self.center, self.student_temp, self.teacher_temp)
        if self.training:
            self.update_center(torch.cat(teacher))
        return loss

    def card_entry(self) -> dict:
        return {"name": "dino", "views": "2 global: random resized crop (area >= "
                f"{self.crop_min}), flip, brightness/contrast", "student_temp": self.student_temp,
                "teacher_temp": self.teacher_temp, "ema": self.ema, "out_dim": self.center.shape[1],
                "projection_head": "fresh, trained alongside the target parameters, discarded"}


@register("dino", DINOOptions)
def build(encoder: Encoder, decoder, cfg: DINOOptions) -> DINOPretext:
    return DINOPretext(encoder, cfg.dino_out_dim, cfg.dino_student_temp, cfg.dino_teacher_temp, cfg.dino_ema,
                       cfg.dino_crop_min)
