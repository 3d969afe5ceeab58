"""FaceLock's training cycle: `python -m training <step> --config <file>` (see docs/TRAINING.md).

ingest -> split (identity dedupe across sources first) -> overfit -> train (DDP via torchrun;
from scratch, or fine-tuning the served SFace imported by import_sface) | distill | sweep ->
evaluate -> compare (acceptance gate against the default) -> calibrate (acceptance gate) ->
export (ONNX + parity + bundle in facelock_mqtt's format).

Modules are imported by the step that needs them; importing this package loads nothing heavy.
Public entry points: training.__main__.main, and per step ingest.ingest, split.split,
overfit.run_overfit, train.train, distill.distill, sweep.sweep, evaluate.evaluate,
gate.calibrate, export.export_bundle, import_sface.import_sface, dedupe.dedupe, augment.Augmenter,
compare.compare.
"""
