"""TTS gateway: the custom TTS interface in front of local and cloud voices."""
