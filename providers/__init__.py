"""Provider plugins: one module per TTS engine or API, on the interface of ``providers.base``.

Beside them, what they share: ``_http`` (the base of the HTTP providers), ``_errors`` (what an
upstream's failure says), ``_streams`` (bounded readers of an answer's body), ``_pool`` (the
transport under their clients), ``wav`` (RIFF/WAVE headers; the gateway's converter reads them
with it too), ``sentences`` (cutting text, for the HTTP providers and Piper) and ``emotions``
(emotions put into words for the providers that take an instruction)."""
