"""A model's tokenizer and chat template, read from the files a checkpoint ships.

Uses the `tokenizers` library directly (no transformers import at run time) and renders
chat templates with a sandboxed Jinja environment configured like Hugging Face's.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _HFTokenizer


class TokenizerError(Exception):
    pass


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, path: Path):
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.exists():
            raise TokenizerError(f"{tokenizer_file} is missing")
        try:
            self._tok = _HFTokenizer.from_file(str(tokenizer_file))
        except Exception as e:
            raise TokenizerError(f"{tokenizer_file}: cannot be read ({e})") from None
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        template_file = path / "chat_template.jinja"
        self.chat_template: str | None = config.get("chat_template")
        if template_file.exists():
            self.chat_template = template_file.read_text()
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self._template = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise TokenizerError("this model has no chat template; use a plain completion")
        if self._template is None:
            self._template = _jinja_env().from_string(self.chat_template)
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        # The template already writes any special tokens it wants.
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)


def _raise(message: str):
    raise TokenizerError(f"chat template: {message}")


def _jinja_env() -> jinja2.Environment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
