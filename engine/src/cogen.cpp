// The collaborative (logits-mode) loop: remote lookahead with acceptance, KV rollback at the first
// difference, fusion with the P/K/T schedule, and the on-device decision of what may leave.
#include "internal.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_set>

namespace {

constexpr int32_t kMainSeq = 0;
constexpr int32_t kNoContextSeq = 1;   // the task without the private context, for attribution
constexpr float   kRare = -4.0f;       // nats: a withheld word this unlikely without the context is withheld again
constexpr size_t  kBatchedNoContext = 8;  // no-context tokens evaluated in the main decode's batch
constexpr float   kLn2 = 0.69314718f;

float log_softmax_at(const float * row, int32_t n, cg_token token) {
    const int32_t top = cg::argmax_first(row, n);
    const float mx = row[top];
    return row[token] - mx - (float) std::log(cg::sum_exp(row, n, mx, nullptr));
}

// A byte inside a word: letters, digits, and any byte of a multi-byte character.
bool word_byte(const std::string & s, bool last) {
    if (s.empty()) return false;
    const unsigned char c = (unsigned char) (last ? s.back() : s.front());
    return std::isalnum(c) || c >= 0x80;
}

// What the remote reads of the generated text, decided token by token (see cogenesis.h).
// The no-context sequence reads the text as written, not as sent: a placeholder would leave it
// without the words it replaced, and every ordinary token after it would look surprising (one
// withheld name cascaded into 31 withheld tokens of 48). The two cases reading the placeholders
// would catch, the rest of a withheld word and a withheld word said again, have rules of their own.
struct Egress {
    struct Entry {
        cg_token    token;
        std::string piece;
        bool        withheld;
        float       bits;      // context information, counted only when sent
        float       plain_lp;  // log p(t | no context)
        bool        sent = false;
    };

    cg_session *                 s = nullptr;
    const cg_cogen_params *      p = nullptr;
    int32_t                      n_vocab = 0;
    bool                         scoring = false;  // attribution on; off: the text guard alone decides (vet)
    std::vector<Entry>           entries;
    std::unordered_set<cg_token> withheld_starts;  // tokens that started a withheld rare word
    std::vector<cg_token>        pending;          // queued for the no-context sequence
    std::vector<float>           row;              // its latest scores
    // A run's remote tokens past the newest entry, evaluated on the no-context sequence in the batch
    // that verifies them on the main one (batch_verify), and the scores after each: an entry that
    // takes the next of them finds its scores here instead of costing a decode of its own.
    std::vector<cg_token>        ahead;
    std::vector<float>           ahead_rows;
    size_t                       ahead_taken = 0;
    size_t                       vetted = 0;       // entries the text guard has read (vet)
    int32_t *                    n_decodes = nullptr;  // the stats' count of evaluations

    int32_t flush() {
        if (pending.empty()) return CG_OK;
        if (cg_session_seq_len(s, kNoContextSeq) > 0) ++*n_decodes;  // else the no-context prompt
        const int32_t rc = cg_session_prefill(s, kNoContextSeq, pending.data(), (int32_t) pending.size());
        pending.clear();
        if (rc != CG_OK) return rc;
        const float * r = cg_session_logits(s, 0);
        row.assign(r, r + n_vocab);
        return CG_OK;
    }

    // A new token's entry: withheld or not by attribution (ratio: its context log-ratio), or, without
    // attribution, only as the rest of a word the text guard withheld (ratio left as it is).
    int32_t add(cg_token token, const std::string & piece, float context_lp, bool * withheld, float * ratio) {
        const Entry * last = entries.empty() ? nullptr : &entries.back();
        const bool continues_word = last && word_byte(piece, false) && word_byte(last->piece, true);
        if (!scoring) {
            *withheld = continues_word && last->withheld;
            entries.push_back({token, piece, *withheld, 0.0f, 0.0f});
            return CG_OK;
        }
        if (int32_t rc = flush()) return rc;
        const float plain_lp = log_softmax_at(row.data(), n_vocab, token);
        *ratio = context_lp - plain_lp;
        const float bits = std::max(0.0f, *ratio) / kLn2;
        bool w;
        if (continues_word && last->withheld) {
            w = true;
        } else if (*ratio > p->attribution.threshold || plain_lp < p->attribution.min_logprob ||
                   (!continues_word && withheld_starts.count(token))) {
            w = true;
            take_back_word(piece);
        } else {
            float recent = 0.0f;
            int32_t counted = 0;
            for (auto it = entries.rbegin(); it != entries.rend() && counted < p->attribution.window - 1; ++it) {
                if (!it->withheld) { recent += it->bits; ++counted; }
            }
            w = recent + bits > p->attribution.budget_bits;
        }
        entries.push_back({token, piece, w, bits, plain_lp});
        if (w && !continues_word) remember(entries.back());
        if (ahead_taken < ahead.size() && ahead[ahead_taken] == token) {
            const float * next = &ahead_rows[ahead_taken++ * (size_t) n_vocab];
            row.assign(next, next + n_vocab);
        } else {
            drop_ahead();
            pending.push_back(token);
        }
        *withheld = w;
        return CG_OK;
    }

