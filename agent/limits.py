"""The limits of one episode, each stated once.

Every model that carries one of these limits (the process settings, the solver's settings, one
episode's config, the sampling record of a trajectory) declares its field with the type here and
the default here (``max_turns: MaxTurns = MAX_TURNS``), so the default, the bounds and the help
text cannot drift apart between them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_TURNS = 6
MAX_NEW_TOKENS = 384
MAX_TOTAL_TOKENS = 2048  # also the trainer's sequence cap: a training sequence is one whole episode
SANDBOX_TIMEOUT_S = 10.0
OBSERVATION_MAX_CHARS = 1200
SAMPLE_TEMPERATURE = 0.8

MaxTurns = Annotated[int, Field(ge=0, le=64, description="tool calls per episode")]
MaxNewTokens = Annotated[int, Field(ge=1, description="tokens per model turn")]
MaxTotalTokens = Annotated[int, Field(ge=16, description="whole episode: prompt + model + observations")]
SandboxTimeout = Annotated[float, Field(gt=0, description="wall-clock seconds of one code cell")]
ObservationMaxChars = Annotated[int, Field(ge=64, description="longer sandbox output is cut, and the model is told")]
SampleTemperature = Annotated[
    float, Field(ge=0.0, description="sampling temperature when several samples are asked for and none is given")
]
