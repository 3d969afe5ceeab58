"""The owner's panel: an aiohttp web app (Doors, People, Events, Model & health) and its JSON API.

Served by the service in a thread of its own: inside the add-on through Home Assistant ingress
(only the Supervisor's proxy is admitted, the HA user is the actor of every change), outside it on
127.0.0.1 behind a random bearer token kept in `<data_dir>/web-token`. Plain HTML, CSS and
JavaScript from `static/`, no build step, nothing fetched from the internet. API: docs/API.md.

May import: the service-level objects handed to it (recognizer, guards, storage, models,
settings, errors, the door locks and doors); nothing imports web except service.py.
"""

from .context import PanelContext
from .metrics import MetricsHistory
from .server import PanelServer

__all__ = ["MetricsHistory", "PanelContext", "PanelServer"]
