"""Training's exceptions, under FaceLock's hierarchy so the CLI reports them the same way."""

from facelock_mqtt.errors import FaceLockError


class TrainingError(FaceLockError):
    """A training step could not produce its artifact; the message says why."""


class DatasetError(TrainingError):
    """The dataset manifest is missing, empty or lacks what a step needs (e.g. a split)."""


class OverfitFailed(TrainingError):
    """The model could not memorise a handful of images: a bug in data, labels, model or loss."""


class GateRefused(TrainingError):
    """The acceptance gate refused the model; no bundle is written."""


class ParityError(TrainingError):
    """The exported ONNX model does not reproduce the PyTorch model's embeddings."""
