"""Judge prompt templates: the project's own built-ins, and loaders for the public file formats.

Templates are data. Operators point the service at FastChat's `judge_prompts.jsonl` or at an
Arena-Hard judge config YAML and every template in them becomes available by id; no third-party
prompt text lives in this code. The built-ins below are the project's own wording.

Placeholders follow each format's convention, because the same name means different things:
FastChat's `{answer_1}` is turn 1 of a single answer, Arena-Hard's is assistant A's answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import yaml

from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_judge.domain.parsing import DEFAULT_ARENA_HARD_PATTERNS
from arena_judge.domain.verdicts import Message, Protocol


class TemplateFormat(IntEnum):
    FASTCHAT_JSONL = 1
    ARENA_HARD_YAML = 2
    BUILTIN = 3


@dataclass(frozen=True)
class Template:
    template_id: str
    protocol: Protocol
    format: TemplateFormat
    system_prompt: str
    prompt_template: str
    source_uri: str = "builtin"
    description: str = ""
    # Arena-Hard verdict regexes, tried in order.
    verdict_patterns: tuple[str, ...] = ()
    # Score range the parser accepts (difficulty is 0-10, grades 1-10).
    score_range: tuple[float, float] = (1.0, 10.0)
    fields: frozenset[str] = field(default_factory=frozenset)

    @property
    def needs_reference(self) -> bool:
        return bool(self.fields & {"ref_answer_1", "ref_answer_2", "reference"})

    @property
    def multi_turn(self) -> bool:
        return bool(self.fields & {"question_2", "answer_a_2", "answer_2"}) and (
            self.format is TemplateFormat.FASTCHAT_JSONL
        )


def _fields(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})", text))


def make_template(**kwargs: Any) -> Template:
    """A template whose placeholder set is read from its text."""
    return Template(**kwargs, fields=_fields(str(kwargs["prompt_template"])))


# --- The project's own prompts ------------------------------------------------------------------

_JUDGE_PERSONA = (
    "You are a careful, impartial evaluator of AI assistant replies. Judge only the content: the "
    "order in which replies are shown, their length and the names of the assistants must not "
    "influence you."
)

_PAIRWISE_SCORE = """Below is a conversation between a user and an AI assistant, followed by two \
candidate replies to the user's latest message.

### Earlier turns
{history}

### Latest user message
{question}

### Reply A
{answer_a}
### End of reply A

### Reply B
{answer_b}
### End of reply B

Score each reply on its own from 1 (useless) to 10 (excellent). Weigh coherence, factual \
accuracy, awareness of the conversation so far, and overall quality as a reply to the latest \
message. Give a short explanation that compares the two replies on those points, then end with \
this line and nothing after it:
Scores: [[A=<score of reply A>, B=<score of reply B>]]"""

_FIVE_LEVEL_SYSTEM = (
    _JUDGE_PERSONA
    + " First write your own answer to the user's request, then compare both replies with it, "
    "pointing out mistakes, missing information and unnecessary content. Finish with a verdict "
    "on its own line, one of: [[A>>B]] (A is much better), [[A>B]] (A is better), [[A=B]] "
    "(about the same), [[B>A]] (B is better), [[B>>A]] (B is much better)."
)

_FIVE_LEVEL = """### User request
{question}

### Reply A
{answer_a}
### End of reply A

### Reply B
{answer_b}
### End of reply B"""

_PAIR_ABC_SYSTEM = (
    _JUDGE_PERSONA
    + " Decide which of two replies answers the user's request better. Explain briefly, then "
    "give your verdict as [[A]] if reply A is better, [[B]] if reply B is better, or [[C]] for a "
    "tie."
)

_PAIR_ABC = _FIVE_LEVEL

_PAIR_ABC_REF = """### User request
{question}

### Reference answer (known to be correct)
{reference}
### End of reference answer

### Reply A
{answer_a}
### End of reply A

### Reply B
{answer_b}
### End of reply B"""

_SINGLE_SYSTEM = (
    _JUDGE_PERSONA
    + " Grade one reply from 1 (useless) to 10 (excellent) for helpfulness, correctness and "
    "clarity. Explain briefly, then give the grade as [[<grade>]], for example [[6]]."
)

_SINGLE = """### User request
{question}

### Reply
{answer}
### End of reply"""

_SINGLE_REF = """### User request
{question}

### Reference answer (known to be correct)
{reference}
### End of reference answer

### Reply
{answer}
### End of reply"""

