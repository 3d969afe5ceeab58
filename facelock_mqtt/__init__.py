"""FaceLock: a face-recognition door lock for Home Assistant over MQTT.

The public API; every other module is an implementation detail of one pipeline stage.
"""

from .bundle import Bundle, Manifest, load_bundle
from .default_bundle import default_bundle
from .errors import (
    BundleError,
    ConfigError,
    EnrollmentError,
    FaceLockError,
    GalleryError,
    ImageError,
)
from .match import MatchResult
from .pipeline import FaceEngine, FaceResult
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
