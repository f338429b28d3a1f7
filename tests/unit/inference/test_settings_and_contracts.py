"""Model declarations from settings, secret resolution, and the proto <-> domain mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as pb
from arena_core.errors import ConfigurationError, InvalidArgumentError
from arena_core.settings import load_settings
from arena_inference.backends.factory import SecretResolver, backend_factory
from arena_inference.backends.openai_backend import OpenAIBackend
from arena_inference.backends.replay_backend import ReplayBackend
from arena_inference.backends.transformers_backend import TransformersBackend
from arena_inference.backends.vllm_backend import VllmBackend
from arena_inference.convert import (
    generation_from_proto,
    generation_to_proto,
    input_from_proto,
    spec_from_declaration,
    spec_from_proto,
    spec_to_proto,
)
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    Choice,
    FinishReason,
    Generation,
    ModelRef,
    ModelSpec,
    ReplayFormat,
    Sampling,
)
from arena_inference.settings import InferenceOptions, InferenceSettings


def test_models_are_declared_as_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ARENA_INFERENCE__MODELS",
        '[{"name": "tiny", "backend": "transformers", "uri": "/m/tiny",'
        ' "default_sampling": {"temperature": 0, "max_tokens": 64}},'
        ' {"name": "gpt", "backend": "openai", "endpoint": "https://api/v1",'
        ' "api_key_secret": "openai"}]',
    )
    monkeypatch.setenv("ARENA_INFERENCE__HTTP_PORT", "8123")
    monkeypatch.setenv("ARENA_INFERENCE__SECRETS__OPENAI", "sk-real-key")

    settings = load_settings(InferenceSettings)

    tiny, gpt = (spec_from_declaration(d) for d in settings.inference.declarations())
    assert tiny.default_sampling == Sampling(temperature=0.0, max_tokens=64)
    assert gpt.backend == BackendKind.OPENAI
    assert settings.inference.http_port == 8123
    resolver = SecretResolver(settings.inference.secrets)
    assert resolver.resolve("openai") == "sk-real-key"


def test_a_bad_declaration_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_INFERENCE__MODELS", '[{"name": "x", "backend": "tgi"}]')

    with pytest.raises(ConfigurationError, match="ARENA_INFERENCE__MODELS"):
        load_settings(InferenceSettings)


def test_models_file_in_yaml_and_duplicate_names(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - name: hard-gpt4\n"
        "    backend: replay\n"
        "    replay_uris: [/data/gpt-4-0314.jsonl]\n"
        "    replay_format: arena_hard\n",
        encoding="utf-8",
    )
    options = InferenceOptions(models_file=path)
    (declared,) = options.declarations()
    assert spec_from_declaration(declared).replay_format == ReplayFormat.ARENA_HARD

    twice = InferenceOptions(models_file=path, models=[declared])
    with pytest.raises(ConfigurationError, match="declared twice"):
        twice.declarations()


def test_secrets_come_from_settings_or_mounted_files(tmp_path: Path) -> None:
    (tmp_path / "judge-key").write_text("sk-from-file\n", encoding="utf-8")
    resolver = SecretResolver({"inline": SecretStr("sk-inline")}, tmp_path)

    assert resolver.resolve("INLINE") == "sk-inline"
    assert resolver.resolve("judge-key") == "sk-from-file"
    with pytest.raises(ConfigurationError, match="ARENA_INFERENCE__SECRETS__MISSING_KEY"):
        resolver.resolve("missing-key")


def test_the_factory_builds_each_backend_and_resolves_the_api_key() -> None:
    options = InferenceOptions(secrets={"k": SecretStr("sk-1")}, vllm_gpu_memory_utilization=0.4)
    create = backend_factory(options, SecretResolver(options.secrets))

    assert isinstance(
        create(ModelSpec("a", BackendKind.TRANSFORMERS, uri="/m")), TransformersBackend
    )
    assert isinstance(create(ModelSpec("b", BackendKind.VLLM, uri="/m")), VllmBackend)
    assert isinstance(
        create(ModelSpec("c", BackendKind.REPLAY, replay_uris=("/a",))), ReplayBackend
    )
    remote = create(ModelSpec("d", BackendKind.OPENAI, endpoint="http://x/v1", api_key_secret="k"))
    assert isinstance(remote, OpenAIBackend)
    with pytest.raises(ConfigurationError, match="secret 'nope'"):
        create(ModelSpec("e", BackendKind.OPENAI, endpoint="http://x/v1", api_key_secret="nope"))


def test_the_transformers_backend_decodes_where_the_settings_say() -> None:
    def build(options: InferenceOptions, spec: ModelSpec) -> TransformersBackend:
        backend = backend_factory(options, SecretResolver({}))(spec)
        assert isinstance(backend, TransformersBackend)
        return backend

    spec = ModelSpec("a", BackendKind.TRANSFORMERS, uri="/m")
    per_model = ModelSpec(
        "b", BackendKind.TRANSFORMERS, uri="/m", backend_options={"worker": "thread"}
    )

    assert build(InferenceOptions(), spec).worker_kind == "process"
    assert build(InferenceOptions(transformers_worker="thread"), spec).worker_kind == "thread"
    assert build(InferenceOptions(), per_model).worker_kind == "thread"
    with pytest.raises(ValueError, match="transformers_worker"):
        InferenceOptions(transformers_worker="fork")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"backend_options\.worker"):
        TransformersBackend(
            ModelSpec("c", BackendKind.TRANSFORMERS, uri="/m", backend_options={"worker": "x"})
        )


def test_specs_round_trip_through_the_contract() -> None:
    spec = ModelSpec(
        name="m",
        backend=BackendKind.VLLM,
        uri="/ckpt",
        revision="r9",
        default_sampling=Sampling(temperature=0.7, stop=("###",)),
        tensor_parallel_size=4,
        max_model_len=8192,
        dtype="bfloat16",
        adapters=(AdapterSpec("a", "/lora/a", "v1"),),
        backend_options={"max_num_seqs": 128, "gpu_memory_utilization": 0.85},
        labels={"team": "arena"},
    )

    back = spec_from_proto(spec_to_proto(spec))

    assert back == spec
    assert isinstance(back.backend_options["max_num_seqs"], int)


def test_wire_only_mistakes_are_invalid_arguments_naming_the_field() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        spec_from_proto(pb.ModelSpec(name="m"))
    assert caught.value.where == "spec.backend"

    message = pb.GenerationInput(
        model=common_pb2.ModelRef(name="m"), messages=[common_pb2.ChatMessage(content="hi")]
    )
    with pytest.raises(InvalidArgumentError) as caught:
        input_from_proto(message)
    assert caught.value.where == "input.messages[0].role"


def test_generations_round_trip_with_style_features() -> None:
    generation = Generation(
        generation_id="a" * 64,
        model=ModelRef("m", "r1", "lora"),
        choices=(Choice(0, "# Title\n- item\n**bold**", FinishReason.LENGTH, 9),),
        prompt_tokens=12,
        completion_tokens=9,
        latency_seconds=1.25,
        time_to_first_token=0.125,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        backend=BackendKind.TRANSFORMERS,
        prompt_sha256="b" * 64,
    )

    message = generation_to_proto(generation)

    assert message.choices[0].style.header_count == 1
    assert message.choices[0].style.list_count == 1
    assert message.choices[0].style.bold_count == 1
    assert message.choices[0].style.tokens == 9
    assert generation_from_proto(message) == generation
