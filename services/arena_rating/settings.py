"""Settings of the rating service: the shared groups plus ``ARENA_RATING__*``."""

from __future__ import annotations

from pydantic import BaseModel

from arena_core.settings import ServiceSettings


class RatingOptions(BaseModel):
    """Options only the rating service reads."""


class RatingSettings(ServiceSettings):
    rating: RatingOptions = RatingOptions()
