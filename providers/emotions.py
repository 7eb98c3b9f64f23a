"""The interface's emotions put into words, for the providers that take a spoken instruction
rather than an emotion name: OpenAI's ``instructions``, the ``instructions`` of Qwen's instruct
models and the ``prompt`` of Gemini-TTS voices. One wording for all, so that a voice sounds
the same asked through any of them; a voice's ``emotions:`` block in the routing file
overrides it."""

from __future__ import annotations

from typing import Final

#: Emotion → the instruction that asks for it (``neutral`` asks for nothing).
EMOTION_INSTRUCTIONS: Final[dict[str, str]] = {
    "happy": "Speak in a cheerful, happy tone.",
    "sad": "Speak in a sad tone.",
}
