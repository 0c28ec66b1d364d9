"""Prompt templates: a plain ``{prompt}`` template, and chat templates through a tokenizer.

Kept free of transformers: :func:`apply_chat_template` accepts any object with a Hugging Face style
``apply_chat_template(messages, add_generation_prompt=..., tokenize=...)`` method.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["ChatTokenizer", "format_prompt", "validate_template", "apply_chat_template"]


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> Any: ...


def validate_template(template: str) -> str:
    """Return ``template`` if it contains ``{prompt}``; otherwise raise a ValueError saying so."""
    if not isinstance(template, str) or "{prompt}" not in template:
        raise ValueError(
            f"prompt template {template!r} must be a string containing '{{prompt}}' "
            "(e.g. 'Solve: {prompt}\\nPut the final answer in \\\\boxed{{}}.')"
        )
    return template


def format_prompt(template: str | None, prompt: str) -> str:
    """Substitute ``prompt`` for every ``{prompt}`` in ``template`` (None: the prompt unchanged).

    Only ``{prompt}`` is replaced, literally, so other braces (``\\boxed{}``) need no escaping.
    """
    if template is None:
        return prompt
    return validate_template(template).replace("{prompt}", prompt)


def apply_chat_template(
    tokenizer: ChatTokenizer, prompt: str, system: str | None = None, options: dict[str, Any] | None = None
) -> str:
    """The text a chat model should continue: system (optional) + user ``prompt`` + generation prompt;
    ``options``: keyword arguments the template reads (Qwen3's ``enable_thinking``)."""
    if not hasattr(tokenizer, "apply_chat_template"):
        raise TypeError(
            f"{type(tokenizer).__name__} has no apply_chat_template method; "
            "pass a tokenizer with a chat template or use a plain prompt template"
        )
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **(options or {})
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text
