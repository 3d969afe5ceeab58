"""Tools that are not the runtime: `facelock bench` and its sections, the impostor flood, the
MQTT fuzzer, accuracy evaluation (`facelock eval`) and add-on schema generation.

May import anything in the package; nothing in the runtime imports from here, except the CLI,
which offers these tools as commands.
"""
