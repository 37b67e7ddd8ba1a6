"""Format adapters: one source row (a dict) -> one canonical conversation, or `Malformed`.

Formats: OpenAI `messages`, ShareGPT `conversations`, Anthropic hh-rlhf transcripts, Alpaca /
self-instruct, plain prompt, preference pairs (`prompt`/`chosen`/`rejected`) and labelled pairwise
comparisons (Auto-J, AlpacaEval annotations). `detect_format` picks one from a row's keys.
A field of the wrong type is `Malformed` with a detail naming it; text must be valid Unicode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator

from pipeline.ids import conversation_id


class Malformed(ValueError):
    """A row that cannot become a conversation; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "model": "assistant", "bot": "assistant", "claude": "assistant",
    "system": "system",
}
ROLE_KEYS = ("role", "from", "speaker", "author")
CONTENT_KEYS = ("content", "value", "text")
JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
              list: "array", dict: "object"}
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def kind(value: object) -> str:
    """The JSON type name of a decoded value (`string`, `array`, ...), for reason details."""
    return JSON_TYPES.get(type(value), type(value).__name__)


def text(value: object, field: str, max_chars: int) -> str:
    """Content as a non-empty string within the size limit.

    Accepts a string, OpenAI content parts (`[{"type": "text", "text": ...}]`) and the one-field
    wrappers some dumps use (Arena-Hard's `{"answer": ...}`).
    """
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        if any(p.get("type") not in (None, "text") for p in value):
            raise Malformed("non_text_content", f"{field} has non-text parts")
        value = "".join(str(p.get("text", "")) if isinstance(p.get("text"), str) else "\0" for p in value)
        if "\0" in value:
            raise Malformed("non_string_content", f"{field} has a part without text")
    elif isinstance(value, dict):
        inner = [value[k] for k in ("answer", "text", "content") if k in value]
        if len(value) != 1 or len(inner) != 1:
            raise Malformed("non_string_content", f"{field} is an object")
        value = inner[0]
    if value is None:
        raise Malformed("missing_field", field)
    if not isinstance(value, str):
        raise Malformed("non_string_content", f"{field} is {kind(value)}")
    if not value.strip():
        raise Malformed("empty_content", field)
    if len(value) > max_chars:
        raise Malformed("oversize_text", f"{field} has {len(value)} characters (limit {max_chars})")
    if "\x00" in value:
        raise Malformed("nul_in_text", field)
    return value


def require(row: dict, key: str) -> object:
    if key not in row or row[key] is None:
        raise Malformed("missing_field", key)
    return row[key]


def optional_str(row: dict, key: str) -> str | None:
    """An optional string field (a model name): absent or null is None, any other type is malformed."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise Malformed("wrong_type", f"{key} is {kind(value)}, expected a string")
    return value


def check_role_order(messages: list[dict]) -> None:
    """Optional leading system message, then user/assistant alternating from user."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise Malformed("empty_messages", "no user message")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise Malformed("bad_role_order", f"message {i} is {m['role']}, expected {expected}")


