"""Settings of the training service: the shared groups plus ``ARENA_TRAINING__*``."""

from __future__ import annotations

from pydantic import BaseModel

from arena_core.settings import ServiceSettings


class TrainingOptions(BaseModel):
    """Options only the training service reads."""


class TrainingSettings(ServiceSettings):
    training: TrainingOptions = TrainingOptions()
