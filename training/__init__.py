"""FaceLock's training cycle: `python -m training <step> --config <file>` (see docs/TRAINING.md).

ingest -> split -> overfit -> train (DDP via torchrun) | distill | sweep -> evaluate ->
calibrate (acceptance gate) -> export (ONNX + parity + bundle in facelock_mqtt's format).

Modules are imported by the step that needs them; importing this package loads nothing heavy.
Public entry points: training.__main__.main, and per step ingest.ingest, split.split,
overfit.run_overfit, train.train, distill.distill, sweep.sweep, evaluate.evaluate,
gate.calibrate, export.export_bundle.
"""
