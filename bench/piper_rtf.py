"""Real-time factor of the local Piper voice on one core: synthesis time over audio duration,
one ONNX Runtime thread, the process pinned to a single CPU. Prints one JSON object."""

from __future__ import annotations

import asyncio
import json
import os
import time

from providers.base import ProviderConfig, SynthesisJob
from providers.piper import PiperProvider

TEXT = (
    "Thanks for calling the clinic, how can I help you today? Our office opens at nine in the "
    "morning and closes at five. Is there anything else I can help you with? "
) * 2


async def measure(repeats: int = 3) -> dict[str, float]:
    provider = PiperProvider(
        ProviderConfig(name="local", type="piper", settings={"threads": 1}, max_concurrency=1)
    )
    await provider.start()
    runs = []
    try:
        for _ in range(repeats):
            cpu, wall, samples = time.process_time(), time.perf_counter(), 0
            job = SynthesisJob(text=TEXT, voice="joe", sample_rate=provider.sample_rate)
            async for piece in provider.stream(job):
                samples += len(piece) // 4
            audio = samples / provider.sample_rate
            runs.append((time.perf_counter() - wall, time.process_time() - cpu, audio))
    finally:
        await provider.aclose()
    wall, cpu, audio = sorted(runs)[len(runs) // 2]
    return {"audio_s": audio, "wall_s": wall, "rtf": wall / audio, "cpu_rtf": cpu / audio}


def main() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(json.dumps(asyncio.run(measure())))


if __name__ == "__main__":
    main()
