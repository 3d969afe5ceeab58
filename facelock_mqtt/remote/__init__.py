"""Remote verification over the MQTT broker (issue 15, docs/REMOTE.md).

A door in `verify.mode: remote` (or `auto`) runs source -> gate -> detect -> align -> quality
itself and sends an attempt's aligned crops and liveness patches in one signed MQTT 5 request
to the shared subscription `$share/<group>/<base>/verify`; any `facelock worker` of the group
(any number, on any machine; the broker balances them) embeds the crops, scores them against
the gallery the service publishes (retained, signed, versioned by its digest) and answers with
per-person scores and liveness CNN scores. The door keeps the decision, the liveness fusion and
the audit. Anything amiss -- no answer by the deadline, a bad signature, a stale or replayed
message, another gallery or bundle version -- is a `RemoteFailure`, which the door turns into
`denied`.

Modules: `protocol` (message schema, canonical JSON, HMAC, replay guard), `link` (one MQTT 5
connection), `client` (the door's side), `edge` (what the door sends and how it reads the
answer), `worker` (`facelock worker`).

May import: homeassistant (TLS and credential set-up of a connection), pipeline, guards, models,
storage, settings, errors.
"""

from .client import RemoteVerifier
from .edge import EdgeVerifier, RemoteLiveness
from .protocol import RemoteFailure

__all__ = ["EdgeVerifier", "RemoteFailure", "RemoteLiveness", "RemoteVerifier"]
