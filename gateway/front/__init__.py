"""Front doors: the ways callers reach the synthesis core. Each reads and checks a request in
its own protocol, calls :class:`gateway.synthesis.SynthesisCore`, and writes the audio in its
own wire format; the routes beside them (health, readiness, the voice table, metrics) are in
``ops``."""
