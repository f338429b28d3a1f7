"""Settings of the flywheel service: the shared groups plus ``ARENA_FLYWHEEL__*``."""

from __future__ import annotations

from pydantic import BaseModel

from arena_core.settings import ServiceSettings


class FlywheelOptions(BaseModel):
    """Options only the flywheel service reads."""


class FlywheelSettings(ServiceSettings):
    flywheel: FlywheelOptions = FlywheelOptions()
