"""A small, fast flywheel for tests: a tiny transformers target, two replayed opponents of known
accuracy on arithmetic questions with reference answers, and the reference judge."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.support.tiny_models import build_tiny_chat_model

_RECIPE = "per_device_batch_size: 4, gradient_accumulation_steps: 1, max_length: 64"


def _question(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 30), rng.randint(1, 30)
    return f"What is {a} + {b}? Answer with the number only.", str(a + b)


def build_flywheel_assets(root: Path, *, stages: str = "[sft, dpo]", seed: int = 0) -> str:
    """Writes the pool, test set, opponents' recorded answers and the target model under
    `root`; returns the spec's YAML."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    questions = dict(_question(rng) for _ in range(80))
    items = list(questions.items())
    pool, test = items[:60], items[60:]
    for name, rows in (("pool", pool), ("test", test)):
        (root / f"{name}.jsonl").write_text(
            "".join(
                json.dumps({"messages": [{"role": "user", "content": q}], "reference_answer": a})
                + "\n"
                for q, a in rows
            )
        )
    for name, wrong in (("strong", 0.1), ("weak", 0.6)):
        answers = [
            {
                "instruction": q,
                "output": a if rng.random() > wrong else str(int(a) + 1),
                "generator": name,
            }
            for q, a in items
        ]
        (root / f"{name}.json").write_text(json.dumps(answers))
    if not (root / "target" / "config.json").exists():
        build_tiny_chat_model(root / "target", seed=1)
    return f"""
name: recovery
models:
  target: {{backend: transformers, path: {root}/target}}
  strong: {{backend: replay, path: {root}/strong.json}}
  weak: {{backend: replay, path: {root}/weak.json}}
target: {{model: target, base: {root}/target}}
opponents: [strong, weak]
judge: {{name: reference, protocol: reference}}
generation: {{temperature: 0.0, max_tokens: 8}}
pool: {{dataset: {root}/pool.jsonl, slices: 4}}
stages: {stages}
thresholds: {{sft: 1.0, dpo: 1.0, rl: 1.0}}
evaluation: {{test_set: {root}/test.jsonl, bootstrap_rounds: 50, anchor: {{model: weak}}}}
promotion: {{rule: rating_above_incumbent, min_battles: 4}}
iterations: 1
training:
  sft: {{hyperparameters: {{learning_rate: 0.001, num_epochs: 1, {_RECIPE}}}}}
  dpo: {{hyperparameters: {{learning_rate: 0.0005, num_epochs: 1, {_RECIPE}}}}}
  rl:
    hyperparameters: {{learning_rate: 0.0001, num_epochs: 1, {_RECIPE}}}
    rl: {{num_generations: 2, max_completion_length: 8}}
"""
