"""Settings of the judge service: the shared groups plus ``ARENA_JUDGE__*``."""

from __future__ import annotations

from pydantic import BaseModel

from arena_core.settings import ServiceSettings


class JudgeOptions(BaseModel):
    """Options only the judge service reads."""


class JudgeSettings(ServiceSettings):
    judge: JudgeOptions = JudgeOptions()
