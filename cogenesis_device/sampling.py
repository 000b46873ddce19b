"""How the next token is chosen: one set of sampling parameters, whose defaults are the engine's.

    from cogenesis_device import SamplingParams
    model.generate("Hello", SamplingParams(temperature=0.7, seed=1))
    generator.generate(instruction, context, sampling=SamplingParams.greedy())

`SamplingParams()` is `cg_sampling_default_params()` (what `LocalModel.generate` uses when given
none); `SamplingParams.collaborative()` is the sampling of `cg_cogen_default_params()` (what
`CoGenerator` uses: greedy, no 4-gram of token texts repeated). Both come from the engine, read once at import.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import _native
from .errors import InvalidParameterError

_ENGINE = _native.sampling_default_params()
_COLLABORATIVE = _native.cogen_default_params()["sampling"]


@dataclass(frozen=True)
class SamplingParams:
    """The engine's sampler chain: penalties -> no-repeat n-gram -> top_k -> top_p -> min_p ->
    temperature -> a draw (or greedy). Values are checked when the object is made."""

    temperature: float = _ENGINE["temperature"]  # <= 0: greedy (the other fields then only filter)
    top_k: int = _ENGINE["top_k"]  # 0 disables
    top_p: float = _ENGINE["top_p"]  # in (0, 1]; 1 disables
    min_p: float = _ENGINE["min_p"]  # in [0, 1]; 0 disables
    repeat_penalty: float = _ENGINE["repeat_penalty"]  # > 0; 1 disables
    repeat_last_n: int = _ENGINE["repeat_last_n"]  # tokens the penalty looks back on
    no_repeat_ngram: int = _ENGINE["no_repeat_ngram"]  # n >= 1: never complete an n-gram the text already holds
    # Compare the n-grams' tokens by text, lower-cased and without whitespace ("*  \n" repeats "*\n"):
    no_repeat_text: bool = _ENGINE["no_repeat_text"]
    seed: int | None = _ENGINE["seed"]  # None: a random seed at every generation

    def __post_init__(self) -> None:
        # The engine validates (InvalidParameterError naming the field). Parameters have no model, which
        # the text comparison needs for its vocabulary: it is checked when a model's sampler is made.
        _native.Sampler(**{**self.to_dict(), "no_repeat_text": False})

    @classmethod
    def greedy(cls, **changes) -> "SamplingParams":
        """Always the most likely token (temperature 0), other fields as given or the engine's."""
        return cls(**{"temperature": 0.0, **changes})

    @classmethod
    def collaborative(cls, **changes) -> "SamplingParams":
        """The collaborative loop's defaults (cg_cogen_default_params): greedy, no 4-gram of token texts repeated."""
        return cls(**{**_COLLABORATIVE, **changes})

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sampler(self, model: _native.Model | None = None) -> _native.Sampler:
        """A fresh native sampler chain with these parameters, for `model` (needed by no_repeat_text)."""
        return _native.Sampler(model, **self.to_dict())


# The two defaults, made (and checked) once: a SamplingParams is frozen, so one object serves every call.
ENGINE_DEFAULT = SamplingParams()
COLLABORATIVE = SamplingParams.collaborative()


def sampling_or(default: SamplingParams, sampling: SamplingParams | None) -> SamplingParams:
    """`sampling`, or `default` when it is None; anything else is refused with an error that names it."""
    if sampling is None:
        return default
    if not isinstance(sampling, SamplingParams):
        raise InvalidParameterError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
    return sampling
