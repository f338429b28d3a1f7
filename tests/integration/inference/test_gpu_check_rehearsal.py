"""`make gpu-check` without vLLM, rehearsed for real on the CPU: tools/gpu_check.py with ``--cpu``
builds small models and runs its throughput, LoRA and checkpoint-swap checks on the service's
transformers backend (decoding in its worker process) against Hugging Face ``generate``, the
path a lent GPU machine takes, since vLLM cannot be carried there."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.scripts import load_tool

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def load_script() -> ModuleType:
    return load_tool("gpu_check")


def test_without_vllm_the_checks_run_on_the_transformers_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM cannot be imported, as on a lent GPU
    script = load_script()
    record = tmp_path / "gpu-check.json"

    code = script.main(
        [
            "--cpu",
            "--prompts=12",
            "--max-tokens=8",
            "--batch=4",
            f"--record={record}",
            f"--workdir={tmp_path}",
        ]
    )

    report = json.loads(record.read_text())
    assert report["vllm"]["available"] is False
    assert "vllm" in report["vllm"]["reason"]
    assert report["backend"] == "transformers"
    throughput = report["throughput"]
    assert throughput["backend"] == "transformers"
    assert throughput["prompts"] == 12
    assert throughput["service_backend_tokens"] > 0
    assert throughput["direct_hf_generate_tokens"] > 0
    assert throughput["ratio"] > 0
    assert report["lora"]["ok"], report["lora"]
    assert report["swap"]["ok"], report["swap"]
    assert report["swap"]["served_by_old"] > 0
    assert report["swap"]["served_by_new"] > 0
    assert report["ok"] is True
    assert code == 0