def split_prompt(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """(prompt ending with the last user turn, the assistant reply after it or [])."""
    check_role_order(messages)
    if messages[-1]["role"] == "assistant":
        return messages[:-1], [messages[-1]]
    return messages, []


def parse_messages(value: object, field: str, max_chars: int) -> list[dict]:
    """A list of turn objects (role + content under any of the known key names)."""
    if not isinstance(value, list):
        raise Malformed("wrong_type", f"{field} is {kind(value)}, expected an array of messages")
    if not value:
        raise Malformed("empty_messages", field)
    return [parse_turn(m, f"{field}[{i}]", max_chars) for i, m in enumerate(value)]


def parse_turn(turn: object, field: str, max_chars: int) -> dict:
    if not isinstance(turn, dict):
        raise Malformed("wrong_type", f"{field} is {kind(turn)}, expected an object")
    role_key = next((k for k in ROLE_KEYS if k in turn), None)
    content_key = next((k for k in CONTENT_KEYS if k in turn), None)
    if role_key is None or content_key is None:
        raise Malformed("missing_field", f"{field} needs a role and a content")
    raw_role = turn[role_key]
    if not isinstance(raw_role, str):
        raise Malformed("wrong_type", f"{field}.{role_key} is {kind(raw_role)}, expected a string")
    role = ROLE_ALIASES.get(raw_role.lower())
    if role is None:
        raise Malformed("unknown_role", f"{field} role {raw_role!r}")
    return {"role": role, "content": text(turn[content_key], f"{field}.{content_key}", max_chars)}


def parse_prompt(value: object, field: str, max_chars: int) -> list[dict]:
    """A prompt: one user turn given as a string, or a list of messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": text(value, field, max_chars)}]
    return parse_messages(value, field, max_chars)


def response(label: str, content: str, model: str | None = None) -> dict:
    return {"label": label, "content": content, "model": model}


def strings(messages: list[dict], prompt: list[dict], responses: list[dict]
            ) -> Iterator[tuple[str, str]]:
    """(field, value) for every string of a conversation."""
    for name, items in (("messages", messages), ("prompt", prompt), ("responses", responses)):
        for i, item in enumerate(items):
            for key, value in item.items():
                if isinstance(value, str):
                    yield f"{name}[{i}].{key}", value


def check_encodable(fields: Iterable[tuple[str, str]]) -> None:
    """Text must be valid Unicode: a lone surrogate (a JSON `\\ud800` escape) cannot be hashed or
    written to Parquet."""
    for field, value in fields:
        if LONE_SURROGATE.search(value):
            raise Malformed("bad_text", f"lone surrogate in {field}")


def conversation(messages: list[dict], prompt: list[dict], responses: list[dict],
                 metadata: dict) -> dict:
    meta = json.dumps(metadata, ensure_ascii=False, default=str, sort_keys=True)
    check_encodable([*strings(messages, prompt, responses), ("metadata", meta)])
    return {
        "id": conversation_id(prompt, responses),
        "messages": messages,
        "prompt": prompt,
        "responses": responses,
        "metadata": meta,
    }


def rest(row: dict, used: set[str]) -> dict:
    return {k: v for k, v in row.items() if k not in used}


# --- adapters -------------------------------------------------------------------------------

def from_openai(row: dict, max_chars: int) -> dict:
    messages = parse_messages(require(row, "messages"), "messages", max_chars)
    prompt, reply = split_prompt(messages)
    responses = [response("reference", reply[0]["content"], optional_str(row, "model"))] if reply else []
    return conversation(messages, prompt, responses, rest(row, {"messages"}))


def from_sharegpt(row: dict, max_chars: int) -> dict:
    messages = parse_messages(require(row, "conversations"), "conversations", max_chars)
    prompt, reply = split_prompt(messages)
    responses = [response("reference", reply[0]["content"], optional_str(row, "model"))] if reply else []
    return conversation(messages, prompt, responses, rest(row, {"conversations"}))


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_transcript(transcript: str, field: str, max_chars: int) -> list[dict]:
    """`\\n\\nHuman: ... \\n\\nAssistant: ...` -> messages (the final reply may be empty)."""
    if not transcript.startswith("\n\nHuman:"):
        raise Malformed("bad_transcript", f"{field} does not start with '\\n\\nHuman:'")
    parts = HH_TURN.split(transcript)[1:]  # [speaker, text, speaker, text, ...]
    messages = []
    for speaker, body in zip(parts[0::2], parts[1::2]):
        role = "user" if speaker == "Human" else "assistant"
        messages.append({"role": role, "content": body.strip()})
    for i, m in enumerate(messages[:-1]):
        text(m["content"], f"{field} turn {i}", max_chars)
    if len(transcript) > max_chars:
        raise Malformed("oversize_text", f"{field} has {len(transcript)} characters (limit {max_chars})")
    return messages


def from_hh_rlhf(row: dict, max_chars: int) -> dict:
    chosen_t = text(require(row, "chosen"), "chosen", max_chars)
    rejected_t = text(require(row, "rejected"), "rejected", max_chars)
    chosen = parse_hh_transcript(chosen_t, "chosen", max_chars)
    rejected = parse_hh_transcript(rejected_t, "rejected", max_chars)
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise Malformed("bad_transcript", "chosen and rejected must end with an Assistant turn")
    prompt = chosen[:-1]
    if rejected[:-1] != prompt:
        raise Malformed("prompt_mismatch", "chosen and rejected do not share the prompt")
    check_role_order(prompt)
    if prompt[-1]["role"] != "user":
        raise Malformed("bad_role_order", "prompt must end with a Human turn")
    responses = [
        response("chosen", text(chosen[-1]["content"], "chosen reply", max_chars)),
        response("rejected", text(rejected[-1]["content"], "rejected reply", max_chars)),
    ]
    return conversation(chosen, prompt, responses, rest(row, {"chosen", "rejected"}))


def from_alpaca(row: dict, max_chars: int) -> dict:
    instruction = text(require(row, "instruction"), "instruction", max_chars)
    fields, where = row, ""
    if "instances" in row:  # self-instruct: instances[{input, output}]
        instances = row["instances"]
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise Malformed("wrong_type", "instances must be a non-empty array of objects")
        fields, where = instances[0], "instances[0]."
    extra, output = fields.get("input"), fields.get("output")
    if extra is not None and not isinstance(extra, str):
        raise Malformed("non_string_content", f"{where}input is {kind(extra)}")
    user = instruction if not extra or not extra.strip() else f"{instruction}\n\n{extra}"
    if len(user) > max_chars:
        raise Malformed("oversize_text", f"instruction+input has {len(user)} characters")
    prompt = [{"role": "user", "content": user}]
    responses = []
    messages = list(prompt)
    if output is not None and (not isinstance(output, str) or output.strip()):
        out = text(output, f"{where}output", max_chars)
        responses.append(response("reference", out, optional_str(row, "generator")))
        messages.append({"role": "assistant", "content": out})
    return conversation(messages, prompt, responses,
                        rest(row, {"instruction", "input", "output", "instances"}))


PROMPT_KEYS = ("prompt", "question", "query", "instruction")


def from_prompt(row: dict, max_chars: int) -> dict:
    key = next((k for k in PROMPT_KEYS if k in row), "prompt")
    prompt = parse_prompt(require(row, key), key, max_chars)
    prompt, reply = split_prompt(prompt)
    if reply:
        raise Malformed("bad_role_order", f"{key} ends with an assistant message")
    return conversation(list(prompt), prompt, [], rest(row, {key}))


def _reply(value: object, field: str, max_chars: int) -> str:
    """A response given as a string or as a one-assistant-message list."""
    if isinstance(value, list):
        msgs = parse_messages(value, field, max_chars)
        if msgs[-1]["role"] != "assistant":
            raise Malformed("bad_role_order", f"{field} must end with an assistant message")
        return msgs[-1]["content"]
    return text(value, field, max_chars)


def from_pairs(row: dict, max_chars: int) -> dict:
    prompt = parse_prompt(require(row, "prompt"), "prompt", max_chars)
    prompt, reply = split_prompt(prompt)
    if reply:
        raise Malformed("bad_role_order", "prompt ends with an assistant message")
    chosen = _reply(require(row, "chosen"), "chosen", max_chars)
    rejected = _reply(require(row, "rejected"), "rejected", max_chars)
    responses = [response("chosen", chosen, optional_str(row, "chosen_model")),
                 response("rejected", rejected, optional_str(row, "rejected_model"))]
    messages = prompt + [{"role": "assistant", "content": chosen}]
    return conversation(messages, prompt, responses, rest(row, {"prompt", "chosen", "rejected"}))


# Labelled pairwise comparisons: (prompt key, response A key, response B key, label key,
# label -> winner {"a", "b", "tie"}).
PAIRWISE_LAYOUTS = [
    ("prompt", "response 1", "response 2", "label", {0: "a", 1: "b", 2: "tie"}),  # Auto-J
    ("instruction", "output_1", "output_2", "preference", {1: "a", 2: "b", 0: "tie"}),  # AlpacaEval
]


def from_pairwise_labelled(row: dict, max_chars: int) -> dict:
    for pkey, akey, bkey, lkey, labels in PAIRWISE_LAYOUTS:
        if pkey in row and akey in row and bkey in row:
            break
    else:
        raise Malformed("missing_field", "expected prompt/response 1/response 2/label "
                        "or instruction/output_1/output_2/preference")
    prompt_text = text(require(row, pkey), pkey, max_chars)
    a = text(row[akey], akey, max_chars)
    b = text(row[bkey], bkey, max_chars)
    label = require(row, lkey)
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    winner = labels.get(label) if isinstance(label, int) and not isinstance(label, bool) else None
    if winner is None:
        raise Malformed("bad_label", f"{lkey}={label!r}")
    if winner == "tie":
        responses = [response("tie", a), response("tie", b)]
    else:
        first, second = (a, b) if winner == "a" else (b, a)
        responses = [response("chosen", first), response("rejected", second)]
    prompt = [{"role": "user", "content": prompt_text}]
    meta = rest(row, {pkey, akey, bkey})
    return conversation(prompt + [{"role": "assistant", "content": a}], prompt, responses, meta)


ADAPTERS: dict[str, Callable[[dict, int], dict]] = {
    "openai": from_openai,
    "sharegpt": from_sharegpt,
    "hh_rlhf": from_hh_rlhf,
    "alpaca": from_alpaca,
    "prompt": from_prompt,
    "pairs": from_pairs,
    "pairwise_labelled": from_pairwise_labelled,
}


def detect_format(row: dict) -> str:
    """Pick an adapter from a row's keys; raise Malformed when none fits."""
    keys = set(row)
    if "messages" in keys:
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if any(all(k in keys for k in layout[:3]) for layout in PAIRWISE_LAYOUTS):
        return "pairwise_labelled"
    if {"chosen", "rejected"} <= keys:
        return "pairs" if "prompt" in keys else "hh_rlhf"
    if "instruction" in keys and ({"output", "input", "instances"} & keys):
        return "alpaca"
    if keys & set(PROMPT_KEYS):
        return "prompt"
    raise Malformed("unknown_format", f"no adapter fits keys {sorted(keys)[:10]}")


def adapt(row: object, fmt: str, max_chars: int) -> tuple[str, dict]:
    """(format used, conversation) for one decoded row."""
    if not isinstance(row, dict):
        raise Malformed("not_an_object", f"row is {type(row).__name__}")
    used = detect_format(row) if fmt == "auto" else fmt
    return used, ADAPTERS[used](row, max_chars)