    // Forget the remote tokens evaluated ahead that no entry took (the run ended before them).
    void drop_ahead() {
        const size_t untaken = ahead.size() - ahead_taken;
        if (untaken > 0) cg_session_seq_truncate(s, kNoContextSeq, cg_session_seq_len(s, kNoContextSeq) - (int32_t) untaken);
        ahead.clear();
        ahead_rows.clear();
        ahead_taken = 0;
    }

    // Withhold the unsent earlier pieces of the word `piece` continues.
    void take_back_word(const std::string & piece) {
        size_t i = entries.size();
        const std::string * following = &piece;
        while (i > 0) {
            const Entry & before = entries[i - 1];
            if (before.sent || before.withheld || !(word_byte(before.piece, true) && word_byte(*following, false))) break;
            --i;
            following = &before.piece;
        }
        if (i == entries.size()) return;
        for (size_t k = i; k < entries.size(); ++k) entries[k].withheld = true;
        remember(entries[i]);
    }

    void remember(const Entry & e) {
        const size_t start = e.piece.find_first_not_of(" \t\n\r\v\f");
        if (e.plain_lp < kRare && start != std::string::npos && word_byte(e.piece.substr(start, 1), false)) {
            withheld_starts.insert(e.token);
        }
    }

    // The generated text as sent from entry `from` on: each withheld run replaced by one placeholder.
    // starts: each entry's byte offset in it, when asked.
    std::string text(size_t from = 0, std::vector<size_t> * starts = nullptr) const {
        std::string out;
        bool run = false;
        for (size_t i = from; i < entries.size(); ++i) {
            const Entry & e = entries[i];
            if (starts) starts->push_back(out.size());
            if (e.withheld) {
                if (!run) out += (!e.piece.empty() && std::isspace((unsigned char) e.piece[0]) ? " " : "") + std::string(CG_PLACEHOLDER);
                run = true;
            } else {
                out += e.piece;
                run = false;
            }
        }
        return out;
    }

    // Ask the text guard (cg_remote_provider.vet) about the entries since the last question, reading
    // the last kVetWindow bytes or more; withhold the unsent entries of a private span it finds.
    // Whether the newest entry is withheld now. Asked only where the text ends on a whole character.
    bool vet(const cg_remote_provider & provider) {
        constexpr size_t kVetWindow = 256;  // longer than any span the guard finds but a context passage,
                                            // and a passage is found from any min_span bytes of it
        size_t from = std::min(vetted, entries.size() - 1), bytes = 0;
        for (size_t i = from; i < entries.size(); ++i) bytes += entries[i].piece.size();
        while (from > 0 && bytes < kVetWindow) bytes += entries[--from].piece.size();
        // The text read starts on a whole character (a piece may begin inside one).
        while (from + 1 < entries.size() && !entries[from].piece.empty() && (entries[from].piece[0] & 0xC0) == 0x80) ++from;
        std::vector<size_t> starts;
        const std::string tail = text(from, &starts);
        if (cg::complete_utf8_len(tail) != tail.size()) return false;
        const size_t first_new = std::max(vetted, from) - from;
        const int32_t n_new = (int32_t) (tail.size() - (first_new < starts.size() ? starts[first_new] : tail.size()));
        vetted = entries.size();
        const int32_t at = provider.vet(provider.user, tail.data(), (int32_t) tail.size(), n_new);
        if (at < 0) return false;
        for (size_t i = entries.size(); i-- > from;) {
            const size_t end = i + 1 - from < starts.size() ? starts[i + 1 - from] : tail.size();
            if (end <= (size_t) at || entries[i].sent) break;
            entries[i].withheld = true;
        }
        return entries.back().withheld;
    }
};

// One request, copied out of the provider's buffers as soon as it is answered.
struct Call {
    int64_t                 handle = 0;
    int32_t                 asked = 0;        // positions asked
    int32_t                 accepted = 0;     // positions whose fused token was the remote's own
    double                  t_submit = 0.0;
    bool                    live = false;     // submitted and not yet released
    bool                    answered = false;
    std::string             text;             // what the remote continues
    std::vector<cg_token>   ids;              // the remote's own token at each position, as a local id (-1: no exact one)
    std::vector<std::string> pieces;          // ... and its bytes
    std::vector<std::vector<cg_token>> top_ids;  // the remote's top-k per position, mapped and merged
    std::vector<std::vector<float>>    top_lps;
    std::vector<cg_token>   text_tokens;      // the remote's tokenization of text (canonical check), lazily
    bool                    tokenized = false;
};

// The adaptive lookahead (params.lookahead == 0): each request's depth k minimizes the expected time
// per token, (max(L(k), d) + (s(k) - 1) d) / s(k) with overlap and (L(k) + s(k) d) / s(k) without,
// where L(k) = fixed + per_token * k is the request's latency (fitted to the measured latencies),
// d the local time per token (measured), and s(k) = (1 - a^k) / (1 - a) the positions a request
// serves when each of the remote's tokens is accepted with probability a (measured). Old
// measurements fade, so the depth follows the network and the text.
struct Pace {
    static constexpr double  kFade = 0.8;
    static constexpr int32_t kMaxDepth = 16;
    // The first requests' depths: the first one also carries the server's prefill of the prompt (later
    // requests find it in the server's cache), so the latency line is fitted from the next two on.
    static constexpr int32_t kProbes[3] = {2, 1, 6};

