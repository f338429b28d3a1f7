"""Paths into the shared public datasets the judge tests read (../shared/datasets)."""

from __future__ import annotations

from pathlib import Path

from tests.support.datasets import SHARED_DATASETS

ARENA_HARD_FORK = (
    SHARED_DATASETS
    / "arena-hard-auto-fork-zeppombal/data/arena-hard-v0.1/model_judgment/gpt-3.5-turbo-0125"
    / "Nexusflow__Athene-V2-Chat.jsonl"
)
FASTCHAT_PAIR = (
    SHARED_DATASETS
    / "FastChat/_history/66f2a01/fastchat/llm_judge/data/skycamp/model_judgment/gpt-4_pair.jsonl"
)
FASTCHAT_PROMPTS = SHARED_DATASETS / "FastChat/fastchat/llm_judge/data/judge_prompts.jsonl"
ARENA_HARD_CONFIGS = SHARED_DATASETS / "arena-hard-auto"
MT_BENCH_REPRO = SHARED_DATASETS / "mt_bench_repro/data/en"
LLMBAR = SHARED_DATASETS / "LLMBar/Dataset/LLMBar"
PANDALM = SHARED_DATASETS / "PandaLM/data"


def repro_pairwise_files() -> list[Path]:
    return sorted((MT_BENCH_REPRO / "judgments/gpt/judge_gpt4omini/pairwise").glob("*.jsonl"))
