"""`arena demo`'s machine-learning kit: verifiable tasks, tiny models, warm-up runs and the
flywheel spec of a whole Arena Learning flywheel that runs on a CPU in minutes."""

from arena_cli.demo.warmup import (
    DEFAULT_DESIGN,
    DemoAssets,
    DemoDesign,
    WarmupRun,
    build_demo_assets,
    demo_spec,
    demo_spec_yaml,
    sft_rows,
    stage_recipes,
)

__all__ = [
    "DEFAULT_DESIGN",
    "DemoAssets",
    "DemoDesign",
    "WarmupRun",
    "build_demo_assets",
    "demo_spec",
    "demo_spec_yaml",
    "sft_rows",
    "stage_recipes",
]