_DIFFICULTY_SYSTEM = (
    "You rate how hard an instruction is for an AI assistant to answer well, from 0 (trivial) to "
    "10 (needs expert knowledge, long reasoning or precise creative control). Explain briefly, "
    "then give the rating as [[<rating>]]."
)

_DIFFICULTY = """### Instruction
{question}"""


def builtin_templates() -> list[Template]:
    return [
        make_template(
            template_id="arena-pairwise-v1",
            protocol=Protocol.PAIRWISE_SCORE,
            format=TemplateFormat.BUILTIN,
            system_prompt=_JUDGE_PERSONA,
            prompt_template=_PAIRWISE_SCORE,
            description="Arena Learning judge: a 1-10 score per reply with an explanation.",
        ),
        make_template(
            template_id="arena-five-level-v1",
            protocol=Protocol.ARENA_HARD,
            format=TemplateFormat.BUILTIN,
            system_prompt=_FIVE_LEVEL_SYSTEM,
            prompt_template=_FIVE_LEVEL,
            verdict_patterns=DEFAULT_ARENA_HARD_PATTERNS,
            description="Five-level verdict after the judge answers the request itself.",
        ),
        make_template(
            template_id="pairwise-abc-v1",
            protocol=Protocol.MT_BENCH_PAIRWISE,
            format=TemplateFormat.BUILTIN,
            system_prompt=_PAIR_ABC_SYSTEM,
            prompt_template=_PAIR_ABC,
            description="A, B or tie.",
        ),
        make_template(
            template_id="pairwise-abc-ref-v1",
            protocol=Protocol.MT_BENCH_PAIRWISE,
            format=TemplateFormat.BUILTIN,
            system_prompt=_PAIR_ABC_SYSTEM,
            prompt_template=_PAIR_ABC_REF,
            description="A, B or tie, against a reference answer.",
        ),
        make_template(
            template_id="single-grade-v1",
            protocol=Protocol.MT_BENCH_SINGLE,
            format=TemplateFormat.BUILTIN,
            system_prompt=_SINGLE_SYSTEM,
            prompt_template=_SINGLE,
            description="One reply graded 1-10.",
        ),
        make_template(
            template_id="single-grade-ref-v1",
            protocol=Protocol.MT_BENCH_SINGLE,
            format=TemplateFormat.BUILTIN,
            system_prompt=_SINGLE_SYSTEM,
            prompt_template=_SINGLE_REF,
            description="One reply graded 1-10 against a reference answer.",
        ),
        make_template(
            template_id="difficulty-v1",
            protocol=Protocol.DIFFICULTY,
            format=TemplateFormat.BUILTIN,
            system_prompt=_DIFFICULTY_SYSTEM,
            prompt_template=_DIFFICULTY,
            score_range=(0.0, 10.0),
            description="Instruction difficulty 0-10 (WizardArena's Hard subset).",
        ),
    ]


DEFAULT_TEMPLATE = {
    Protocol.PAIRWISE_SCORE: "arena-pairwise-v1",
    Protocol.ARENA_HARD: "arena-five-level-v1",
    Protocol.MT_BENCH_PAIRWISE: "pairwise-abc-v1",
    Protocol.MT_BENCH_SINGLE: "single-grade-v1",
    Protocol.DIFFICULTY: "difficulty-v1",
}
# With a reference answer, the default switches to the reference-guided variant.
DEFAULT_REFERENCE_TEMPLATE = {
    Protocol.MT_BENCH_PAIRWISE: "pairwise-abc-ref-v1",
    Protocol.MT_BENCH_SINGLE: "single-grade-ref-v1",
}


# --- Loaders ------------------------------------------------------------------------------------

_FASTCHAT_TYPES = {"pairwise": Protocol.MT_BENCH_PAIRWISE, "single": Protocol.MT_BENCH_SINGLE}


