"""Collaborative generation: the local model holds the private context, the remote only the public
instruction. `generator.py` runs both modes (sketch, and logits through the engine's loop);
`sketch.py` holds the outline's prompts and parser; `instruction.py` derives the public instruction
from a private request; `results.py` is what a generation returns."""
from .generator import MODES, NO_REPEAT_NGRAM, CoGenerator, CoStream
from .instruction import DerivedInstruction, derive_instruction
from .results import CoResult, CoStats, TokenInfo
from .sketch import FOLLOW_OUTLINE, OUTLINE_PROMPT, follow_outline, parse_outline

__all__ = ["FOLLOW_OUTLINE", "MODES", "NO_REPEAT_NGRAM", "OUTLINE_PROMPT", "CoGenerator", "CoResult", "CoStats",
           "CoStream", "DerivedInstruction", "TokenInfo", "derive_instruction", "follow_outline", "parse_outline"]