    double  w = 0, sk = 0, skk = 0, sl = 0, skl = 0;  // faded sums for the latency fit
    double  fixed_ms = 0, per_token_ms = 0;
    double  accepted = 1, rejected = 1;               // faded counts, with a uniform prior
    int32_t n_observed = 0;

    void observe_latency(int32_t k, double ms) {
        if (n_observed++ == 0) return;
        w = w * kFade + 1;
        sk = sk * kFade + k;
        skk = skk * kFade + (double) k * k;
        sl = sl * kFade + ms;
        skl = skl * kFade + k * ms;
        const double mk = sk / w, ml = sl / w, var = skk / w - mk * mk;
        if (var > 0.25) per_token_ms = std::max(0.0, (skl / w - mk * ml) / var);  // else keep the last slope
        fixed_ms = std::max(0.0, ml - per_token_ms * mk);
    }

    void observe_run(int32_t n_accepted, bool rejected_one) {
        accepted = accepted * kFade + n_accepted;
        rejected = rejected * kFade + (rejected_one ? 1 : 0);
    }

    int32_t choose(double local_ms, bool overlap) const {
        if (n_observed < 3) return kProbes[n_observed];
        const double a = std::min(accepted / (accepted + rejected), 0.99);
        double cost[kMaxDepth + 1];
        double best_cost = INFINITY;
        for (int32_t k = 1; k <= kMaxDepth; ++k) {
            const double served = (1.0 - std::pow(a, k)) / (1.0 - a);
            const double latency = fixed_ms + per_token_ms * k;
            cost[k] = overlap ? (std::max(latency, local_ms) + (served - 1.0) * local_ms) / served
                              : latency / served + local_ms;
            best_cost = std::min(best_cost, cost[k]);
        }
        // The shallowest depth within 3% of the best: when the local side is the bottleneck, deeper
        // requests gain nothing, and the remote's extra work still costs (on a shared machine, time).
        int32_t k = 1;
        while (cost[k] > best_cost * 1.03) ++k;
        return k;
    }
};

std::vector<cg_token> tokenize(const cg_model * model, const std::string & text) {
    std::vector<cg_token> out(text.size() + 8);
    int32_t n = cg_tokenize(model, text.data(), (int32_t) text.size(), true, true, out.data(), (int32_t) out.size());
    if (n > (int32_t) out.size()) {
        out.resize(n);
        n = cg_tokenize(model, text.data(), (int32_t) text.size(), true, true, out.data(), n);
    }
    out.resize(std::max(n, 0));
    return out;
}

}  // namespace

struct cg_cogen {
    cg_session *        s = nullptr;
    cg_cogen_params     p{};
    cg_remote_provider  provider{};
    bool                has_provider = false;
    std::string         public_prefix;
    cg_sampler *        chain = nullptr;
    cg_sampler *        fusion = nullptr;  // the chain's first link
    cg_vocab_bridge *   bridge = nullptr;
    bool                owns_bridge = false;
    int32_t             n_vocab = 0;
    bool                attributing = false;  // scoring tokens without the context (a second sequence)
    bool                deciding = false;     // deciding token by token what may leave: attribution or a
                                              // text guard to ask (provider.vet), or both
    Egress              egress;

    std::vector<cg_token> tokens;
    cg::TextRelease       out;
    cg_token              pending = -1;  // chosen, not yet evaluated on the main sequence
    cg_finish_reason      finish = CG_FINISH_NONE;
    std::string           fallback;

    // The run of positions served by one request.
    bool               in_run = false;
    Call               call;
    bool               has_call = false;
    Call               last_answer;          // the latest answered request, for a text sent again unchanged
    bool               has_last_answer = false;
    int32_t            base = 0;       // main-sequence length before the run
    int32_t            j = 0;          // position within the run
    std::vector<float> rows;           // main-sequence scores of the run's positions, n_vocab each
    int32_t            n_rows = 0;

    Pace           pace;
    cg_cogen_stats st{};
    double         t_start = 0.0;
    std::string    error;  // scratch for provider messages
};

