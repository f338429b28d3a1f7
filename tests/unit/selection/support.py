"""Helpers for selection tests: shared-data paths and a synthetic judged round."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

from tests.conftest import SHARED_DATASETS

MT_BENCH = SHARED_DATASETS / "FastChat/fastchat/llm_judge/data/mt_bench/question.jsonl"
ARENA_HARD_V01 = SHARED_DATASETS / "arena-hard-auto/data/arena-hard-v0.1/question.jsonl"
ARENA_HARD_V20 = SHARED_DATASETS / "arena-hard-auto/data/arena-hard-v2.0/question.jsonl"
ALPACA_EVAL = SHARED_DATASETS / "alpaca_eval/results/alpaca-7b/model_outputs.json"
VICUNA = SHARED_DATASETS / "vicuna-blog-eval/eval/table/question.jsonl"
VICUNA_TABLE = SHARED_DATASETS / "vicuna-blog-eval/eval/table"

TARGET = "target"
OPPONENTS = ("command-r-plus", "qwen-72b", "openchat")


def synthetic_round(prompts: int = 40, seed: int = 3) -> list[dict[str, Any]]:
    """A full round-robin (target + 3 opponents) on `prompts` instructions, every pair judged in
    both orders with integer scores 1-10 (with position noise), as the judged-round file holds."""
    rng = random.Random(seed)
    models = (TARGET, *OPPONENTS)
    lines = []
    for index in range(prompts):
        quality = {model: rng.randint(1, 10) for model in models}
        responses = {
            model: {"text": f"answer of {model} to #{index}", "generation_id": f"g-{model}-{index}"}
            for model in models
        }
        judgments = []
        for a, b in itertools.combinations(models, 2):
            battle = f"b-{index}-{a}-{b}"
            for order in ("AB", "BA"):
                noise = rng.choice((-1, 0, 0, 1))
                score_a = min(10, max(1, quality[a] + noise))
                score_b = min(10, max(1, quality[b] - noise))
                judgments.append(
                    {
                        "judgment_id": f"j-{battle}-{order}",
                        "battle_id": battle,
                        "model_a": a,
                        "model_b": b,
                        "score_a": score_a,
                        "score_b": score_b,
                        "order": order,
                        "judge": {"name": "arena-pairwise", "version": "1"},
                    }
                )
        lines.append(
            {
                "prompt_id": f"p{index:03d}",
                "round_id": "round-1",
                "category": rng.choice(("math", "coding", "writing")),
                "messages": [{"role": "user", "content": f"instruction number {index}"}],
                "responses": responses,
                "judgments": judgments,
            }
        )
    return lines


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def vicuna_round() -> list[dict[str, Any]]:
    """A real judged round: GPT-4 reviews of vicuna-7b against four models on the 80 Vicuna
    questions, each review scoring both answers 1-10 (one position order per pair)."""
    questions: dict[int, str] = {}
    for line in (VICUNA_TABLE / "question.jsonl").read_text().split("\n"):
        if line.strip():
            row = json.loads(line)
            questions[row["question_id"]] = row["text"]
    answers: dict[str, tuple[str, int, str]] = {}
    files = {
        "vicuna-7b": "answer_vicuna-7b-20230322-fp16.jsonl",
        "alpaca-13b": "answer_alpaca-13b.jsonl",
        "bard": "answer_bard.jsonl",
        "gpt35": "answer_gpt35.jsonl",
        "llama-13b": "answer_llama-13b.jsonl",
    }
    for model, name in files.items():
        for line in (VICUNA_TABLE / "answer" / name).read_text().split("\n"):
            if line.strip():
                row = json.loads(line)
                answers[row["answer_id"]] = (model, row["question_id"], row["text"])
    prompts: dict[int, dict[str, Any]] = {}
    for review_file in sorted((VICUNA_TABLE / "review/vicuna-7b_20230322-fp16").glob("*.jsonl")):
        for line in review_file.read_text().split("\n"):
            if not line.strip():
                continue
            review = json.loads(line)
            model_a, question, text_a = answers[review["answer1_id"]]
            model_b, _, text_b = answers[review["answer2_id"]]
            entry = prompts.setdefault(
                question,
                {
                    "prompt_id": f"vicuna-{question}",
                    "round_id": "vicuna-blog",
                    "messages": [{"role": "user", "content": questions[question]}],
                    "responses": {},
                    "judgments": [],
                },
            )
            entry["responses"][model_a] = {"text": text_a, "generation_id": review["answer1_id"]}
            entry["responses"][model_b] = {"text": text_b, "generation_id": review["answer2_id"]}
            score_a, score_b = review["score"]
            entry["judgments"].append(
                {
                    "judgment_id": review["review_id"],
                    "battle_id": review["review_id"],
                    "model_a": model_a,
                    "model_b": model_b,
                    "score_a": score_a if score_a >= 1 else None,
                    "score_b": score_b if score_b >= 1 else None,
                    "order": "AB",
                    "judge": {"name": "gpt-4-vicuna-review", "version": "2023-03"},
                }
            )
    return [prompts[key] for key in sorted(prompts)]
