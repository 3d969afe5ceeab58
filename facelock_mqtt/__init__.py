"""FaceLock: a face-recognition door lock for Home Assistant over MQTT.

The public API; every other module is an implementation detail of one pipeline stage.
"""

from .errors import (
    BundleError,
    ConfigError,
    EnrollmentError,
    FaceLockError,
    GalleryError,
    ImageError,
)
from .models.bundle import Bundle, Manifest, load_bundle
from .models.default_bundle import default_bundle
from .pipeline.engine import FaceEngine, FaceResult
from .pipeline.match import MatchResult
from .recognizer import Identification, Recognizer
from .settings import Settings, load_settings

__all__ = [
    "Bundle",
    "BundleError",
    "ConfigError",
    "EnrollmentError",
    "FaceEngine",
    "FaceLockError",
    "FaceResult",
    "GalleryError",
    "Identification",
    "ImageError",
    "Manifest",
    "MatchResult",
    "Recognizer",
    "Settings",
    "default_bundle",
    "load_bundle",
    "load_settings",
]
