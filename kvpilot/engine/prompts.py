"""Turning (context, question, answer prefix) into token ids split where compression must stop.

Question-agnostic evaluation compresses only the context: the chat template is rendered once and cut
right after the context, so the question and the start of the answer are appended afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PromptParts:
    context_ids: list[int]
    question_ids: list[int]


def chat_parts(tokenizer, context: str, question: str, answer_prefix: str = "") -> PromptParts:
    """Token ids of the chat-formatted prompt, split after the context."""
    user = f"{context}\n\n{question}" if question else context
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
        )
    else:
        full = user + "\n"
    cut = full.index(context) + len(context)
    head, tail = full[:cut], full[cut:] + answer_prefix
    return PromptParts(_encode(tokenizer, head), _encode(tokenizer, tail))


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
