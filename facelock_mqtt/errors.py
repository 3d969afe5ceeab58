"""FaceLock's exceptions: one small hierarchy, each message something a user can act on."""


class FaceLockError(Exception):
    """Base of every error FaceLock raises on purpose."""


class ConfigError(FaceLockError):
    """A setting is missing or invalid; the message names the setting."""


class BundleError(FaceLockError):
    """A model bundle is missing, incomplete, or fails its SHA-256 check."""


class BrokerUnavailable(FaceLockError):
    """The MQTT broker could not be reached; the message names its address and why."""


class ImageError(FaceLockError):
    """An image could not be read or decoded."""


class EnrollmentError(FaceLockError):
    """An enrollment was refused; nothing was written."""


class GalleryError(FaceLockError):
    """The gallery database is unreadable, inconsistent or tampered with."""
