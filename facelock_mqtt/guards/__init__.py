"""The guards: everything that can stop an unlock the pipeline would otherwise allow.

liveness (MiniFASNet presentation-attack detection) and its motion cue (`liveness_motion`),
stream sanity (`streamcheck`: frozen or looping streams), `lockout` after repeated failures,
the hash-chained `audit` trail, and gallery `integrity` (the gallery must match what the audit
trail vouches for). Each guard fails secure: an error in it means the door stays locked.

May import: `pipeline` (geometry, images), `models`, `storage`, `settings`, `errors`. Never Home
Assistant, the service or the CLI.
"""
