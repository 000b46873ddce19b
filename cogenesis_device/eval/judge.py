"""An LLM judge with the paper's three criteria, through any OpenAI-compatible endpoint.

- overall_with_profile: quality of the response for this user, reading their profile;
- personalization: how well it fits the user's facts and style;
- overall_without_profile: quality as a general answer, without the profile.
Each is 1-10. The with-profile call sees the profile facts (or the
start of the writing history when there are none) and the user's full request; the without-profile
call sees only the public instruction. The judge reads private data by design, so point it at an
endpoint you trust with the evaluation set (never, unless you say so, the remote under evaluation:
`cogenesis eval --judge remote` needs --trust-judge). Its requests go through a guard that knows the
sample's private context under policy 'audit': they are sent as they are, and each verdict carries
the audit summary, which the evaluation shows as "sent by design".
"""
from __future__ import annotations

import re
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from ..privacy import EgressGuard, summarize
from ..remote import RemoteModel
from .datasets import Sample

CRITERIA = ("overall_with_profile", "personalization", "overall_without_profile")

WITH_PROFILE = """You are grading a piece of writing produced for a specific user.

About the user:
{profile}

The user's request:
{task}

The response:
<<<
{response}
>>>

Rate the response on two scales from 1 (very poor) to 10 (excellent):
Overall: how good and helpful it is for this user's request.
Personalization: how well it uses this user's details, experiences and writing style.
Reply with exactly two lines:
Overall: <1-10>
Personalization: <1-10>"""

WITHOUT_PROFILE = """You are grading a piece of writing.

The request:
{instruction}

The response:
<<<
{response}
>>>

Rate how good and helpful the response is for the request, from 1 (very poor) to 10 (excellent).
Reply with exactly one line:
Overall: <1-10>"""

# "Overall: 7", "Personalization - 8/10"; not the "1-10" of the instructions echoed back.
_SCORE = re.compile(r"(overall|personali[sz]ation)\W{0,4}(?:score\W{0,3})?(10|[1-9])(?!\s*-\s*10)(?:\s*/\s*10)?\b",
                    re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """Scores per criterion (None where the judge's reply held no readable score), the raw replies,
    and what the two requests sent (privacy.summarize of their audit records)."""

    scores: dict[str, float | None]
    replies: tuple[str, str]
    audit: dict


def parse_scores(reply: str) -> dict[str, float]:
    """'Overall: 7' / 'Personalization - 8/10' lines -> {'overall': 7.0, 'personalization': 8.0} (first of each)."""
    out: dict[str, float] = {}
    for name, value in _SCORE.findall(reply):
        key = "overall" if name.lower() == "overall" else "personalization"
        out.setdefault(key, float(value))
    return out


def _profile(sample: Sample, max_chars: int = 4000) -> str:
    """The judge's view of the user: the profile facts, or the start of the writing history without them."""
    if sample.profile:
        return "\n".join(f"{k}: {v}" for k, v in sample.profile.items())
    return sample.context[:max_chars]


class Judge:
    """Grades responses with a RemoteModel. max_tokens bounds each reply."""

    def __init__(self, remote: RemoteModel, *, max_tokens: int = 40):
        self.remote, self.max_tokens = remote, max_tokens

    def submit(self, sample: Sample, response: str) -> "Future[Verdict]":
        """Both judge calls start at once; the returned future resolves to the Verdict."""
        guard = EgressGuard(sample.context, public=[sample.instruction], policy="audit")
        with_profile = self.remote.submit_chat(
            [{"role": "user", "content": WITH_PROFILE.format(profile=_profile(sample), task=sample.task, response=response)}],
            max_tokens=self.max_tokens, guard=guard)
        without = self.remote.submit_chat(
            [{"role": "user", "content": WITHOUT_PROFILE.format(instruction=sample.instruction, response=response)}],
            max_tokens=self.max_tokens, guard=guard)
        verdict: Future = Future()
        lock = threading.Lock()

        def done(_):
            with lock:
                if not (with_profile.done() and without.done()) or verdict.done():
                    return
                verdict.set_running_or_notify_cancel()
            try:
                a, b = with_profile.result().text, without.result().text
            except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
                verdict.set_exception(exc)
                return
            first, second = parse_scores(a), parse_scores(b)
            verdict.set_result(Verdict({"overall_with_profile": first.get("overall"),
                                        "personalization": first.get("personalization"),
                                        "overall_without_profile": second.get("overall")}, (a, b),
                                       summarize(guard.records)))

        with_profile.add_done_callback(done)
        without.add_done_callback(done)
        return verdict
