"""Turning chat messages into token ids, identically for every engine.

Models with a chat template use it (`add_generation_prompt=True` for the prompt). Models without
one (base models such as Gemma 3 270M) use the plain format

    {system}\\n\\n            (only when there is a system prompt)
    User: {content}\\n
    Assistant: {content}\\n
    ...
    Assistant:{space}

with `<bos>` prepended when the tokenizer adds it. A response is tokenised on its own (no special
tokens) and appended to the prompt ids, so a scored response is exactly the token sequence that a
generation of it would have produced; the end-of-turn token is not scored.
"""

from __future__ import annotations

from collections.abc import Sequence

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_STOP = ("\nUser:",)  # a base model continues the dialogue; stop it at the next user turn


def message_tuples(messages: Sequence[dict]) -> tuple[tuple[str, str], ...]:
    """Table messages (`{"role", "content"}` rows) as the hashable tuples engine requests take."""
    return tuple((m["role"], m["content"]) for m in messages)


def last_user_turn(messages: Sequence[dict]) -> str:
    """The content of the last user message ('' when there is none)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def message_dicts(messages: Sequence[tuple[str, str]], system: str | None = None) -> list[dict]:
    out = [{"role": "system", "content": system}] if system else []
    out += [{"role": role, "content": content} for role, content in messages]
    return out


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _plain_text(messages: list[dict], add_generation_prompt: bool) -> str:
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        else:
            parts.append(f"{PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}\n")
    if add_generation_prompt:
        parts.append("Assistant: ")
    return "".join(parts)


def prompt_text(tokenizer, messages: Sequence[tuple[str, str]], system: str | None = None) -> str:
    """The prompt as text (chat template or plain format), ready for the assistant's reply."""
    msgs = message_dicts(messages, system)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return _plain_text(msgs, add_generation_prompt=True)


def _bos(tokenizer) -> list[int]:
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        return [tokenizer.bos_token_id]
    return []


def prompt_ids(tokenizer, messages: Sequence[tuple[str, str]], system: str | None = None) -> list[int]:
    """Token ids of the prompt. Chat templates carry their own special tokens (no extra BOS); the
    plain format gets the tokenizer's BOS when it adds one."""
    text = prompt_text(tokenizer, messages, system)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if has_chat_template(tokenizer):
        return ids
    return _bos(tokenizer) + ids


def response_ids(tokenizer, response: str) -> list[int]:
    return tokenizer.encode(response, add_special_tokens=False)


def scoring_ids(tokenizer, messages: Sequence[tuple[str, str]], response: str,
                system: str | None = None) -> tuple[list[int], int]:
    """(prompt + response token ids, number of prompt tokens): the response tokens are scored."""
    p = prompt_ids(tokenizer, messages, system)
    return p + response_ids(tokenizer, response), len(p)


def conversation_ids(tokenizer, messages: Sequence[tuple[str, str]], response: str,
                     system: str | None = None) -> list[int]:
    """The whole conversation including the reply and its end-of-turn (reward models read this)."""
    msgs = message_dicts(messages, system) + [{"role": "assistant", "content": response}]
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)
    return _bos(tokenizer) + tokenizer.encode(_plain_text(msgs, False), add_special_tokens=False)
