"""What a collaborative generation returns: the text, each token's attribution, the audit of every
request, and the stats."""
from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass

from ..privacy import AuditRecord, summarize


@dataclass(frozen=True)
class TokenInfo:
    """Attribution of one generated token."""

    token: int
    text: str
    source: str  # 'fused' (remote scores were used) or 'local'
    weight: float  # the local side's weight at this step (1.0 when local only)
    local_p: float  # probability of the token under the local model (with context); NaN in sketch mode
    remote_p: float | None  # ... under the remote's top-k, None when unlisted or not consulted
    withheld: bool = False  # sent to the remote as a placeholder: the private context explains it
    context_nats: float = float("nan")  # log p(t | context) - log p(t | what the remote reads); NaN if not scored

    @property
    def remote_share(self) -> float:
        """How much of the fused choice came from the remote, in [0, 1]."""
        if self.remote_p is None:
            return 0.0
        remote = (1.0 - self.weight) * self.remote_p
        total = self.weight * self.local_p + remote
        return remote / total if total > 0 else 0.0


@dataclass(frozen=True)
class CoStats:
    first_token_ms: float
    total_ms: float
    n_tokens: int
    round_trips: int  # HTTP requests that left the process (retries included)
    bytes_sent: int
    bytes_received: int
    network_wait_ms: float  # time the loop spent blocked on the remote
    remote_tokens_accepted: int  # tokens where the fused choice matched the remote's own token
    withheld_tokens: int = 0  # generated tokens the remote received as placeholders (last request)
    context_bits: float = 0.0  # context information in the generated text the remote received
    local_decode_ms: float = 0.0  # evaluating generated tokens on the device (logits mode: both sequences)
    remote_tokens_asked: int = 0  # positions asked of the remote, over all requests (logits mode)
    remote_tokens_used: int = 0  # positions fused with the remote's scores (logits mode)
    local_decodes: int = 0  # local evaluations after the prompts', one batch each (logits mode)
    n_reused: int = 0  # prompt tokens found in the KV cache of an earlier job with the same private context

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.total_ms * 1000.0 if self.total_ms > 0 else 0.0

    @property
    def tokens_per_s_after_first(self) -> float:
        """Tokens per second after the first one, by the wall clock: the generation rate without the
        prompt prefill and the first request (the engine's decode_tokens_per_s counts decode time only)."""
        generation_ms = self.total_ms - self.first_token_ms
        return (self.n_tokens - 1) / generation_ms * 1000.0 if self.n_tokens > 1 and generation_ms > 0 else 0.0

    @property
    def round_trips_per_token(self) -> float:
        return self.round_trips / self.n_tokens if self.n_tokens else 0.0

    @property
    def wasted_per_accepted(self) -> float:
        """Remote tokens asked and never used, per token the fused choice took from the remote (at least 1)."""
        return (self.remote_tokens_asked - self.remote_tokens_used) / max(self.remote_tokens_accepted, 1)

    def to_dict(self) -> dict:
        """The fields and the rates derived from them (for JSON)."""
        rates = ("tokens_per_s", "tokens_per_s_after_first", "round_trips_per_token", "wasted_per_accepted")
        return {**dataclasses.asdict(self), **{name: getattr(self, name) for name in rates}}

    def summary(self) -> str:
        return (f"{self.n_tokens} tok in {self.total_ms:.0f} ms ({self.tokens_per_s:.1f} tok/s), first token "
                f"{self.first_token_ms:.0f} ms, {self.round_trips} round trips ({self.round_trips_per_token:.2f}/tok), "
                f"{self.bytes_sent} B sent, {self.bytes_received} B received, network wait {self.network_wait_ms:.0f} ms, "
                f"{self.withheld_tokens} tokens withheld, {self.context_bits:.1f} bits of context sent")


@dataclass
class CoResult:
    text: str
    mode: str
    tokens: list[int]
    attribution: list[TokenInfo]
    audit: list[AuditRecord]
    stats: CoStats
    finish_reason: str
    fallback: bool = False  # the remote failed and generation went on local-only
    fallback_reason: str | None = None
    outline: str | None = None  # sketch mode: the outline the local model followed, as numbered points
    outline_note: str | None = None  # sketch mode: why there is no outline, or what was left out of it
    instruction: str | None = None  # the public instruction sent (derived on the device when request= was given)
    mode_reason: str | None = None  # mode="auto": why this mode (what the probe found)

    def audit_summary(self) -> dict:
        """requests, bytes_sent, bytes_received, redacted_spans, blocked, leaked_spans."""
        return summarize(self.audit)

    def to_html(self, path: str | None = None) -> str:
        """The text with each token shaded from blue (local) to orange (remote), like the paper's
        Figure 6; hover a token for its numbers. Written to `path` when given."""
        spans = []
        for info in self.attribution:
            share = info.remote_share
            colour = f"rgba({int(70 + 185 * share)},{int(130 + 35 * share)},{int(230 - 200 * share)},0.35)"
            remote = "-" if info.remote_p is None else f"{info.remote_p:.3f}"
            title = f"{info.source}; w={info.weight:.2f}; p_local={info.local_p:.3f}; p_remote={remote}"
            text = html.escape(info.text).replace("\n", "<br>")
            spans.append(f'<span style="background:{colour}" title="{html.escape(title)}">{text}</span>')
        fallback = f"<p><b>Fallback to local only:</b> {html.escape(self.fallback_reason)}</p>" if self.fallback else ""
        page = (
            "<!doctype html><meta charset='utf-8'><title>cogenesis-device</title>"
            "<style>body{font:16px/1.6 sans-serif;max-width:46em;margin:2em auto}span{border-radius:3px}"
            ".key span{padding:0 .4em}</style>"
            f"<h3>{html.escape(self.mode)} mode</h3>"
            "<p class='key'><span style='background:rgba(70,130,230,.35)'>local</span> "
            "<span style='background:rgba(255,165,30,.35)'>remote</span></p>"
            f"{fallback}<p>{''.join(spans)}</p><p><small>{html.escape(self.stats.summary())}</small></p>"
        )
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page
