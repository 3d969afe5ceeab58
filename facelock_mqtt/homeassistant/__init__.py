"""Home Assistant over MQTT: the connection, the topic grammar, discovery, the lock entity, the
bridge that publishes a door's decisions and sensors, and the embedded broker used when none is
configured.

May import: `settings`, `errors`. Nothing of the pipeline, the guards or the models: the bridge
is handed plain values and callbacks by the door and the service.
"""