namespace {

void release_call(cg_cogen * co) {
    if (co->has_call && co->call.live) co->provider.release(co->provider.user, co->call.handle);
    co->call = Call();
    co->has_call = false;
}

// End the generation: release the text held back, the request in flight and the no-context
// sequence's cells, so a finished object no longer touches the session or the provider.
void finish(cg_cogen * co, cg_finish_reason why) {
    co->finish = why;
    co->out.flush();
    release_call(co);
    if (co->attributing) {
        co->egress.drop_ahead();
        cg_session_seq_truncate(co->s, kNoContextSeq, 0);
        co->egress.pending.clear();
    }
}

void fall_back(cg_cogen * co, const char * reason) {
    co->fallback = std::string(reason && reason[0] ? reason : "the remote provider failed") +
                   "; continued with the local model only";
}

bool consults(const cg_cogen * co, int32_t step) {
    return co->p.schedule_p < 0 || cg_schedule_consult(co->p.schedule_p, co->p.schedule_k, co->p.schedule_t, step);
}

// Cells of the shared context window in use, queued no-context tokens included.
int32_t used(const cg_cogen * co) {
    return cg::session_used(co->s) + (int32_t) co->egress.pending.size();
}

// Evaluate tokens on the main sequence and append the main rows. With attribution the no-context
// sequence is evaluated in the same batch: its queued tokens when there are few of them, and the
// tokens past the first (a run's remote tokens, verified ahead) so that attributing them costs no
// decode of their own. The batch pairs each token ahead with its main twin, as one-at-a-time
// decoding lays them out: llama.cpp's unified KV cache gave wrong scores (0.07 nats off, against a
// fresh evaluation) to a no-context token placed, after a rollback, in a cell before its own
// sequence's earlier cells, which a batch of all main tokens and then all no-context ones leads to.
int32_t decode_main(cg_cogen * co, const std::vector<cg_token> & toks) {
    const double t0 = cg::now_ms();
    std::vector<cg_token> queued;
    if (co->attributing) {
        co->egress.drop_ahead();  // a previous run's, past the token that ended it
        if (co->egress.pending.size() <= kBatchedNoContext) queued.swap(co->egress.pending);
        else if (int32_t rc = co->egress.flush()) return rc;
    }
    const size_t n_ahead = co->attributing ? toks.size() - 1 : 0;
    std::vector<int32_t> seqs;
    std::vector<cg_token> all;
    std::vector<int32_t> main_rows, ahead_rows;
    auto put = [&](int32_t seq, cg_token t, std::vector<int32_t> * rows) {
        if (rows) rows->push_back((int32_t) all.size());
        seqs.push_back(seq);
        all.push_back(t);
    };
    put(kMainSeq, toks[0], &main_rows);
    for (cg_token t : queued) put(kNoContextSeq, t, nullptr);
    const int32_t queued_row = (int32_t) all.size() - 1;
    for (size_t i = 1; i < toks.size(); ++i) {
        put(kMainSeq, toks[i], &main_rows);
        if (co->attributing) put(kNoContextSeq, toks[i], &ahead_rows);
    }
    const int32_t rc = cg_session_decode(co->s, seqs.data(), all.data(), (int32_t) all.size());
    if (rc != CG_OK) return rc;
    ++co->st.n_decodes;
    if (!queued.empty()) {  // the no-context scores after the queued tokens: the next token's
        const float * r = cg_session_logits(co->s, queued_row);
        co->egress.row.assign(r, r + co->n_vocab);
    }
    co->egress.ahead.assign(toks.begin() + 1, toks.begin() + 1 + n_ahead);
    co->egress.ahead_rows.resize(n_ahead * co->n_vocab);
    for (size_t i = 0; i < n_ahead; ++i) {
        std::memcpy(&co->egress.ahead_rows[i * co->n_vocab], cg_session_logits(co->s, ahead_rows[i]),
                    sizeof(float) * co->n_vocab);
    }
    co->rows.resize((size_t) (co->n_rows + toks.size()) * co->n_vocab);
    for (size_t i = 0; i < toks.size(); ++i) {
        std::memcpy(&co->rows[(size_t) (co->n_rows + i) * co->n_vocab], cg_session_logits(co->s, main_rows[i]),
                    sizeof(float) * co->n_vocab);
    }
    co->n_rows += (int32_t) toks.size();
    co->st.decode_ms += cg::now_ms() - t0;
    return CG_OK;
}

// Start a request for the current prefix when this step consults the remote.
int32_t submit(cg_cogen * co) {
    const int32_t produced = (int32_t) co->tokens.size();
    if (!co->has_provider || !co->fallback.empty() || !consults(co, produced) ||
        !co->out.complete()) {  // never send half a character
        return CG_OK;
    }
    Call & c = co->call;
    c = Call();
    std::vector<uint8_t> may_leave(co->tokens.size(), 1);
    cg_remote_request req{};
    if (co->deciding) {
        c.text = co->public_prefix + co->egress.text();
        int32_t n_withheld = 0;
        float bits = 0.0f;
        for (size_t i = 0; i < co->egress.entries.size(); ++i) {
            auto & e = co->egress.entries[i];
            e.sent = true;
            may_leave[i] = !e.withheld;
            if (e.withheld) ++n_withheld;
            else bits += e.bits;
        }
        co->st.n_withheld = n_withheld;
        co->st.context_bits = bits;
        if (co->has_last_answer && c.text == co->last_answer.text) {
            // Only withheld tokens came since the latest request: the remote would read the same text
            // again, and a second identical request would tell it how many tokens the placeholder
            // stands for. Its answer to that text serves again.
            c = co->last_answer;
            c.accepted = 0;
            co->has_call = true;
            return CG_OK;
        }
        req.context_bits = bits;
    } else {
        c.text = co->public_prefix + co->out.text + co->out.pending;  // all generated bytes, as written
    }
    req.text = c.text.c_str();
    req.text_len = (int32_t) c.text.size();
    req.tokens = co->tokens.data();
    req.may_leave = may_leave.data();
    req.n_tokens = (int32_t) co->tokens.size();
    // The local time per token: all the loop's time except prefill and waiting on the remote.
    const double local_ms = (cg::now_ms() - co->t_start - co->st.prefill_ms - co->st.wait_ms) / std::max(produced, 1);
    const int32_t depth = co->p.lookahead > 0 ? co->p.lookahead : co->pace.choose(local_ms, co->p.overlap);
    req.n_steps = std::min(depth, co->p.max_tokens - produced);
    req.top_k = co->p.top_k;
    co->error.assign(512, '\0');
    const int32_t rc = co->provider.submit(co->provider.user, &req, &c.handle, &co->error[0], (int32_t) co->error.size());
    co->error.back() = '\0';
    if (rc == CG_ERR_REFUSED) return cg::fail(rc, co->error.c_str());
    if (rc != CG_OK) {
        fall_back(co, co->error.c_str());
        return CG_OK;
    }
    c.live = true;
    c.asked = req.n_steps;
    c.t_submit = cg::now_ms();
    co->has_call = true;
    ++co->st.n_requests;
    co->st.n_asked += req.n_steps;
    return CG_OK;
}

// Copy one answered position out of the provider's buffers; false if it is malformed.
bool take_step(cg_cogen * co, const cg_remote_step & step, std::string & problem) {
    Call & c = co->call;
    const bool id_form = step.top_text == nullptr;
    if (step.n_top < 0 || (step.n_top > 0 && (!step.top_logprobs || (id_form ? !step.top_ids : !step.top_len))) ||
        step.token_len < 0 || (step.token_len > 0 && !step.token)) {
        problem = "the provider returned a malformed step";
        return false;
    }
    std::string piece = step.token ? std::string(step.token, (size_t) step.token_len) : std::string();
    cg_token own = -1;
    if (id_form) {
        if (step.token_id >= 0 && step.token_id < co->n_vocab) own = step.token_id;
        if (own >= 0 && piece.empty()) piece = cg::token_piece(co->s->model, own);
    } else if (!piece.empty()) {
        // The local token whose bytes are exactly the remote's, or none (token boundaries differ).
        own = cg_vocab_bridge_lookup(co->bridge, piece.data(), (int32_t) piece.size());
        if (own >= 0 && cg::token_piece(co->s->model, own) != piece) own = -1;
    }
    std::vector<cg_token> ids(std::max(step.n_top, 0));
    std::vector<float> lps(ids.size());
    int32_t k = 0;
    if (id_form) {
        cg::RemoteMass mass;
        for (int32_t i = 0; i < step.n_top; ++i) {
            const cg_token id = step.top_ids[i];
            if (id < 0 || id >= co->n_vocab) {
                problem = "the provider listed token id " + std::to_string(id) + ", outside the vocabulary";
                return false;
            }
            mass.add(id, step.top_logprobs[i]);
        }
        k = mass.write(ids.data(), lps.data());
    } else if (step.n_top > 0) {
        k = cg_vocab_bridge_map(co->bridge, step.top_text, step.top_len, step.top_logprobs, step.n_top, ids.data(), lps.data());
        if (k < 0) { problem = "the provider returned a malformed step"; return false; }
    }
    ids.resize(k);
    lps.resize(k);
    c.ids.push_back(own);
    c.pieces.push_back(std::move(piece));
    c.top_ids.push_back(std::move(ids));
    c.top_lps.push_back(std::move(lps));
    return true;
}

// Wait for the request's answer (once); a failure leaves it empty and turns to local-only.
int32_t await(cg_cogen * co) {
    Call & c = co->call;
    if (!co->has_call || c.answered) return CG_OK;
    c.answered = true;
    const cg_remote_step * steps = nullptr;
    int32_t n = 0;
    co->error.assign(512, '\0');
    const double t0 = cg::now_ms();
    const int32_t rc = co->provider.wait(co->provider.user, c.handle, &steps, &n, &co->error[0], (int32_t) co->error.size());
    co->st.wait_ms += cg::now_ms() - t0;
    co->error.back() = '\0';
    std::string problem = co->error.c_str();
    bool ok = rc == CG_OK;
    if (ok && (n < 0 || (n > 0 && !steps))) { ok = false; problem = "the provider returned a malformed answer"; }
    for (int32_t i = 0; ok && i < std::min(n, c.asked); ++i) ok = take_step(co, steps[i], problem);
    if (ok) co->pace.observe_latency(c.asked, cg::now_ms() - c.t_submit);
    co->provider.release(co->provider.user, c.handle);  // everything needed is copied
    c.live = false;
    if (ok && co->deciding) {
        co->last_answer = c;
        co->has_last_answer = true;
    }
    if (rc == CG_ERR_REFUSED) return cg::fail(rc, problem);
    if (!ok) {
        c.ids.clear();
        c.pieces.clear();
        c.top_ids.clear();
        c.top_lps.clear();
        if (!co->s->cancel.load(std::memory_order_relaxed)) fall_back(co, problem.c_str());
    }
    return CG_OK;
}

// Whether the remote's first m tokens are how it would tokenize their text after the prefix: the
// prefix keeps its tokens and m more follow, each with the bytes of the remote's piece. Compared as
// bytes, not ids: c.ids are local ids, and the remote's vocabulary may be another family's.
bool canonical(cg_cogen * co, int32_t m) {
    Call & c = co->call;
    if (!co->p.remote_vocab) return true;  // tokenizer unknown: token boundaries were checked (ids)
    if (!c.tokenized) {
        c.text_tokens = tokenize(co->p.remote_vocab, c.text);
        c.tokenized = true;
    }
    std::string text = c.text;
    for (int32_t i = 0; i < m; ++i) text += c.pieces[i];
    const std::vector<cg_token> toks = tokenize(co->p.remote_vocab, text);
    const size_t n = c.text_tokens.size();
    if (toks.size() != n + (size_t) m || !std::equal(c.text_tokens.begin(), c.text_tokens.end(), toks.begin())) return false;
    for (int32_t i = 0; i < m; ++i) {
        if (cg::token_piece(co->p.remote_vocab, toks[n + i]) != c.pieces[i]) return false;
    }
    return true;
}

// Whether position j + 1 can use this request's scores: the token at j is the remote's own, and
// the remote's tokens so far are how it would tokenize them (a fresh request would see the same).
bool continues(cg_cogen * co, cg_token token) {
    const Call & c = co->call;
    const int32_t j = co->j;
    if (!co->has_call || j >= (int32_t) c.ids.size() || token != c.ids[j]) return false;
    ++co->st.n_accepted;
    ++co->call.accepted;
    return j + 1 < (int32_t) c.ids.size() && canonical(co, j + 1);
}

void end_run(cg_cogen * co, cg_token token, bool full, bool withheld) {
    if (co->has_call && !co->call.ids.empty() && co->j < (int32_t) co->call.ids.size()) {
        // Each position the run served is one trial: the fused token was the remote's own or not
        // (continues() counted the last one, unless max_tokens ended the run first). A run that ends
        // on a withheld token is no observation at all: how many of its tokens were the remote's own
        // (the withheld one, or pieces the guard took back) must not steer the next request's depth.
        const bool own = token == co->call.ids[co->j];
        if (!withheld) co->pace.observe_run(co->call.accepted + (full && own ? 1 : 0), !own);
    }
    cg_session_seq_truncate(co->s, kMainSeq, co->base + 1 + co->j);
    co->pending = token;
    co->in_run = false;
    co->n_rows = 0;
    release_call(co);
}

// Begin a run: request the remote's scores for the prefix and evaluate the pending token meanwhile.
int32_t begin_run(cg_cogen * co) {
    if (int32_t rc = submit(co)) return rc;
    if (!co->p.overlap) {
        if (int32_t rc = await(co)) return rc;
    }
    co->base = cg_session_seq_len(co->s, kMainSeq);
    co->n_rows = 0;
    if (int32_t rc = decode_main(co, {co->pending})) return rc;
    if (int32_t rc = await(co)) return rc;
    co->j = 0;
    co->in_run = true;
    return CG_OK;
}

// Sample position j: fused with the remote's scores when this step consults them.
int32_t sample(cg_cogen * co, cg_cogen_token * t) {
    const double t0 = cg::now_ms();
    const float * row = &co->rows[(size_t) co->j * co->n_vocab];
    const Call & c = co->call;
    const bool scored = co->has_call && co->j < (int32_t) c.ids.size() && consults(co, (int32_t) co->tokens.size());
    if (scored) {
        ++co->st.n_scored;
        const auto & ids = c.top_ids[co->j];
        const cg_sparse_dist dist{ids.data(), c.top_lps[co->j].data(), (int32_t) ids.size()};
        if (int32_t rc = cg_fusion_sampler_set_remote(co->fusion, &dist, nullptr)) return rc;
    }
    const cg_token token = cg_sampler_sample_logits(co->chain, row, co->n_vocab);
    if (token < 0) return CG_ERR_INVALID_ARGUMENT;
    t->token = token;
    t->fused = false;
    t->weight = 1.0f;
    t->remote_logprob = NAN;
    if (scored) {
        cg_fusion_info info{};
        cg_fusion_sampler_last_info(co->fusion, &info);
        if (info.consulted && !info.overruled) {  // overruled: the remote listed nothing plausible
            t->fused = true;
            t->weight = info.weight;
            const auto & ids = c.top_ids[co->j];
            const auto it = std::find(ids.begin(), ids.end(), token);
            if (it != ids.end()) t->remote_logprob = c.top_lps[co->j][it - ids.begin()];
        }
    }
    t->local_logprob = log_softmax_at(row, co->n_vocab, token);
    co->st.sample_ms += cg::now_ms() - t0;
    return CG_OK;
}

int32_t check_params(const cg_session * s, const cg_cogen_params * p, bool attributing) {
    auto bad = [](const std::string & m) { return cg::fail(CG_ERR_INVALID_ARGUMENT, m); };
    if (p->max_tokens < 1) return bad("max_tokens must be at least 1, got " + std::to_string(p->max_tokens));
    if (p->lookahead < 0 || p->lookahead > 31) return bad("lookahead must be between 1 and 31 tokens (0: adaptive), got " + std::to_string(p->lookahead));
    if (p->top_k < 0) return bad("top_k must be >= 0, got " + std::to_string(p->top_k));
    if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop)) return bad("invalid stop strings");
    if (p->fusion.rule == CG_FUSION_CONTEXT_DELTA) {
        return bad("the context_delta rule needs the local model's scores without the context at every step; "
                   "the collaborative loop offers weighted, max and gate");
    }
    if (!std::isfinite(p->attribution.threshold) || !std::isfinite(p->attribution.min_logprob) || !std::isfinite(p->attribution.budget_bits) ||
        p->attribution.threshold < 0 || p->attribution.budget_bits < 0 || p->attribution.window < 1) {
        return bad("attribution needs a finite threshold >= 0, min_logprob and budget_bits >= 0, and window >= 1");
    }
    if (attributing && s->n_seq_max < 2) return bad("attribution needs a session with n_seq_max >= 2 (a sequence without the context)");
    return CG_OK;
}

}  // namespace

