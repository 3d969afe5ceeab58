"""The per-frame pipeline: one module per stage, in the order a frame meets them.

source (frames from a camera, a file or MQTT snapshots) → gate (cheap motion gate) → detect
(YuNet/SCRFD boxes and landmarks) → align (ArcFace five-point crop) → quality (is the face
usable) → embed (the served embedder) → match (cosine against the gallery) → decide (k of n
frames within an attempt); `engine` chains detect … embed for one image, `imageio` decodes.

May import: `models`, `storage`, `settings`, `errors`. Never the guards, Home Assistant, the
service or the CLI: a stage knows nothing of who consumes its result.
"""
