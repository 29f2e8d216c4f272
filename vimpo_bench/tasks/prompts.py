"""Prompt templates for the math benchmarks; the template is part of every eval run's record.

- `qwen-boxed` (default): the Qwen2.5-Math chain-of-thought protocol. With a chat template, the
  instruction "Please reason step by step, and put your final answer within \\boxed{}." is the
  system message and the problem the user turn (instruction appended to the user turn when the chat
  template has no system role); without one, the problem followed by the instruction on a new line.
- `r1`: the DeepSeek-R1-Zero style conversation in plain text (no chat template: it is meant for
  base models): reasoning in <think>, the answer boxed inside <answer>, generation starts in <think>.
- `plain`: the problem text as is (no instruction, no chat template). The `arith` suite always uses
  it: its tiny character-level model was trained on raw questions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

QWEN_BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# Our wording of the R1-Zero protocol (a user/assistant exchange with think and answer tags).
R1_TEMPLATE = (
    "A conversation between User and Assistant. The User poses a math problem and the Assistant "
    "solves it. The Assistant first reasons through the problem privately, then gives the User the "
    "final answer. The reasoning goes between <think> and </think> and the final answer, written as "
    "\\boxed{{...}}, between <answer> and </answer>.\n"
    "User: {question}\n"
    "Assistant: <think>"
)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    description: str


TEMPLATES: dict[str, PromptTemplate] = {
    "qwen-boxed": PromptTemplate(
        "qwen-boxed", "Qwen2.5-Math CoT: boxed-answer instruction, chat template when present"
    ),
    "r1": PromptTemplate("r1", "DeepSeek-R1-Zero style plain-text conversation with <think>/<answer> tags"),
    "plain": PromptTemplate("plain", "the problem text only"),
}
DEFAULT_TEMPLATE = "qwen-boxed"


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; valid templates: {', '.join(TEMPLATES)}")
    return name


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False


def _chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render(template: str, question: str, tokenizer: Any = None) -> str:
    """The full prompt text for `question` under `template` (chat template from `tokenizer`, if any)."""
    check_template(template)
    if template == "plain":
        return question
    if template == "r1":
        return R1_TEMPLATE.format(question=question)
    if has_chat_template(tokenizer):
        try:
            return _chat(
                tokenizer,
                [
                    {"role": "system", "content": QWEN_BOXED_INSTRUCTION},
                    {"role": "user", "content": question},
                ],
            )
        except Exception:  # templates without a system role (they raise): instruction in the user turn
            return _chat(tokenizer, [{"role": "user", "content": f"{question}\n{QWEN_BOXED_INSTRUCTION}"}])
    return f"{question}\n{QWEN_BOXED_INSTRUCTION}"


def describe(template: str, tokenizer: Any = None) -> dict[str, Any]:
    """What to record with a run: the template, whether a chat template wrapped it (and which, by
    hash), and the rendering of a placeholder question so the exact format can be read back."""
    check_template(template)
    uses_chat = template == "qwen-boxed" and has_chat_template(tokenizer)
    record: dict[str, Any] = {
        "name": template,
        "description": TEMPLATES[template].description,
        "chat_template": uses_chat,
        "example": render(template, "{question}", tokenizer),
    }
    if uses_chat:
        record["chat_template_sha256"] = hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()
    return record