extern "C" {

struct cg_attribution_params cg_attribution_default_params(void) {
    cg_attribution_params p{};
    p.enabled = true;
    p.threshold = 2.0f;
    p.min_logprob = -10.0f;
    p.budget_bits = 8.0f;
    p.window = 16;
    return p;
}

struct cg_cogen_params cg_cogen_default_params(void) {
    cg_cogen_params p{};
    p.max_tokens = 256;
    p.lookahead = 0;
    p.top_k = 0;
    p.overlap = true;
    p.batch_verify = false;
    p.schedule_p = -1;
    p.schedule_k = 0;
    p.schedule_t = 0;
    p.stop = nullptr;
    p.n_stop = 0;
    p.attribution = cg_attribution_default_params();
    p.fusion = cg_fusion_default_params();
    p.fusion.plausible = 0.1f;
    p.gate = nullptr;
    // Collaboration writes greedily, with no 4-gram repeated: small models loop without it, and the
    // per-token protocol's text is then reproducible. The 4-grams are of token texts, so that markup
    // looping in variants of spacing is caught (docs/collaboration.md, "Repetition control").
    p.sampling = cg_sampling_default_params();
    p.sampling.temperature = 0.0f;
    p.sampling.no_repeat_ngram = 4;
    p.sampling.no_repeat_text = true;
    p.bridge = nullptr;
    p.remote_vocab = nullptr;
    return p;
}

int32_t cg_cogen_init(cg_session * s, const cg_token * prompt, int32_t n_prompt, const cg_token * noctx_prompt,
                      int32_t n_noctx, const char * public_prefix, const struct cg_cogen_params * params,
                      const cg_remote_provider * provider, cg_cogen ** out) {
    if (!s || !params || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_cogen_init: NULL argument");
    *out = nullptr;
    if (!prompt || n_prompt <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "the prompt is empty");
    if (provider && (!provider->submit || !provider->wait || !provider->release)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "a remote provider needs submit, wait and release");
    }
    const bool attributing = provider && params->attribution.enabled;
    if (attributing && (!noctx_prompt || n_noctx <= 0)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "attribution needs the prompt without the context (noctx_prompt)");
    }
    if (int32_t rc = check_params(s, params, attributing)) return rc;
    if (n_prompt + 1 + (attributing ? n_noctx : 0) >= s->n_ctx) {
        return cg::fail(CG_ERR_CONTEXT_OVERFLOW, "the prompts take " + std::to_string(n_prompt + (attributing ? n_noctx : 0)) +
                                                     " tokens but the context window n_ctx is " + std::to_string(s->n_ctx));
    }
    auto * co = new cg_cogen;
    co->s = s;
    co->p = *params;
    co->n_vocab = cg_model_n_vocab(s->model);
    co->t_start = cg::now_ms();
    for (int32_t i = 0; i < params->n_stop; ++i) {
        if (params->stop[i] && params->stop[i][0]) co->out.stops.emplace_back(params->stop[i]);
    }
    co->p.stop = nullptr;  // copied above; the caller's array need not outlive init
    co->p.n_stop = 0;
    if (provider) {
        co->provider = *provider;
        co->has_provider = true;
        co->public_prefix = public_prefix ? public_prefix : "";
    }
    auto fail = [co](int32_t rc) { cg_cogen_free(co); return rc; };
    if (int32_t rc = cg_sampler_init_fusion_chain(s->model, &params->fusion, params->gate, &params->sampling, &co->chain,
                                                  &co->fusion)) {
        return fail(rc);
    }
    co->bridge = params->bridge;
    if (provider && !co->bridge) {
        if (int32_t rc = cg_vocab_bridge_init(s->model, &co->bridge)) return fail(rc);
        co->owns_bridge = true;
    }
    s->cancel.store(false);

    // The main sequence holds the prompt but its last token, which the first run evaluates.
    co->st.n_prompt = n_prompt;
    if (n_prompt > 1) {
        const int32_t rc = cg::prefill_reusing(s, kMainSeq, prompt, n_prompt - 1, n_prompt - 1, &co->st.n_reused);
        if (rc == CG_ERR_CANCELLED) finish(co, CG_FINISH_CANCELLED);
        else if (rc != CG_OK) return fail(rc);
    } else {
        cg_session_seq_truncate(s, kMainSeq, 0);
    }
    co->st.prefill_ms = cg::now_ms() - co->t_start;
    co->pending = prompt[n_prompt - 1];
    cg_sampler_reset(co->chain);
    for (int32_t i = 0; i < n_prompt; ++i) cg_sampler_accept(co->chain, prompt[i]);

    // Without attribution a text guard still decides before each token may join a request: a run
    // that went on past a token the guard redacts would show, by when the next request comes, that
    // the remote's guess was the private word (the same leak attribution's withholding closes).
    co->deciding = attributing || (provider && provider->vet);
    co->egress.s = s;
    co->egress.p = &co->p;
    co->egress.n_vocab = co->n_vocab;
    co->egress.n_decodes = &co->st.n_decodes;
    co->egress.scoring = attributing;
    if (attributing) {  // evaluated with the first run, while the first request is in flight
        co->attributing = true;
        cg_session_seq_truncate(s, kNoContextSeq, 0);
        co->egress.pending.assign(noctx_prompt, noctx_prompt + n_noctx);
    }
    *out = co;
    return CG_OK;
}

