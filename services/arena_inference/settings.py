"""Settings of the inference service: the shared groups plus ``ARENA_INFERENCE__*``."""

from __future__ import annotations

from pydantic import BaseModel

from arena_core.settings import ServiceSettings


class InferenceOptions(BaseModel):
    """Options only the inference service reads."""


class InferenceSettings(ServiceSettings):
    inference: InferenceOptions = InferenceOptions()
