"""The OpenAI-compatible HTTP endpoint of the service, and the OpenAI-compatible client backend
tested against it for real: a model registered with BACKEND_OPENAI_COMPATIBLE whose endpoint is
the service's own /v1, with the API key taken from a secret."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc import aio

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as pb
from arena_cli.nats_server import NatsServer

from .service import RunningService, running_service, service_settings, tiny_model_declaration

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "sk-local-test-key-123"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(nats_server: NatsServer) -> AsyncIterator[RunningService]:
    settings = service_settings(
        nats_server.url,
        models=[tiny_model_declaration(default_sampling={"max_tokens": 12})],
        http_api_key=API_KEY,
        secrets={"local-endpoint": API_KEY, "wrong-key": "sk-not-the-key"},
    )
    async with running_service(settings) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def http(service: RunningService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=service.http_url + "/",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ) as client:
        yield client


def chat(**fields: object) -> dict[str, object]:
    return {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello over HTTP"},
        ],
        **fields,
    }


async def test_models_are_listed(http: httpx.AsyncClient) -> None:
    response = await http.get("models")

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    cards = {model["id"]: model for model in body["data"]}
    assert cards["tiny"]["max_model_len"] == 512
    assert cards["tiny"]["backend"] == "transformers"
    assert (await http.get("models/tiny")).json()["state"] == "ready"
    assert (await http.get("models/ghost")).status_code == 404


async def test_a_tiny_model_answers_a_chat_completion(http: httpx.AsyncClient) -> None:
    response = await http.post("chat/completions", json=chat(temperature=0, seed=1, max_tokens=8))

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 8
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    again = (
        await http.post("chat/completions", json=chat(temperature=0, seed=1, max_tokens=8))
    ).json()
    assert again["arena"]["cached"] is True
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]


async def test_streaming_sends_server_sent_events_ending_with_done(
    http: httpx.AsyncClient,
) -> None:
    events: list[str] = []
    async with http.stream(
        "POST",
        "chat/completions",
        json=chat(stream=True, temperature=1.0, seed=2, stream_options={"include_usage": True}),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])

    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(
        choice["delta"].get("content", "") for chunk in chunks for choice in chunk["choices"]
    )
    finishes = [
        c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]
    ]
    assert text
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert finishes in (["stop"], ["length"])
    assert chunks[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        (chat(model="ghost"), 404, "model", "model 'ghost' is not registered"),
        (chat(messages=[]), 400, "input.messages", "messages is empty"),
        (chat(max_tokens=0), 400, "input.sampling.max_tokens", "must be positive"),
        (chat(temperature="hot"), 400, "temperature", "must be a number"),
        (
            chat(messages=[{"role": "user", "content": "word " * 700}]),
            400,
            "input.messages",
            "accepts at most 512 tokens",
        ),
        ({"messages": []}, 400, "model", "model is required"),
    ],
)
async def test_bad_requests_get_openai_style_errors(
    http: httpx.AsyncClient, body: dict[str, object], status: int, param: str, message: str
) -> None:
    response = await http.post("chat/completions", json=body)

    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]
    assert (await http.post("chat/completions", json=chat(seed=5))).status_code == 200


async def test_a_missing_or_wrong_api_key_is_refused(service: RunningService) -> None:
    async with httpx.AsyncClient(base_url=service.http_url + "/") as anonymous:
        missing = await anonymous.post("chat/completions", json=chat())
        wrong = await anonymous.post(
            "chat/completions", json=chat(), headers={"Authorization": "Bearer nope"}
        )

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"


async def register_remote(
    service: RunningService, name: str, secret: str, remote_model: str = "tiny"
) -> None:
    await service.stub.RegisterModel(
        pb.RegisterModelRequest(
            spec=pb.ModelSpec(
                name=name,
                backend=pb.BACKEND_OPENAI_COMPATIBLE,
                uri=remote_model,  # the remote model id: the service's own tiny model
                endpoint=service.http_url,
                api_key_secret=secret,
            )
        )
    )


def remote_input(text: str, model: str = "remote-tiny", **sampling: object) -> pb.GenerationInput:
    return pb.GenerationInput(
        model=common_pb2.ModelRef(name=model),
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
        sampling=common_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def test_the_openai_client_backend_works_against_the_services_own_endpoint(
    service: RunningService,
) -> None:
    await register_remote(service, "remote-tiny", "local-endpoint")
    direct = await service.stub.Generate(
        pb.GenerateRequest(
            input=remote_input("Same question", model="tiny", temperature=0.0, max_tokens=8)
        )
    )

    via_http = await service.stub.Generate(
        pb.GenerateRequest(input=remote_input("Same question", temperature=0.0, max_tokens=8))
    )
    streamed = [
        response
        async for response in service.stub.GenerateStream(
            pb.GenerateStreamRequest(
                input=remote_input("Stream through HTTP", temperature=0.8, seed=3, max_tokens=8)
            )
        )
    ]

    generation = via_http.generation
    assert generation.backend == pb.BACKEND_OPENAI_COMPATIBLE
    assert generation.model.name == "remote-tiny"
    assert generation.choices[0].text == direct.generation.choices[0].text
    assert generation.usage.completion_tokens == direct.generation.usage.completion_tokens
    assert generation.usage.prompt_tokens == direct.generation.usage.prompt_tokens
    deltas = "".join(r.delta.text for r in streamed if r.WhichOneof("event") == "delta")
    assert deltas == streamed[-1].generation.choices[0].text
    assert deltas


@pytest.mark.parametrize(
    ("name", "secret", "remote_model", "code", "message"),
    [
        (
            "remote-ghost",
            "local-endpoint",
            "ghost",
            grpc.StatusCode.NOT_FOUND,
            "model 'ghost' not found",
        ),
        (
            "remote-wrong-key",
            "wrong-key",
            "tiny",
            grpc.StatusCode.FAILED_PRECONDITION,
            "refused the credentials of secret 'wrong-key'",
        ),
        (
            "remote-no-key",
            "missing",
            "tiny",
            grpc.StatusCode.FAILED_PRECONDITION,
            "secret 'missing' is not set",
        ),
    ],
)
async def test_the_client_backend_reports_the_endpoints_refusals(
    service: RunningService,
    name: str,
    secret: str,
    remote_model: str,
    code: grpc.StatusCode,
    message: str,
) -> None:
    await register_remote(service, name, secret, remote_model)

    with pytest.raises(aio.AioRpcError) as caught:
        await service.stub.Generate(pb.GenerateRequest(input=remote_input("x", name)))

    assert caught.value.code() == code
    assert message in (caught.value.details() or "")
