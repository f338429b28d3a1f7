"""`make gpu-check` (tools/gpu_check.py) rehearsed on the CPU with vLLM faked: the throughput,
LoRA and checkpoint-swap checks run the same engine and backend code they will run on a GPU, so
a mistake in the script shows here rather than on a borrowed GPU machine. Its path without vLLM
(the transformers backend) is rehearsed for real in tests/integration/inference."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from arena_inference.backends import vllm_backend
from tests.support.scripts import load_tool

from . import test_vllm_backend as fake

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def load_script() -> ModuleType:
    return load_tool("gpu_check")


class SlowFakeEngine(fake.FakeEngine):
    """Yields to the event loop like a real engine does."""

    @classmethod
    def from_engine_args(cls, args: fake.Args) -> fake.FakeEngine:
        engine = cls(args, delay=0.001)
        fake.FakeEngine.created.append(engine)
        return engine


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    api = vllm_backend.VllmApi(SlowFakeEngine, fake.Args, fake.Params, fake.LoRA, fake.Kind)
    monkeypatch.setattr(vllm_backend, "import_vllm", lambda: api)
    fake.FakeEngine.created = []
    return load_script()


async def test_the_backend_throughput_run_generates_every_prompt(script: ModuleType) -> None:
    seconds, tokens = await script.vllm_backend_throughput(Path("/models/1b"), ["a", "b", "c"], 8)

    assert seconds > 0
    assert tokens == 9  # three fake tokens per prompt
    engine = fake.FakeEngine.created[0]
    assert engine.args.values["enable_prefix_caching"] is True
    assert engine.requests[-1][1].values["ignore_eos"] is True
    assert engine.shut_down


async def test_the_lora_check_passes_when_the_adapter_changes_answers(script: ModuleType) -> None:
    target = script.Target("vllm", utilization=0.3)
    result = await script.lora_check(target, Path("/models/1b"), Path("/lora"))

    assert result["ok"], result
    assert fake.FakeEngine.created[0].args.values["enable_lora"] is True


async def test_the_swap_check_passes_when_no_request_fails(script: ModuleType) -> None:
    target = script.Target("vllm", utilization=0.3)
    result = await script.swap_check(target, Path("/models/1b"), Path("/models/v2"), 0.05)

    assert result["ok"], result
    assert result["served_by_old"] > 0
    assert result["served_by_new"] > 0
    old, new = fake.FakeEngine.created
    assert old.shut_down
    assert new.args.values["model"] == "/models/v2"


def test_the_tokenizer_is_trained_locally_with_a_chat_template(
    script: ModuleType, tmp_path: Path
) -> None:
    tokenizer = script.train_tokenizer(tmp_path, 600, 256, corpus_lines=200)

    assert len(tokenizer) == 600
    ids = script.chat_prompt_ids(tmp_path, ["hello"])[0]
    assert tokenizer.decode(ids) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


def test_the_model_shape_is_about_one_billion_parameters(script: ModuleType) -> None:
    shape = script.ONE_BILLION
    hidden, mlp, layers = (
        shape["hidden_size"],
        shape["intermediate_size"],
        shape["num_hidden_layers"],
    )
    kv = hidden * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * mlp
    total = layers * per_layer + 2 * 8192 * hidden

    assert 0.9e9 < total < 1.2e9


def test_vllm_is_reported_missing_with_the_reason(
    script: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an import of a missing package meets

    status = script.vllm_status()

    assert status["available"] is False
    assert "vllm" in status["reason"]