int32_t cg_cogen_next(cg_cogen * co, struct cg_cogen_token * token, const char ** text, int32_t * text_len) {
    if (!co) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_cogen_next: NULL argument");
    co->out.released.clear();
    cg_cogen_token t{-1, false, false, 1.0f, NAN, NAN, NAN};
    auto done = [&](int32_t rc) {
        co->st.total_ms = cg::now_ms() - co->t_start;
        co->st.n_generated = (int32_t) co->tokens.size();
        if (token) *token = t;
        if (text) *text = co->out.released.data();
        if (text_len) *text_len = (int32_t) co->out.released.size();
        return rc;
    };
    if (co->finish != CG_FINISH_NONE) return done(CG_OK);
    if (co->s->cancel.load(std::memory_order_relaxed)) {
        finish(co, CG_FINISH_CANCELLED);
        return done(CG_OK);
    }
    if (!co->in_run) {
        if (used(co) + 1 >= co->s->n_ctx) {
            finish(co, CG_FINISH_CONTEXT_FULL);
            return done(CG_OK);
        }
        const int32_t rc = begin_run(co);
        if (rc == CG_ERR_CANCELLED || (rc == CG_OK && co->s->cancel.load(std::memory_order_relaxed))) {
            finish(co, CG_FINISH_CANCELLED);
            return done(CG_OK);
        }
        if (rc != CG_OK) {
            release_call(co);
            return done(rc);
        }
    }
    if (int32_t rc = sample(co, &t)) return done(rc);
    if (co->tokens.empty()) co->st.first_token_ms = cg::now_ms() - co->t_start;
    const cg_token tok = t.token;
    if (cg_model_token_is_eog(co->s->model, tok)) {
        t.token = -1;
        finish(co, CG_FINISH_EOS);
        return done(CG_OK);
    }
    const std::string piece = cg::token_piece(co->s->model, tok);
    if (co->deciding && co->fallback.empty()) {
        const double t0 = cg::now_ms();
        const int32_t rc = co->egress.add(tok, piece, t.local_logprob, &t.withheld, &t.context_nats);
        if (rc != CG_OK) return done(rc);
        if (!t.withheld && co->provider.vet) t.withheld = co->egress.vet(co->provider);
        co->st.attribution_ms += cg::now_ms() - t0;
    }
    co->tokens.push_back(tok);
    co->out.add(piece);
    if (co->out.stopped) {
        finish(co, CG_FINISH_STOP);
        return done(CG_OK);
    }
    const bool full = (int32_t) co->tokens.size() >= co->p.max_tokens;
    // A withheld token ends the run, even when it is the remote's own: going on with the remote's
    // next scores would show it, by when the next request comes, that its guess was the private word
    // (issue 29: " Max" offered at every position, the next request came after "Dear [PRIVATE],"
    // for the right name and right after "Dear [PRIVATE]" for a wrong one).
    if (full || t.withheld || !continues(co, tok)) {
        end_run(co, tok, full, t.withheld);
    } else if (co->n_rows == co->j + 1) {
        const int32_t room = co->s->n_ctx - used(co) - 1;
        std::vector<cg_token> batch;
        if (co->p.batch_verify) {  // the remote's next tokens that map exactly onto local ones
            for (size_t i = co->j; i + 1 < co->call.ids.size() && co->call.ids[i] >= 0; ++i) batch.push_back(co->call.ids[i]);
        } else {
            batch.push_back(tok);
        }
        // With attribution the tokens past the first are evaluated on both sequences, with the queued
        // no-context tokens (room already counts those).
        int32_t fits = std::min(room, co->s->n_outputs_max);
        if (co->attributing) {
            fits = std::min((room + 1) / 2, (co->s->n_outputs_max - (int32_t) co->egress.pending.size() + 1) / 2);
        }
        if ((int32_t) batch.size() > fits) batch.resize(std::max(fits, 0));
        if (batch.empty()) {
            end_run(co, tok, full, false);
        } else {
            const int32_t rc = decode_main(co, batch);
            if (rc == CG_ERR_CANCELLED) {
                finish(co, CG_FINISH_CANCELLED);
                return done(CG_OK);
            }
            if (rc != CG_OK) return done(rc);
            ++co->j;
        }
    } else {
        ++co->j;
    }
    if (full) finish(co, CG_FINISH_LENGTH);
    return done(CG_OK);
}

enum cg_finish_reason cg_cogen_finish_reason(const cg_cogen * co) { return co->finish; }

const char * cg_cogen_text(const cg_cogen * co, int32_t * len) {
    if (len) *len = (int32_t) co->out.text.size();
    return co->out.text.data();
}

struct cg_cogen_stats cg_cogen_get_stats(const cg_cogen * co) { return co->st; }

const char * cg_cogen_fallback_reason(const cg_cogen * co) { return co->fallback.c_str(); }

void cg_cogen_free(cg_cogen * co) {
    if (!co) return;
    if (co->finish == CG_FINISH_NONE) finish(co, CG_FINISH_CANCELLED);
    cg_sampler_free(co->chain);  // owns the fusion link
    if (co->owns_bridge) cg_vocab_bridge_free(co->bridge);
    delete co;
}

}  // extern "C"
