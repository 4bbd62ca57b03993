"""The catalog models this gateway serves: tokenizer, chat template, context window and SLO class of each."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import jinja2

from services.gateway.errors import api_error, invalid
from services.gateway.openai_schema import GenerationSpec
from services.gateway.schema_inputs import Prompt
from shared.catalog import Catalog, ModelEntry, SloClass
from shared.tokenizer import Tokenizer, TokenizerError


class ModelSetupError(RuntimeError):
    """A catalog model the gateway cannot serve (missing or broken files)."""


@dataclass
class ServedModel:
    entry: ModelEntry
    tokenizer: Tokenizer
    context_window: int
    """The model's max_position_embeddings, capped by the catalog's context_length."""
    slo: SloClass
    """The TTFT and TBT objectives its requests are measured against."""
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.entry.name

    def prompt_ids(self, spec: GenerationSpec) -> list[tuple[int, ...]]:
        """The token ids of each prompt (chat: the one rendered conversation)."""
        if spec.messages is not None:
            try:
                return [tuple(self.tokenizer.encode_chat(list(spec.messages)))]
            except (TokenizerError, jinja2.TemplateError) as e:
                raise invalid(f"model {self.name!r} cannot render these messages: {e}", "messages") from None
        many = len(spec.prompts) > 1
        return [self._completion_ids(f"prompt[{i}]" if many else "prompt", p) for i, p in enumerate(spec.prompts)]

    def _completion_ids(self, where: str, prompt: Prompt) -> tuple[int, ...]:
        if isinstance(prompt, str):
            return tuple(self.tokenizer.encode(prompt))
        vocab = self.tokenizer.vocab_size
        outside = [t for t in prompt if t >= vocab]
        if outside:
            raise invalid(f"'{where}' token ids {outside[:5]} are outside the vocabulary [0, {vocab})", "prompt")
        return prompt

    def check_logit_bias(self, logit_bias: tuple[tuple[int, float], ...]) -> None:
        vocab = self.tokenizer.vocab_size
        outside = [t for t, _ in logit_bias if t >= vocab]
        if outside:
            raise invalid(
                f"'logit_bias' key '{outside[0]}' is outside the vocabulary of model {self.name!r} [0, {vocab})",
                "logit_bias",
            )

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt as completions' echo shows it: token ids decoded, special tokens and all."""
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(list(prompt), skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:  # top logprobs ask for up to 20 of these a token: decode each id once
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text


def load_models(catalog: Catalog) -> dict[str, ServedModel]:
    return {entry.name: _load(entry, catalog.slo(entry.name)) for entry in catalog.models}


def _load(entry: ModelEntry, slo: SloClass) -> ServedModel:
    config_path = entry.path / "config.json"
    try:
        config = json.loads(config_path.read_text())
        tokenizer = Tokenizer(entry.path)
    except (OSError, ValueError, TokenizerError) as e:
        raise ModelSetupError(
            f"model {entry.name!r}: cannot read its config and tokenizer in {entry.path} ({e}); "
            "run `tokenpool models prepare` or fix the catalog path"
        ) from None
    window = config.get("max_position_embeddings")
    if not isinstance(window, int) or window < 2:
        window = entry.context_length
    if window is None:
        raise ModelSetupError(
            f"model {entry.name!r}: {config_path} has no max_position_embeddings; set context_length in the catalog"
        )
    if entry.context_length is not None:
        window = min(window, entry.context_length)
    return ServedModel(entry, tokenizer, window, slo)


def find_model(models: dict[str, ServedModel], name: str) -> ServedModel:
    model = models.get(name)
    if model is None:
        served = ", ".join(sorted(models))
        raise api_error(404, f"the model {name!r} does not exist; this server serves: {served}", "model", "model_not_found")
    return model
