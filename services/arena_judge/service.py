"""The judge service's use cases over the contract types: judge tasks with the cache in front,
pairs and batches with position swap, grades, rewards, templates and quality reports.

Every entry point funnels into `judge_tasks`, which fetches the answers once, serves cached
judgments, collapses identical in-flight work, and bounds how many judgments run at once. A task
never raises: a failure comes back as a `JudgmentError` whose `failure.retryable` says whether
trying again can help (inference unreachable) or not (bad spec, missing answer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as inference_pb2
from arena.judge.v1 import judge_service_pb2 as pb
from arena_core.errors import (
    ArenaError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from arena_judge import metrics
from arena_judge.clients import GenerationFailedError, InferenceClient
from arena_judge.convert import (
    definition_of,
    fill_outcome,
    game_of,
    judgment_id,
    messages_of,
    outcome_of,
    style_proto,
)
from arena_judge.domain.aggregation import combine_orders
from arena_judge.domain.engine import JudgeDefinition, JudgeEngine, PairInput
from arena_judge.domain.gold import GoldItem, load_gold
from arena_judge.domain.quality import gold_agreement, length_bias, position_consistency
from arena_judge.domain.style import style_of
from arena_judge.domain.templates import TemplateFormat
from arena_judge.domain.verdicts import (
    Order,
    Outcome,
    PositionAggregation,
    Protocol,
    Side,
)
from arena_judge.store import JudgmentCache, SpecRegistry

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
_MEMORY_LIMIT = 100_000
_UNSEEN: Any = object()
_GOLD_SET_NAMES = {pb.GOLD_SET_PANDALM: "pandalm", pb.GOLD_SET_LLMBAR: "llmbar"}


class AnswerMissingError(NotFoundError):
    """A generation id the inference service's answer cache does not hold."""


class AnswerSource:
    """Answers by generation id; the inference client in production."""

    async def get_generations(
        self, generation_ids: Sequence[str]
    ) -> tuple[dict[str, inference_pb2.Generation], list[str]]:
        raise NotImplementedError


@dataclass
class _Prepared:
    task: pb.JudgmentTask
    definition: JudgeDefinition
    order: Order
    pair: PairInput
    key: str
    generation_a: inference_pb2.Generation | None
    generation_b: inference_pb2.Generation | None


@dataclass
class _Batch:
    """What the tasks of one `judge_tasks` call share: their answers, fetched once."""

    found: dict[str, inference_pb2.Generation]
    missing: set[str]
    unavailable: str | None = None
    # The judge specs of this batch, by their serialization, once converted and validated, and
    # once registered: the tasks of a batch usually share one spec, so each is done once.
    definitions: dict[bytes, JudgeDefinition] = field(default_factory=dict)
    registered: set[bytes] = field(default_factory=set)


def _reason(error: BaseException) -> str:
    if isinstance(error, AnswerMissingError):
        return "ANSWER_NOT_FOUND"
    if isinstance(error, InvalidArgumentError):
        return "INVALID_ARGUMENT"
    if isinstance(error, NotFoundError):
        return "NOT_FOUND"
    if isinstance(error, FailedPreconditionError):
        return "FAILED_PRECONDITION"
    if isinstance(error, UnavailableError):
        return "INFERENCE_UNAVAILABLE"
    return "INTERNAL"


def raise_for(error: pb.JudgmentError) -> None:
    """A judgment error as the domain error an RPC answers with."""
    message = error.failure.message
    reason = error.failure.reason
    if reason == "INVALID_ARGUMENT":
        raise InvalidArgumentError(message)
    if reason in ("NOT_FOUND", "ANSWER_NOT_FOUND"):
        raise NotFoundError(message)
    if reason in ("FAILED_PRECONDITION", "GENERATION_FAILED"):
        raise FailedPreconditionError(message)
    if reason == "INTERNAL":
        raise RuntimeError(message)  # answered as INTERNAL, logged once by the interceptor
    raise UnavailableError(message)


def score_range(definition: JudgeDefinition) -> tuple[float, float]:
    protocols = (
        {m.protocol for m in definition.members}
        if definition.protocol is Protocol.ENSEMBLE
        else {definition.protocol}
    )
    return (0.0, 10.0) if protocols == {Protocol.DIFFICULTY} else (1.0, 10.0)


