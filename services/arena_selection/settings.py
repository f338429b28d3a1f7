"""Settings of the selection service: the shared groups plus ``ARENA_SELECTION__*``."""

from __future__ import annotations

from pydantic import BaseModel

from arena_core.settings import ServiceSettings


class SelectionOptions(BaseModel):
    """Options only the selection service reads."""


class SelectionSettings(ServiceSettings):
    selection: SelectionOptions = SelectionOptions()