def load_fastchat_jsonl(path: Path) -> list[Template]:
    """FastChat `judge_prompts.jsonl`: name, type (pairwise or single), system_prompt and
    prompt_template per line."""
    templates = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"invalid JSON ({error})", where=where) from None
        if not isinstance(record, dict):
            raise InvalidArgumentError("a template must be a JSON object", where=where)
        for key in ("name", "type", "prompt_template"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise InvalidArgumentError(f"field {key!r} must be a non-empty string", where=where)
        protocol = _FASTCHAT_TYPES.get(record["type"])
        if protocol is None:
            raise InvalidArgumentError(
                f"field 'type' must be one of {sorted(_FASTCHAT_TYPES)}, got {record['type']!r}",
                where=where,
            )
        templates.append(
            make_template(
                template_id=record["name"],
                protocol=protocol,
                format=TemplateFormat.FASTCHAT_JSONL,
                system_prompt=str(record.get("system_prompt") or ""),
                prompt_template=record["prompt_template"],
                source_uri=str(path),
                description=str(record.get("description") or ""),
            )
        )
    return templates


def load_arena_hard_yaml(path: Path, template_id: str | None = None) -> Template:
    """An Arena-Hard judge config: `prompt_template` (a string, or a list whose first entry is the
    template), `system_prompt` (optional: the project's five-level instructions stand in), and the
    verdict regex as `regex_pattern` or `regex_patterns`."""
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InvalidArgumentError(f"invalid YAML ({error})", where=str(path)) from None
    if not isinstance(config, dict):
        raise InvalidArgumentError("a judge config must be a YAML mapping", where=str(path))
    prompt = config.get("prompt_template")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidArgumentError(
            "field 'prompt_template' must be a string or a list of strings", where=str(path)
        )
    patterns = config.get("regex_patterns") or config.get("regex_pattern") or []
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise InvalidArgumentError(
            "field 'regex_patterns' must be a list of regexes", where=str(path)
        )
    for pattern in patterns:
        try:
            if re.compile(pattern).groups < 1:
                raise InvalidArgumentError(
                    f"verdict regex {pattern!r} needs one capture group", where=str(path)
                )
        except re.error as error:
            raise InvalidArgumentError(
                f"invalid verdict regex {pattern!r} ({error})", where=str(path)
            ) from None
    system = config.get("system_prompt")
    description = f"Arena-Hard judge config for {config.get('judge_model', 'any judge')}"
    if not isinstance(system, str) or not system:
        system = _FIVE_LEVEL_SYSTEM
        description += " (no system_prompt in the file: the project's five-level instructions)"
    name = template_id or str(config.get("bench_name") or path.stem)
    return make_template(
        template_id=name,
        protocol=Protocol.ARENA_HARD,
        format=TemplateFormat.ARENA_HARD_YAML,
        system_prompt=system,
        prompt_template=prompt,
        source_uri=str(path),
        description=description,
        verdict_patterns=tuple(patterns) or DEFAULT_ARENA_HARD_PATTERNS,
    )


def load_template_files(paths: Iterable[Path]) -> list[Template]:
    """Every template in the given files or folders (`*.jsonl` FastChat, `*.yaml` Arena-Hard)."""
    templates: list[Template] = []
    for path in paths:
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix in (".jsonl", ".yaml", ".yml") and p.is_file()
            )
        elif path.is_file():
            files = [path]
        else:
            raise InvalidArgumentError("no such template file or folder", where=str(path))
        for file in files:
            if file.suffix == ".jsonl":
                templates.extend(load_fastchat_jsonl(file))
            elif file.suffix in (".yaml", ".yml"):
                templates.append(load_arena_hard_yaml(file))
            else:
                raise InvalidArgumentError(
                    "template files end in .jsonl (FastChat) or .yaml (Arena-Hard)", where=str(file)
                )
    return templates


class TemplateCatalog:
    """Templates by id: the built-ins, then files (a file may override a built-in id)."""

    def __init__(self, templates: Iterable[Template] = ()) -> None:
        self._templates: dict[str, Template] = {t.template_id: t for t in builtin_templates()}
        for template in templates:
            self._templates[template.template_id] = template

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> TemplateCatalog:
        return cls(load_template_files(paths))

    def all(self, protocol: Protocol | None = None) -> list[Template]:
        return sorted(
            (t for t in self._templates.values() if protocol is None or t.protocol is protocol),
            key=lambda t: t.template_id,
        )

    def resolve(
        self, template_id: str, protocol: Protocol, has_reference: bool = False
    ) -> Template:
        """The named template, or the protocol's default when the id is empty."""
        if not template_id:
            defaults = DEFAULT_REFERENCE_TEMPLATE if has_reference else DEFAULT_TEMPLATE
            template_id = defaults.get(protocol) or DEFAULT_TEMPLATE.get(protocol, "")
            if not template_id:
                raise InvalidArgumentError(
                    f"protocol {protocol.name} uses no template", where="judge.template_id"
                )
        template = self._templates.get(template_id)
        if template is None:
            known = ", ".join(sorted(self._templates))
            raise NotFoundError(f"judge template {template_id!r} is not loaded (known: {known})")
        if template.protocol is not protocol:
            raise InvalidArgumentError(
                f"template {template_id!r} is for {template.protocol.name}, not {protocol.name}",
                where="judge.template_id",
            )
        return template


