"""MobileFaceNet-style backbone and ArcFace margin head, plus checkpoint loading.

The backbone takes NCHW float RGB scaled (x - 127.5) / 128 (see `to_tensor`) and returns an
un-normalised embedding; the served ONNX graph L2-normalises it (see export.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadConfig, ModelConfig
from .errors import TrainingError

MEAN, STD = 127.5, 128.0


def to_tensor(crops_bgr: np.ndarray) -> torch.Tensor:
    """(N, 112, 112, 3) uint8 BGR crops -> (N, 3, 112, 112) float RGB, normalised."""
    rgb = np.ascontiguousarray(crops_bgr[..., ::-1].transpose(0, 3, 1, 2))
    return (torch.from_numpy(rgb).float() - MEAN) / STD


def _channels(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


class ConvBn(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, s: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2 if k > 1 else 0, groups=groups, bias=False)]
        layers.append(nn.BatchNorm2d(cout))
        if act:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, linear 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvBn(cin, mid, 1),
            ConvBn(mid, mid, 3, stride, groups=mid),
            ConvBn(mid, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


# (expansion, channels, stride) per stage; repeats come from ModelConfig.blocks.
_STAGES = ((2, 64, 2), (4, 128, 2), (2, 128, 1), (4, 128, 2), (2, 128, 1))


class MobileFaceNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c64 = _channels(64, cfg.width)
        layers: list[nn.Module] = [ConvBn(3, c64, 3, 2), ConvBn(c64, c64, 3, groups=c64)]
        cin = c64
        for (expansion, c, stride), repeats in zip(_STAGES, cfg.blocks, strict=True):
            cout = _channels(c, cfg.width)
            for i in range(repeats):
                layers.append(Bottleneck(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        c512 = _channels(512, cfg.width)
        layers.append(ConvBn(cin, c512, 1))
        self.features = nn.Sequential(*layers)
        # Global depthwise conv: a learned, position-aware pooling of the final 7x7 map.
        self.gdc = ConvBn(c512, c512, 7, groups=c512, act=False)
        self.gdc[0].padding = (0, 0)
        self.project = nn.Sequential(nn.Conv2d(c512, cfg.embedding_size, 1, bias=False), nn.BatchNorm2d(cfg.embedding_size))
        self.embedding_size = cfg.embedding_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.gdc(self.features(x))).flatten(1)


class ArcFaceHead(nn.Module):
    """Margin softmax over class centres. ArcFace: the true class's logit is s*cos(theta + m);
    CosFace (`cfg.kind`): s*(cos(theta) - m); the others s*cos(theta)."""

    def __init__(self, embedding_size: int, classes: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.s, self.m, self.kind = cfg.s, cfg.m, cfg.kind
        # Beyond theta = pi - m, cos(theta + m) stops decreasing; fall back to a linear penalty.
        self.threshold = math.cos(math.pi - cfg.m)
        self.fallback = math.sin(math.pi - cfg.m) * cfg.m

    @torch.no_grad()
    def init_from_means(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Each class centre starts at its images' mean embedding: a pretrained backbone's
        classes are already separated, so the first steps do not tear its features apart."""
        sums = torch.zeros_like(self.weight).index_add_(0, labels, F.normalize(embeddings.float()))
        if torch.any(sums.norm(dim=1) == 0):
            raise TrainingError("head init from class means: a class has no image")
        self.weight.copy_(F.normalize(sums))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float())).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None])
        if self.kind == "cosface":
            with_margin = target - self.m
        else:
            sin = torch.sqrt(1.0 - target * target)
            with_margin = target * math.cos(self.m) - sin * math.sin(self.m)
            with_margin = torch.where(target > self.threshold, with_margin, target - self.fallback)
        logits = cos.scatter(1, labels[:, None], with_margin)
        return F.cross_entropy(self.s * logits, labels)


class ArcFaceTrainee(nn.Module):
    """Backbone + margin head; forward(images, labels) returns the loss (what Loop fits)."""

    def __init__(self, backbone: nn.Module, head: ArcFaceHead, freeze_bn: bool = False, anchor: float = 0.0) -> None:
        super().__init__()
        self.backbone, self.head, self.freeze_bn, self.anchor = backbone, head, freeze_bn, anchor

    def train(self, mode: bool = True) -> ArcFaceTrainee:
        super().train(mode)
        if mode and self.freeze_bn:  # imported statistics kept: eval-mode BatchNorm while fitting
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`targets`: class labels, or with an anchor rows of [label, teacher embedding...]."""
        if not self.anchor:
            return self.head(self.backbone(images), targets)
        embeddings = self.backbone(images)
        teacher = targets[:, 1:].float()
        drift = 1.0 - F.cosine_similarity(embeddings.float(), teacher, dim=1).mean()
        return self.head(embeddings, targets[:, 0].long()) + self.anchor * drift


def default_sface() -> Path:
    """The default bundle's fp32 SFace graph (built on first use); the int8 graph it may serve
    beside it is for inference, not for fine-tuning."""
    from facelock_mqtt.models import default_bundle as default
    from facelock_mqtt.settings import Settings

    bundle = default.default_bundle(Settings.model_fields["data_dir"].default)
    fp32 = getattr(default, "FP32_FILE", None)
    return bundle.file(fp32 if fp32 in bundle.manifest.files else "embedder")


def _architecture(cfg: ModelConfig, spec: list[dict] | None = None) -> nn.Module:
    if cfg.arch == "mobilefacenet":
        return MobileFaceNet(cfg)
    from .import_sface import SFaceNet, import_sface

    return SFaceNet(spec) if spec is not None else import_sface(cfg.pretrained or default_sface())


def build(cfg: ModelConfig) -> nn.Module:
    """A fresh backbone (or the imported SFace), or one started from `cfg.init_from`'s backbone weights."""
    model = _architecture(cfg)
    if cfg.arch == "sface" and cfg.freeze_convs:
        model.freeze_first(cfg.freeze_convs)
    if cfg.init_from is not None:
        state = load_checkpoint(cfg.init_from)["backbone"]
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise TrainingError(f"model.init_from {cfg.init_from}: weights do not fit this model config: {exc}") from exc
    return model


def load_checkpoint(path: Path) -> dict:
    if not Path(path).is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise TrainingError(f"checkpoint {path} is unreadable: {exc}") from exc


def backbone_from_checkpoint(path: Path) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the backbone a checkpoint was trained with, in eval mode."""
    ckpt = load_checkpoint(path)
    cfg = ModelConfig.model_validate(ckpt["model_config"]).model_copy(update={"init_from": None})
    model = _architecture(cfg, ckpt.get("spec"))
    model.load_state_dict(ckpt["backbone"])
    return model.eval(), cfg


@torch.no_grad()
def embed(model: nn.Module, crops_bgr: np.ndarray, batch: int = 128) -> np.ndarray:
    """L2-normalised embeddings of aligned crops, in eval mode (the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [
        F.normalize(model(to_tensor(crops_bgr[i : i + batch]).to(device)).float()).cpu().numpy()
        for i in range(0, len(crops_bgr), batch)
    ]
    model.train(was_training)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1), np.float32)