class JudgeApplication:
    def __init__(
        self,
        engine: JudgeEngine,
        answers: AnswerSource | InferenceClient,
        cache: JudgmentCache,
        specs: SpecRegistry,
        *,
        default_retries: int = 2,
        max_concurrency: int = 64,
    ) -> None:
        self._engine = engine
        self._answers = answers
        self._cache = cache
        self._specs = specs
        self._default_retries = default_retries
        self._max_concurrency = max_concurrency
        self._inflight: dict[str, asyncio.Future[pb.Judgment]] = {}
        # Bounded memories for counting position inconsistency once per pair.
        self._recent_sides: OrderedDict[str, Side | None] = OrderedDict()
        self._counted_pairs: OrderedDict[tuple[str, str], None] = OrderedDict()

    # --- tasks ----------------------------------------------------------------------------------

    async def judge_tasks(
        self, tasks: Sequence[pb.JudgmentTask], max_concurrency: int | None = None
    ) -> list[pb.Judgment | pb.JudgmentError]:
        batch = await self._fetch_answers(tasks)
        slots = asyncio.Semaphore(max_concurrency or self._max_concurrency)

        async def one(task: pb.JudgmentTask) -> pb.Judgment | pb.JudgmentError:
            async with slots:
                return await self._judge_one(task, batch)

        return list(await asyncio.gather(*(one(task) for task in tasks)))

    async def judge_task(self, task: pb.JudgmentTask) -> pb.Judgment | pb.JudgmentError:
        return (await self.judge_tasks([task]))[0]

    async def _fetch_answers(self, tasks: Sequence[pb.JudgmentTask]) -> _Batch:
        ids = [
            candidate.generation_id
            for task in tasks
            for candidate in (task.item.a, task.item.b)
            if candidate.WhichOneof("answer") == "generation_id"
        ]
        if not ids:
            return _Batch({}, set())
        try:
            found, missing = await self._answers.get_generations(ids)
        except UnavailableError as error:
            return _Batch({}, set(), unavailable=str(error))
        except ArenaError as error:
            return _Batch({}, set(), unavailable=f"answers could not be fetched: {error}")
        return _Batch(found, set(missing))

    async def _judge_one(
        self, task: pb.JudgmentTask, batch: _Batch
    ) -> pb.Judgment | pb.JudgmentError:
        try:
            prepared = await self._prepare(task, batch)
        except ArenaError as error:
            return self._error(
                task, _reason(error), str(error), isinstance(error, UnavailableError)
            )
        label = prepared.definition.label
        policy = task.cache_policy
        use_cache = policy in (common_pb2.CACHE_POLICY_UNSPECIFIED, common_pb2.CACHE_POLICY_USE)
        if use_cache:
            metrics.CACHE_LOOKUPS.inc()
            cached = await self._cache.get(prepared.key)
            if cached is not None:
                metrics.CACHE_HITS.inc()
                metrics.JUDGMENTS.labels(label, "cached").inc()
                return self._for_request(cached, prepared, cached=True)
            running = self._inflight.get(prepared.key)
            if running is not None:
                try:
                    shared = await asyncio.shield(running)
                except Exception as error:  # noqa: BLE001 - a task reports, never raises
                    return self._failed(task, error)
                metrics.JUDGMENTS.labels(label, "cached").inc()
                return self._for_request(shared, prepared, cached=True)
        future: asyncio.Future[pb.Judgment] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if policy != common_pb2.CACHE_POLICY_BYPASS:
            self._inflight[prepared.key] = future
        try:
            judgment = await self._compute(prepared)
        except Exception as error:  # noqa: BLE001 - a task reports, never raises
            future.set_exception(error)
            metrics.JUDGMENTS.labels(label, "error").inc()
            return self._failed(task, error)
        finally:
            if self._inflight.get(prepared.key) is future:
                del self._inflight[prepared.key]
        future.set_result(judgment)
        return self._for_request(judgment, prepared, cached=False)

    async def _compute(self, prepared: _Prepared) -> pb.Judgment:
        label = prepared.definition.label
        started = time.perf_counter()
        outcome = await self._engine.judge(prepared.definition, prepared.pair, prepared.order)
        seconds = time.perf_counter() - started
        # Stored with the first requester's routing fields, which the quality report groups by.
        judgment = self._for_request(
            self._build(prepared, outcome, seconds), prepared, cached=False
        )
        if prepared.task.cache_policy != common_pb2.CACHE_POLICY_BYPASS:
            await self._cache.put(judgment)
        metrics.JUDGMENT_SECONDS.labels(label).observe(seconds)
        retries = max(outcome.attempts - 1, 0)
        if retries:
            metrics.PARSE_RETRIES.labels(label).inc(retries)
        if outcome.parsed:
            metrics.JUDGMENTS.labels(label, "ok").inc()
            await self._note_position(prepared, outcome)
        else:
            metrics.JUDGMENTS.labels(label, "parse_failed").inc()
            metrics.PARSE_FAILURES.labels(label).inc()
        return judgment

    async def _note_position(self, prepared: _Prepared, outcome: Outcome) -> None:
        """Counts position inconsistency once both orders of a pair exist: the second order to
        finish finds the first, in this replica's memory or else in the cache."""
        if not prepared.definition.pairwise or prepared.pair.answer_b is None:
            return
        other_order = Order.BA if prepared.order is Order.AB else Order.AB
        task, pair = prepared.task, prepared.pair
        other_key = judgment_id(
            task.judge, task.item.prompt, pair.answer_a, pair.answer_b, pair.reference, other_order
        )
        side = outcome.verdict.side
        self._remember(self._recent_sides, prepared.key, side)
        other_side = self._recent_sides.get(other_key, _UNSEEN)
        if other_side is _UNSEEN and other_key in self._inflight:
            # The other order is being judged here and has not got this far: it finds this
            # order in memory when it does, and counts the pair then. No cache lookup needed.
            return
        if other_side is None or other_side is _UNSEEN:
            other = await self._cache.get(other_key)
            if other is None or other.parse_status != pb.PARSE_STATUS_OK:
                return
            other_side = outcome_of(other).verdict.side
        pair_key = (min(prepared.key, other_key), max(prepared.key, other_key))
        if pair_key in self._counted_pairs:
            return
        self._remember(self._counted_pairs, pair_key, None)
        label = prepared.definition.label
        metrics.POSITION_PAIRS.labels(label).inc()
        if other_side != side:
            metrics.POSITION_INCONSISTENT.labels(label).inc()

    @staticmethod
    def _remember(memory: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        memory[key] = value
        if len(memory) > _MEMORY_LIMIT:
            memory.popitem(last=False)

    async def _prepare(self, task: pb.JudgmentTask, batch: _Batch) -> _Prepared:
        encoded = task.judge.SerializeToString(deterministic=True)
        definition = batch.definitions.get(encoded)
        if definition is None:
            definition = definition_of(task.judge, self._default_retries)
            definition.validate()
            batch.definitions[encoded] = definition
        item = task.item
        if definition.pairwise and task.order not in (
            pb.JUDGE_ORDER_UNSPECIFIED,
            pb.JUDGE_ORDER_AB,
            pb.JUDGE_ORDER_BA,
        ):
            raise InvalidArgumentError(f"unknown order {task.order}", where="order")
        order = Order(task.order or Order.AB) if definition.pairwise else Order.AB
        needs_a = definition.protocol is not Protocol.DIFFICULTY
        text_a, generation_a = self._answer(item.a, batch, "item.a") if needs_a else ("", None)
        text_b: str | None = None
        generation_b = None
        if definition.pairwise and item.HasField("b"):
            text_b, generation_b = self._answer(item.b, batch, "item.b")
        reference = item.reference_answer if item.HasField("reference_answer") else None
        pair = PairInput(messages_of(item.prompt), text_a, text_b, reference)
        self._engine.check(definition, pair)
        if encoded not in batch.registered:
            await self._specs.register(task.judge)
            batch.registered.add(encoded)
        key = judgment_id(task.judge, item.prompt, text_a, text_b, reference, order)
        return _Prepared(task, definition, order, pair, key, generation_a, generation_b)

    def _answer(
        self, candidate: pb.Candidate, batch: _Batch, where: str
    ) -> tuple[str, inference_pb2.Generation | None]:
        kind = candidate.WhichOneof("answer")
        if kind == "text":
            return candidate.text, None
        if kind != "generation_id":
            raise InvalidArgumentError("give the answer as generation_id or text", where=where)
        if batch.unavailable is not None:
            raise UnavailableError(batch.unavailable)
        generation = batch.found.get(candidate.generation_id)
        if generation is None:
            raise AnswerMissingError(
                f"{where}: generation {candidate.generation_id} is not in the answer cache"
            )
        if not generation.choices:
            raise InvalidArgumentError(
                f"generation {candidate.generation_id} has no choices", where=where
            )
        return generation.choices[0].text, generation

    def _build(self, prepared: _Prepared, outcome: Outcome, seconds: float) -> pb.Judgment:
        task, pair = prepared.task, prepared.pair
        judgment = pb.Judgment(
            judgment_id=prepared.key,
            judge=task.judge,
            order=pb.JudgeOrder.ValueType(prepared.order),
        )
        fill_outcome(judgment, outcome)
        judgment.latency.FromNanoseconds(int(seconds * 1e9))
        judgment.judged_at.GetCurrentTime()
        if prepared.definition.protocol is not Protocol.DIFFICULTY:
            judgment.style_a.CopyFrom(self._style(pair.answer_a, prepared.generation_a))
        if pair.answer_b is not None:
            judgment.style_b.CopyFrom(self._style(pair.answer_b, prepared.generation_b))
        for spec, member in zip(task.judge.members, outcome.members, strict=False):
            part = judgment.members.add(judge=spec, order=judgment.order)
            part.judgment_id = judgment_id(
                spec, task.item.prompt, pair.answer_a, pair.answer_b, pair.reference, prepared.order
            )
            fill_outcome(part, member)
        return judgment

    @staticmethod
    def _style(text: str, generation: inference_pb2.Generation | None) -> common_pb2.StyleFeatures:
        if (
            generation is not None
            and generation.choices
            and generation.choices[0].HasField("style")
        ):
            return generation.choices[0].style
        return style_proto(style_of(text))

    @staticmethod
    def _for_request(stored: pb.Judgment, prepared: _Prepared, *, cached: bool) -> pb.Judgment:
        """A judgment with this request's routing fields; the verdict part is shared."""
        item = prepared.task.item
        judgment = pb.Judgment()
        judgment.CopyFrom(stored)
        judgment.battle_id = item.battle_id
        judgment.prompt_id = item.prompt_id
        judgment.round_id = item.round_id
        judgment.arena = item.arena
        judgment.category = item.category
        judgment.model_a = item.a.model
        judgment.model_b = item.b.model
        judgment.generation_id_a = item.a.generation_id
        judgment.generation_id_b = item.b.generation_id
        judgment.context.CopyFrom(prepared.task.context)
        judgment.cached = cached
        return judgment

    def _failed(self, task: pb.JudgmentTask, error: BaseException) -> pb.JudgmentError:
        if isinstance(error, GenerationFailedError):
            failure = error.failure
            return self._error(
                task, "GENERATION_FAILED", f"{failure.reason}: {failure.message}", failure.retryable
            )
        if isinstance(error, ArenaError):
            return self._error(
                task, _reason(error), str(error), isinstance(error, UnavailableError)
            )
        log.exception("judgment failed unexpectedly", exc_info=error)
        return self._error(task, "INTERNAL", repr(error), True)

    @staticmethod
    def _error(
        task: pb.JudgmentTask, reason: str, message: str, retryable: bool
    ) -> pb.JudgmentError:
        item = task.item
        error = pb.JudgmentError(
            battle_id=item.battle_id,
            prompt_id=item.prompt_id,
            round_id=item.round_id,
            arena=item.arena,
            judge=task.judge,
            order=task.order,
            model_a=item.a.model,
            model_b=item.b.model,
            failure=common_pb2.Failure(reason=reason, message=message, retryable=retryable),
            context=task.context,
        )
        return error

    # --- RPC use cases --------------------------------------------------------------------------

    @staticmethod
    def _orders(orders: Sequence[int]) -> list[pb.JudgeOrder.ValueType]:
        chosen = [pb.JudgeOrder.ValueType(o) for o in dict.fromkeys(orders)] or [
            pb.JUDGE_ORDER_AB,
            pb.JUDGE_ORDER_BA,
        ]
        for order in chosen:
            if order not in (pb.JUDGE_ORDER_AB, pb.JUDGE_ORDER_BA):
                raise InvalidArgumentError(
                    "each order must be JUDGE_ORDER_AB or JUDGE_ORDER_BA", where="orders"
                )
        return chosen

    def _pairwise_definition(self, spec: common_pb2.JudgeSpec) -> JudgeDefinition:
        definition = definition_of(spec, self._default_retries)
        definition.validate()
        if not definition.pairwise:
            raise InvalidArgumentError(
                f"{definition.protocol.name} grades one answer; use Grade or Score",
                where="judge.protocol",
            )
        return definition

    def _outcome(self, judgments: Sequence[pb.Judgment], aggregation: int) -> pb.PairOutcome:
        mode = PositionAggregation(aggregation or PositionAggregation.SEPARATE_BATTLES)
        combined = combine_orders({Order(j.order): outcome_of(j) for j in judgments}, mode)
        result = pb.PairOutcome(verdict=int(combined.verdict))  # type: ignore[arg-type]
        if combined.mean_score_a is not None:
            result.mean_score_a = combined.mean_score_a
        if combined.mean_score_b is not None:
            result.mean_score_b = combined.mean_score_b
        if combined.position_consistent is not None:
            result.position_consistent = combined.position_consistent
        return result

    async def judge_pair(self, request: pb.JudgePairRequest) -> pb.JudgePairResponse:
        self._pairwise_definition(request.judge)
        tasks = [
            pb.JudgmentTask(
                judge=request.judge,
                item=request.item,
                order=order,
                cache_policy=request.cache_policy,
            )
            for order in self._orders(request.orders)
        ]
        results = await self.judge_tasks(tasks)
        for result in results:
            if isinstance(result, pb.JudgmentError):
                raise_for(result)
        judgments = [r for r in results if isinstance(r, pb.Judgment)]
        return pb.JudgePairResponse(
            judgments=judgments, outcome=self._outcome(judgments, request.aggregation)
        )

    async def judge_batch(self, request: pb.JudgeBatchRequest) -> pb.JudgeBatchResponse:
        self._pairwise_definition(request.judge)
        orders = self._orders(request.orders)
        if request.HasField("max_concurrency") and request.max_concurrency < 1:
            raise InvalidArgumentError("must be at least 1", where="max_concurrency")
        tasks = [
            pb.JudgmentTask(
                judge=request.judge, item=item, order=order, cache_policy=request.cache_policy
            )
            for item in request.items
            for order in orders
        ]
        limit = request.max_concurrency if request.HasField("max_concurrency") else None
        results = await self.judge_tasks(tasks, limit)
        response = pb.JudgeBatchResponse()
        for index in range(len(request.items)):
            chunk = results[index * len(orders) : (index + 1) * len(orders)]
            entry = response.results.add(index=index)
            judgments = [r for r in chunk if isinstance(r, pb.Judgment)]
            entry.judgments.extend(judgments)
            errors = [r for r in chunk if isinstance(r, pb.JudgmentError)]
            if errors:
                entry.failure.CopyFrom(errors[0].failure)
            else:
                entry.outcome.CopyFrom(self._outcome(judgments, request.aggregation))
        return response

    def _single_definition(self, spec: common_pb2.JudgeSpec) -> JudgeDefinition:
        definition = definition_of(spec, self._default_retries)
        definition.validate()
        if definition.protocol.pairwise or (
            definition.protocol is Protocol.ENSEMBLE and definition.pairwise
        ):
            raise InvalidArgumentError(
                f"{definition.protocol.name} compares two answers; use JudgePair",
                where="judge.protocol",
            )
        return definition

    async def grade(self, request: pb.GradeRequest) -> pb.GradeResponse:
        self._single_definition(request.judge)
        item = pb.JudgeItem()
        item.CopyFrom(request.item)
        item.ClearField("b")  # the contract: item.b is ignored
        task = pb.JudgmentTask(judge=request.judge, item=item, cache_policy=request.cache_policy)
        result = await self.judge_task(task)
        if isinstance(result, pb.JudgmentError):
            raise_for(result)
        assert isinstance(result, pb.Judgment)
        return pb.GradeResponse(judgment=result)

    async def score(self, request: pb.ScoreRequest) -> pb.ScoreResponse:
        definition = self._single_definition(request.judge)
        low, high = score_range(definition)
        failure_reward = (
            request.parse_failure_reward if request.HasField("parse_failure_reward") else -1.0
        )
        tasks = []
        for index, entry in enumerate(request.items):
            if not entry.prompt:
                raise InvalidArgumentError("needs the prompt", where=f"items[{index}].prompt")
            item = pb.JudgeItem(prompt=entry.prompt, a=pb.Candidate(text=entry.response))
            if entry.HasField("reference_answer"):
                item.reference_answer = entry.reference_answer
            tasks.append(pb.JudgmentTask(judge=request.judge, item=item))
        results = await self.judge_tasks(tasks)
        response = pb.ScoreResponse()
        for result in results:
            if isinstance(result, pb.JudgmentError):
                raise_for(result)
            assert isinstance(result, pb.Judgment)
            scored = response.results.add(
                judgment_id=result.judgment_id, parse_status=result.parse_status
            )
            if result.parse_status == pb.PARSE_STATUS_OK and result.HasField("score_a"):
                scored.score = result.score_a
                scored.reward = max(-1.0, min(1.0, 2 * (result.score_a - low) / (high - low) - 1))
            else:
                scored.reward = failure_reward
        return response

    async def get_judgment(self, judgment_id_: str) -> pb.Judgment:
        if not judgment_id_:
            raise InvalidArgumentError("is empty", where="judgment_id")
        judgment = await self._cache.get(judgment_id_)
        if judgment is None:
            raise NotFoundError(f"no judgment {judgment_id_} in the cache")
        return judgment

    def list_templates(self, request: pb.ListTemplatesRequest) -> pb.ListTemplatesResponse:
        protocol = Protocol(request.protocol) if request.protocol else None
        templates = self._engine.templates.all(protocol)
        try:
            offset = int(request.page.page_token or 0)
        except ValueError:
            raise InvalidArgumentError(
                "not a token from this service", where="page.page_token"
            ) from None
        if request.page.page_size < 0:
            raise InvalidArgumentError("must not be negative", where="page.page_size")
        size = request.page.page_size or DEFAULT_PAGE_SIZE
        page = templates[offset : offset + size]
        response = pb.ListTemplatesResponse()
        for template in page:
            response.templates.add(
                template_id=template.template_id,
                protocol=common_pb2.JudgeProtocol.ValueType(template.protocol),
                format=_TEMPLATE_FORMATS[template.format],
                source_uri=template.source_uri,
                needs_reference=template.needs_reference,
                description=template.description,
            )
        if offset + size < len(templates):
            response.page.next_page_token = str(offset + size)
        return response

    async def quality(self, request: pb.GetJudgeQualityRequest) -> pb.JudgeQualityReport:
        if not request.judge_name:
            raise InvalidArgumentError("names the judge to report on", where="judge_name")
        games = []
        total = failed = recovered = 0
        spec: common_pb2.JudgeSpec | None = None
        async for judgment in self._cache.scan():
            judge = judgment.judge
            if judge.name != request.judge_name:
                continue
            if request.judge_version and judge.version != request.judge_version:
                continue
            if request.arena and judgment.arena != request.arena:
                continue
            if request.round_id and judgment.round_id != request.round_id:
                continue
            spec = spec or judge
            total += 1
            if judgment.parse_status != pb.PARSE_STATUS_OK:
                failed += 1
            elif judgment.attempts > 1:
                recovered += 1
            if judgment.model_b or judgment.HasField("style_b"):
                games.append(game_of(judgment))
        report = pb.JudgeQualityReport()
        report.computed_at.GetCurrentTime()
        if request.gold_sets:
            spec = await self._gold_spec(request)
        if spec is not None:
            report.judge.CopyFrom(spec)
        else:
            report.judge.name = request.judge_name
            report.judge.version = request.judge_version
        position = position_consistency(games)
        report.position.CopyFrom(
            pb.PositionConsistency(
                valid=position.valid,
                inconsistent=position.inconsistent,
                rate=position.rate,
                first_position_preference=position.first_position_preference,
            )
        )
        length = length_bias(games)
        report.length.CopyFrom(
            pb.LengthBias(decisive=length.decisive, longer_wins_rate=length.longer_wins_rate)
        )
        report.parse.CopyFrom(
            pb.ParseStats(
                total=total,
                failed=failed,
                failure_rate=failed / total if total else 0.0,
                recovered_by_retry=recovered,
            )
        )
        for source in request.gold_sets:
            assert spec is not None
            report.gold.append(await self._gold_agreement(spec, source))
        return report

    async def _gold_spec(self, request: pb.GetJudgeQualityRequest) -> common_pb2.JudgeSpec:
        if not request.judge_version:
            raise InvalidArgumentError(
                "judging a gold set needs the judge's version", where="judge_version"
            )
        spec = await self._specs.lookup(request.judge_name, request.judge_version)
        if spec is None:
            raise NotFoundError(
                f"judge {request.judge_name}@{request.judge_version} has never judged here; its "
                "spec is unknown"
            )
        return spec

    async def _gold_agreement(
        self, spec: common_pb2.JudgeSpec, source: pb.GoldSetSource
    ) -> pb.GoldAgreement:
        name = _GOLD_SET_NAMES.get(source.gold_set)
        if name is None:
            raise InvalidArgumentError("pick GOLD_SET_PANDALM or GOLD_SET_LLMBAR", where="gold_set")
        path = Path(source.uri.removeprefix("file://"))
        if not await asyncio.to_thread(path.exists):
            raise NotFoundError(f"gold set {source.uri} does not exist on the judge service")
        gold = await asyncio.to_thread(load_gold, name, path)
        predictions = await judge_gold_items(self, spec, gold.items)
        agreement = gold_agreement(name, spec.name, gold.labels, predictions)
        result = pb.GoldAgreement(
            gold_set=source.gold_set,
            n=agreement.n,
            accuracy=agreement.accuracy,
            cohen_kappa=agreement.cohen_kappa or 0.0,
        )
        result.accuracy_without_ties = agreement.accuracy_without_ties or 0.0
        result.positional_agreement = agreement.positional_agreement or 0.0
        return result


_TEMPLATE_FORMATS = {
    TemplateFormat.FASTCHAT_JSONL: pb.TEMPLATE_FORMAT_FASTCHAT_JSONL,
    TemplateFormat.ARENA_HARD_YAML: pb.TEMPLATE_FORMAT_ARENA_HARD_YAML,
    TemplateFormat.BUILTIN: pb.TEMPLATE_FORMAT_BUILTIN,
}

_SIDES: dict[int, Side] = {
    pb.VERDICT_A_MUCH_BETTER: "a",
    pb.VERDICT_A_BETTER: "a",
    pb.VERDICT_TIE: "tie",
    pb.VERDICT_B_BETTER: "b",
    pb.VERDICT_B_MUCH_BETTER: "b",
}


def gold_items_request(
    spec: common_pb2.JudgeSpec, items: Sequence[GoldItem]
) -> pb.JudgeBatchRequest:
    """Gold pairs as one JudgeBatch request, both orders."""
    request = pb.JudgeBatchRequest(judge=spec)
    for item in items:
        request.items.add(
            battle_id=f"gold/{item.item_id}",
            prompt_id=item.item_id,
            prompt=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=item.instruction)],
            a=pb.Candidate(model="output_1", text=item.output_1),
            b=pb.Candidate(model="output_2", text=item.output_2),
        )
    return request


def predictions_of(
    request: pb.JudgeBatchRequest, response: pb.JudgeBatchResponse
) -> dict[str, list[Side | None]]:
    """Per gold item, its verdict per order (AB first), None where unparsed or failed."""
    predictions: dict[str, list[Side | None]] = {}
    for result in response.results:
        by_order = {j.order: _SIDES.get(j.verdict) for j in result.judgments}
        predictions[request.items[result.index].prompt_id] = [
            by_order.get(pb.JUDGE_ORDER_AB),
            by_order.get(pb.JUDGE_ORDER_BA),
        ]
    return predictions


async def judge_gold_items(
    app: JudgeApplication, spec: common_pb2.JudgeSpec, items: Sequence[GoldItem]
) -> dict[str, list[Side | None]]:
    request = gold_items_request(spec, items)
    response = await app.judge_batch(request)
    return predictions_of(request, response)