# --- Rendering ----------------------------------------------------------------------------------


def render(
    template: Template,
    dialogue: Sequence[Message],
    first: str | None,
    second: str | None = None,
    reference: str | None = None,
) -> list[Message]:
    """The judge's chat: the system prompt (if any) and one user message.

    `first` and `second` are the answers in presentation order; single-answer templates use only
    `first`, and the difficulty template neither.
    """
    if not any(m.role == "user" for m in dialogue):
        raise InvalidArgumentError("the prompt has no user message", where="item.prompt")
    if template.needs_reference and reference is None:
        raise InvalidArgumentError(
            f"template {template.template_id!r} needs a reference answer",
            where="item.reference_answer",
        )
    values = _values(template, dialogue, first or "", second or "", reference)
    missing = sorted(template.fields - values.keys())
    if missing:
        raise InvalidArgumentError(
            f"template {template.template_id!r} uses unknown placeholders {missing}",
            where=template.source_uri,
        )
    content = template.prompt_template.format_map(values)
    messages = [Message("system", template.system_prompt)] if template.system_prompt else []
    messages.append(Message("user", content))
    return messages


def _values(
    template: Template,
    dialogue: Sequence[Message],
    first: str,
    second: str,
    reference: str | None,
) -> dict[str, str]:
    turns = [m for m in dialogue if m.role in ("user", "assistant")]
    last_user = max(i for i, m in enumerate(turns) if m.role == "user")
    question = turns[last_user].content
    history = turns[:last_user]
    context = "\n\n".join(f"### {m.role.title()}:\n{m.content}" for m in history)
    # Single-turn templates still see earlier turns: they are prepended to the question.
    full_question = f"{context}\n\n### User:\n{question}" if context else question
    ref = reference or ""
    if template.format is TemplateFormat.BUILTIN:
        return {
            "history": context or "(none: this is the first message)",
            "question": full_question
            if template.protocol is not Protocol.PAIRWISE_SCORE
            else question,
            "answer_a": first,
            "answer_b": second,
            "answer": first,
            "reference": ref,
        }
    if template.format is TemplateFormat.ARENA_HARD_YAML:
        return {
            "question_1": full_question,
            "QUESTION": full_question,
            "answer_1": first,
            "answer_2": second,
            "ANSWER_A": first,
            "ANSWER_B": second,
            "ref_answer_1": ref,
            "REFERENCE": ref,
        }
    values = {
        "question": full_question,
        "answer_a": first,
        "answer_b": second,
        "answer": first,
        "ref_answer_1": ref,
    }
    if template.multi_turn:
        values.update(_multi_turn_values(turns, first, second, reference))
    return values


def _multi_turn_values(
    turns: Sequence[Message], first: str, second: str, reference: str | None
) -> Mapping[str, str]:
    """FastChat multi-turn placeholders: question_i, answer_{a,b}_i, answer_i, ref_answer_i.

    Earlier assistant turns are the shared history; the last turn is each candidate's answer. A
    reference may be a JSON list with one entry per user turn, else it is the last turn's.
    """
    users = [m.content for m in turns if m.role == "user"]
    assistants = [m.content for m in turns if m.role == "assistant"]
    n = len(users)
    if len(assistants) < n - 1:
        raise InvalidArgumentError(
            "a multi-turn template needs an assistant reply between user turns", where="item.prompt"
        )
    refs = [""] * (n - 1) + [reference or ""]
    if reference and reference.lstrip().startswith("["):
        try:
            decoded = json.loads(reference)
        except json.JSONDecodeError:
            decoded = None
        if (
            isinstance(decoded, list)
            and len(decoded) == n
            and all(isinstance(r, str) for r in decoded)
        ):
            refs = decoded
    values: dict[str, str] = {}
    for i in range(n):
        k = i + 1
        last = i == n - 1
        values[f"question_{k}"] = users[i]
        values[f"answer_a_{k}"] = first if last else assistants[i]
        values[f"answer_b_{k}"] = second if last else assistants[i]
        values[f"answer_{k}"] = first if last else assistants[i]
        values[f"ref_answer_{k}"] = refs[i]
    return values
