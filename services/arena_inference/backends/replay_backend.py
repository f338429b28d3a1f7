"""Replay: answers recorded in files, served without a model (see `domain.replay` for formats).

Backend options: ``model`` — keep only the records of this model (or AlpacaEval generator) when
the files hold several. Sampling is ignored: a recording has one answer per prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from arena_core.errors import ArenaError, FailedPreconditionError
from arena_inference.domain.backend import BackendRequest, ModelBackend
from arena_inference.domain.replay import ReplayIndex
from arena_inference.domain.style import approximate_tokens
from arena_inference.domain.types import BackendKind, Choice, Completion, FinishReason, ModelSpec


class ReplayBackend(ModelBackend):
    kind = BackendKind.REPLAY

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self._index: ReplayIndex | None = None

    async def load(self) -> None:
        model = str(self.spec.backend_options.get("model", ""))
        self._index = await asyncio.to_thread(
            ReplayIndex.load, self.spec.replay_uris, self.spec.replay_format, model
        )

    async def unload(self) -> None:
        self._index = None

    @property
    def conversations(self) -> int:
        return len(self._index) if self._index else 0

    async def generate(self, requests: Sequence[BackendRequest]) -> list[Completion | Exception]:
        index = self._index
        if index is None:
            raise FailedPreconditionError(f"replay model {self.spec.name!r} is not loaded")
        results: list[Completion | Exception] = []
        for request in requests:
            try:
                recorded = index.answer(request.prompt.messages, self.spec.name)
            except ArenaError as error:
                results.append(error)
                continue
            tokens = approximate_tokens(recorded.text)
            choices = tuple(
                Choice(i, recorded.text, FinishReason.STOP, tokens)
                for i in range(request.sampling.n_or_default)
            )
            if request.on_delta is not None:
                for choice in choices:
                    request.on_delta(choice.index, choice.text)
            prompt_tokens = sum(
                approximate_tokens(message.content) for message in request.prompt.messages
            )
            results.append(Completion(choices, prompt_tokens, time_to_first_token=0.0))
        return results
