"""Provider plugins: one module per TTS engine or API, on the interface of ``providers.base``."""
