"""Models: bundles (manifest, SHA-256 checked files, calibration), insightface packs, the default
YuNet + SFace bundle, one-time model preparation, verification metrics, the PyTorch checkpoint
reader (`checkpoint`) and MiniFASNet ONNX builder (`minifasnet`) behind `facelock liveness
install`, and the calibration data shipped with the package (`*_calibration.json`).

May import: `settings`, `errors` only. Everything that runs a model imports from here.
"""
