"""Prompt formats that need no model, shared by the local engine and the network client (which must
not load the engine to format a prompt)."""
from __future__ import annotations

from collections.abc import Sequence


def plain_prompt(messages: Sequence[dict]) -> str:
    """A prompt without chat markup: each message's text followed by a blank line (roles are dropped).
    The format for base models, which have no chat template and simply continue text."""
    return "".join(m["content"] + "\n\n" for m in messages)
