"""Fine-tuning pieces: the CosFace margin, class centres started at the class means, the anchor
to the starting model's clean embedding, and frozen BatchNorm statistics while fitting."""

from __future__ import annotations

import numpy as np

# First: skips this module cleanly (or fails in CI) when torch is missing, like test_training.
from test_training import dataset, torch  # noqa: F401 (fixtures)

from training.config import HeadConfig, ModelConfig
from training.dataset import labels_of, load_crops, load_manifest, select
from training.model import ArcFaceHead, ArcFaceTrainee, MobileFaceNet, embed, to_tensor

TINY = ModelConfig(width=0.25, blocks=(1, 1, 1, 1, 1), embedding_size=32)


def _batch(dataset, n: int = 24):
    _, folder = dataset
    records = select(load_manifest(folder), "train")[:n]
    labels, names = labels_of(records)
    return load_crops(folder, records), torch.from_numpy(labels), len(names)


def test_cosface_subtracts_the_margin_from_the_true_cosine() -> None:
    head = ArcFaceHead(4, 2, HeadConfig(kind="cosface", s=10.0, m=0.3))
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, 4))
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # cos 1 to class 0, 0 to class 1
    expected = torch.nn.functional.cross_entropy(torch.tensor([[10 * (1 - 0.3), 0.0]]), torch.tensor([0]))
    assert torch.isclose(head(x, torch.tensor([0])), expected)


def test_class_mean_centres_start_with_a_lower_loss_than_random_ones(dataset) -> None:
    torch.manual_seed(0)
    crops, labels, classes = _batch(dataset)
    backbone = MobileFaceNet(TINY).eval()
    embeddings = torch.from_numpy(embed(backbone, crops))
    cfg = HeadConfig(kind="cosface", s=32.0, m=0.2)
    random_head, mean_head = ArcFaceHead(32, classes, cfg), ArcFaceHead(32, classes, cfg)
    mean_head.init_from_means(embeddings, labels)
    assert torch.allclose(mean_head.weight.norm(dim=1), torch.ones(classes))
    assert float(mean_head(embeddings, labels)) < float(random_head(embeddings, labels))


def test_anchor_adds_the_drift_from_the_teacher_embedding(dataset) -> None:
    crops, labels, classes = _batch(dataset, 8)
    backbone = MobileFaceNet(TINY).eval()
    head = ArcFaceHead(32, classes, HeadConfig())
    images = to_tensor(crops)
    with torch.no_grad():
        own = backbone(images)
        plain = ArcFaceTrainee(backbone, head)(images, labels)
        same = ArcFaceTrainee(backbone, head, anchor=5.0)(images, torch.hstack([labels[:, None].float(), own]))
        opposite = ArcFaceTrainee(backbone, head, anchor=5.0)(images, torch.hstack([labels[:, None].float(), -own]))
    assert torch.isclose(same, plain, atol=1e-5)  # at the teacher: no drift
    assert torch.isclose(opposite, plain + 5.0 * 2.0, atol=1e-4)  # 1 - cos = 2 for the opposite direction


def test_frozen_batchnorm_keeps_its_statistics_while_the_rest_trains(dataset) -> None:
    crops, labels, classes = _batch(dataset, 8)
    trainee = ArcFaceTrainee(MobileFaceNet(TINY), ArcFaceHead(32, classes, HeadConfig()), freeze_bn=True)
    before = [m.running_mean.clone() for m in trainee.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    trainee.train()
    assert trainee.training and trainee.head.training
    trainee(to_tensor(crops), labels).backward()
    after = [m.running_mean for m in trainee.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert np.any([p.grad is not None for p in trainee.backbone.parameters()])
