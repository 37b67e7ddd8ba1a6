"""Judge prompt templates: packaged Jinja files, or the user's own (Jinja or plain format strings).

Data shown to a judge (the conversation, each response, a reference) is wrapped in tags by the
`fence` filter, which also neutralises anything inside the data that could pass for a tag or a
verdict marker, so a response cannot close its own block or hand the judge a ready-made verdict.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

PACKAGED = Path(__file__).resolve().parent / "templates"
_TAG = re.compile(r"<(/?)(conversation|response|reference)", re.IGNORECASE)


def neutralise(text: str) -> str:
    """Data text that cannot close or open a fence block nor contain a `[[...]]` verdict marker."""
    text = _TAG.sub(lambda m: f"<{m.group(1)}\u200b{m.group(2)}", text)
    return text.replace("[[", "[ [").replace("]]", "] ]")


def fence(text: str, tag: str) -> str:
    return f"<{tag}>\n{neutralise(text)}\n</{tag}>"


def render_conversation(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)


class Template:
    """A prompt template file; `.jinja`/`.j2` are Jinja (with `fence`), anything else is a Python
    format string whose fields receive data already fenced."""

    def __init__(self, path: Path):
        self.path = Path(path)
        source = self.path.read_text(encoding="utf-8")
        self.jinja = self.path.suffix in (".jinja", ".j2")
        if self.jinja:
            env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                       keep_trailing_newline=False)
            env.filters["fence"] = fence
            self._template = env.from_string(source)
        else:
            self._source = source

    def render(self, data: dict[str, str | None], **options) -> str:
        if self.jinja:
            return self._template.render(**data, **options).strip()
        fenced = {k: (fence(v, k) if v is not None else "") for k, v in data.items()}
        return self._source.format(**fenced, **options).strip()


@lru_cache(maxsize=32)
def load_template(kind: str, path: str | None = None) -> Template:
    """The recipe's template for `kind` (pointwise | pairwise), or the packaged default."""
    return Template(Path(path) if path else PACKAGED / f"{kind}.jinja")
