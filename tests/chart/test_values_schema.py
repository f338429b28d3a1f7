"""values.schema.json rejects wrong values with a message that names the field."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.chart.support import CHART


def render_error(check_chart: ModuleType, helm: Path, tmp_path: Path, values: str) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    with pytest.raises(check_chart.CheckError) as caught:
        check_chart.render(helm, CHART, [path])
    return str(caught.value)


def test_wrong_type_names_the_field(check_chart: ModuleType, helm: Path, tmp_path: Path) -> None:
    message = render_error(
        check_chart, helm, tmp_path, "components:\n  judge:\n    replicas: two\n"
    )
    assert "values don't meet the specifications of the schema" in message
    assert "/components/judge/replicas" in message
    assert "got string, want integer" in message


def test_unknown_component_is_named(check_chart: ModuleType, helm: Path, tmp_path: Path) -> None:
    message = render_error(check_chart, helm, tmp_path, "components:\n  juge:\n    replicas: 2\n")
    assert "/components" in message
    assert "additional properties 'juge' not allowed" in message


def test_lint_fails_on_a_bad_values_file(
    check_chart: ModuleType, helm: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nats:\n  mode: clustered\n")
    with pytest.raises(check_chart.CheckError, match="/nats/mode"):
        check_chart.lint(helm, CHART, [path])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # GPUs only for inference and training.
        ("components:\n  judge:\n    gpu:\n      count: 1\n", "/components/judge/gpu/count"),
        ("defaults:\n  gpu:\n    count: 1\n", "/defaults/gpu/count"),
        # Settings mirror field names; env-style keys are a mistake.
        ("components:\n  judge:\n    settings:\n      LOG__LEVEL: DEBUG\n", "LOG__LEVEL"),
        # A secret is a reference, never a value.
        (
            "components:\n  judge:\n    secrets:\n      judge:\n        api_key: sk-123\n",
            "/components/judge/secrets/judge/api_key",
        ),
        ("nats:\n  mode: external\n", "/nats/external/url"),
        ("nats:\n  bundled:\n    replicas: 2\n", "/nats/bundled/replicas"),
        (
            "components:\n  inference:\n    models:\n      - name: Bad_Name\n",
            "/components/inference/models/0/name",
        ),
        ("components:\n  rating:\n    models: []\n", "/components/rating/models"),
        ("components:\n  judge:\n    image:\n      tagg: v1\n", "additional properties 'tagg'"),
    ],
)
def test_schema_rejects(
    check_chart: ModuleType, helm: Path, tmp_path: Path, values: str, expected: str
) -> None:
    assert expected in render_error(check_chart, helm, tmp_path, values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            "components:\n  judge:\n    settings:\n      grpc:\n        port: 6000\n",
            "components.judge: ARENA_GRPC__PORT is set by the chart",
        ),
        (
            "components:\n  judge:\n    settings:\n      nats:\n        url: nats://x:4222\n",
            "components.judge: ARENA_NATS__URL is set by the chart",
        ),
        (
            "components:\n  judge:\n    settings:\n      grpc:\n        grace_seconds: 60\n",
            "terminationGracePeriodSeconds 45 must cover",
        ),
        (
            "components:\n  inference:\n    models:\n      - name: a\n      - name: a\n",
            'the name "a" is declared twice',
        ),
        (
            "components:\n  judge:\n    autoscaling:\n      enabled: true\n    keda:\n"
            "      enabled: true\n",
            "enable autoscaling or keda, not both",
        ),
        ("nats:\n  auth:\n    creds:\n      existingSecret: c\n", "need an operator-mode NATS"),
    ],
)
def test_template_checks_fail_clearly(
    check_chart: ModuleType, helm: Path, tmp_path: Path, values: str, expected: str
) -> None:
    assert expected in render_error(check_chart, helm, tmp_path, values)
