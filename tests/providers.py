"""Remote providers for tests that need a real model and no network."""
import numpy as np

from cogenesis_device.remote import TokenScores


class SecondModelProvider:
    """A remote provider with no network: the same model in a session of its own, without the private
    context, continuing the request's text greedily and listing its top-k (as a server would)."""

    def __init__(self, model, top_k=20):
        self.model, self.top_k = model, top_k
        self.session = model.new_session(n_seq_max=1)
        self.requests = []
        self.released = 0

    def submit(self, text, tokens, may_leave, n_steps, top_k, context_bits):
        self.requests.append(text)
        return text, n_steps

    def wait(self, request):
        text, n_steps = request
        piece = self.model.native.token_to_piece  # bytes, as a server's `bytes` field gives them
        return [TokenScores(piece(token), lp, {piece(t): v for t, v in top})
                for token, lp, top in self.continue_text(text, n_steps)]

    def continue_text(self, text, n_steps):
        """Greedy continuation of text: per position (token id, its logprob, [(id, logprob)] top-k)."""
        return self.continue_tokens(self.model.tokenize(text, parse_special=True), n_steps)

    def continue_tokens(self, tokens, n_steps):
        """Greedy continuation of a token prompt, as continue_text."""
        prompt = np.asarray(tokens, dtype=np.int32)
        self.session.truncate(0)
        self.session.prefill(prompt)
        steps = []
        for _ in range(n_steps):
            row = self.session.logits(0).astype(np.float64)
            lp = row - row.max() - np.log(np.exp(row - row.max()).sum())
            top = np.argsort(-lp, kind="stable")[:self.top_k]
            token = int(top[0])
            if self.model.native.is_eog(token):
                break
            steps.append((token, float(lp[token]), [(int(t), float(lp[t])) for t in top]))
            self.session.decode([0], [token])
        return steps

    def release(self, request):
        self.released += 1
