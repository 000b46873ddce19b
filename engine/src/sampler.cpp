// Samplers: small objects with apply / accept / reset; a chain is one too.
#include "internal.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <random>

struct cg_sampler {
    cg_sampler_i iface;
    void *       ctx;
};

namespace {

using cg::Sampler;

const cg_sampler_i kBuiltin = {
    [](void * c, cg_token_data_array * a) { static_cast<Sampler *>(c)->apply(a); },
    [](void * c, cg_token t) { static_cast<Sampler *>(c)->accept(t); },
    [](void * c) { static_cast<Sampler *>(c)->reset(); },
    [](void * c) { delete static_cast<Sampler *>(c); },
};


cg_sampler * invalid(const std::string & message) {
    cg::fail(CG_ERR_INVALID_ARGUMENT, message);
    return nullptr;
}

void sort_desc(cg_token_data_array * cur) {
    if (cur->sorted) return;
    std::sort(cur->data, cur->data + cur->size, [](const cg_token_data & a, const cg_token_data & b) { return a.logit > b.logit; });
    cur->sorted = true;
}

// Fill p with softmax(logit); works sorted or not.
void softmax(cg_token_data_array * cur) {
    float max_l = -INFINITY;
    for (size_t i = 0; i < cur->size; ++i) max_l = std::max(max_l, cur->data[i].logit);
    double sum = 0.0;
    for (size_t i = 0; i < cur->size; ++i) {
        cur->data[i].p = cg::exp_nonpos(cur->data[i].logit - max_l);
        sum += cur->data[i].p;
    }
    const float inv = (float) (1.0 / sum);
    for (size_t i = 0; i < cur->size; ++i) cur->data[i].p *= inv;
}

struct Greedy : Sampler {
    bool apply_dense(const float * x, int32_t n, cg_token_data_array * cur) override {
        const int32_t top = cg::argmax_first(x, n);
        if (top < 0) return false;
        cur->data[0] = {top, x[top], 1.0f};
        cur->size = 1;
        cur->selected = 0;
        cur->sorted = true;
        return true;
    }
    void apply(cg_token_data_array * cur) override {
        if (cur->size == 0) return;
        if (cur->sorted) { cur->selected = 0; return; }
        // A branch-free max pass (vectorizes), then the first index holding it.
        float best = cur->data[0].logit;
        for (size_t i = 1; i < cur->size; ++i) best = cur->data[i].logit > best ? cur->data[i].logit : best;
        size_t at = 0;
        while (at + 1 < cur->size && !(cur->data[at].logit == best)) ++at;
        cur->selected = (int64_t) at;
    }
};

struct Dist : Sampler {
    uint32_t           seed;
    std::mt19937       rng;
    std::vector<float>  e;      // exp(logit - max), dense
    std::vector<double> block;  // sums of e per block of kBlock

    explicit Dist(uint32_t s) : seed(s) { reset(); }
    void reset() override { rng.seed(seed == CG_SEED_RANDOM ? std::random_device{}() : seed); }
    // Draw from softmax(logit): exponentials into a dense buffer with sums per
    // block of 1024, then find the block holding the draw and scan only it.
    void apply(cg_token_data_array * cur) override {
        const size_t n = cur->size;
        if (n == 0) return;
        constexpr size_t kBlock = 1024;
        float mx = -INFINITY;
        for (size_t i = 0; i < n; ++i) mx = std::max(mx, cur->data[i].logit);
        e.resize(n);
        for (size_t i = 0; i < n; ++i) e[i] = cg::exp_nonpos(cur->data[i].logit - mx);
        block.resize((n + kBlock - 1) / kBlock);
        double total = 0.0;
        for (size_t b = 0; b < block.size(); ++b) {
            const size_t end = std::min(n, (b + 1) * kBlock);
            float acc = 0.0f;
            for (size_t i = b * kBlock; i < end; ++i) acc += e[i];
            block[b] = acc;
            total += acc;
        }
        double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * total;
        size_t b = 0;
        while (b + 1 < block.size() && u >= block[b]) u -= block[b++];
        size_t pick = std::min(n, (b + 1) * kBlock) - 1;
        for (size_t i = b * kBlock; i < pick; ++i) {
            if (u < e[i]) { pick = i; break; }
            u -= e[i];
        }
        cur->selected = (int64_t) pick;
    }
};

struct Temp : Sampler {
    float t;
    explicit Temp(float t_) : t(t_) {}
    void apply(cg_token_data_array * cur) override {
        for (size_t i = 0; i < cur->size; ++i) cur->data[i].logit /= t;
    }
};

struct TopK : Sampler {
    size_t k;
    explicit TopK(int32_t k_) : k((size_t) k_) {}
    void apply(cg_token_data_array * cur) override {
        if (k >= cur->size) return;
        if (!cur->sorted) {
            std::partial_sort(cur->data, cur->data + k, cur->data + cur->size,
                              [](const cg_token_data & a, const cg_token_data & b) { return a.logit > b.logit; });
            cur->sorted = true;
        }
        cur->size = k;
    }
};

struct TopP : Sampler {
    float p;
    explicit TopP(float p_) : p(p_) {}
    void apply(cg_token_data_array * cur) override {
        if (p >= 1.0f || cur->size <= 1) return;
        sort_desc(cur);
        softmax(cur);
        float acc = 0.0f;
        size_t keep = cur->size;
        for (size_t i = 0; i < cur->size; ++i) {
            acc += cur->data[i].p;
            if (acc >= p) { keep = i + 1; break; }
        }
        cur->size = keep;
    }
};

// Keep tokens whose probability is at least p times the best one's:
// logit >= max_logit + log(p), no softmax needed.
struct MinP : Sampler {
    float p;
    explicit MinP(float p_) : p(p_) {}
    void apply(cg_token_data_array * cur) override {
        if (p <= 0.0f || cur->size <= 1) return;
        float max_l = -INFINITY;
        for (size_t i = 0; i < cur->size; ++i) max_l = std::max(max_l, cur->data[i].logit);
        const float threshold = max_l + std::log(p);
        size_t n = 0;
        for (size_t i = 0; i < cur->size; ++i) {
            if (cur->data[i].logit >= threshold) cur->data[n++] = cur->data[i];
        }
        cur->size = n;  // order is preserved, so sorted stays valid
    }
};

// Repetition penalty over the last `last_n` accepted tokens (llama.cpp's rule:
// positive logits are divided, negative ones multiplied).
struct Penalties : Sampler {
    int32_t             last_n;
    float               penalty;
    std::deque<cg_token> window;
    Penalties(int32_t n, float pen) : last_n(n), penalty(pen) {}
    void accept(cg_token t) override {
        if (last_n <= 0) return;
        window.push_back(t);
        if ((int32_t) window.size() > last_n) window.pop_front();
    }
    void reset() override { window.clear(); }
    void apply(cg_token_data_array * cur) override {
        if (window.empty()) return;
        std::vector<cg_token> seen(window.begin(), window.end());
        std::sort(seen.begin(), seen.end());
        seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
        for (cg_token t : seen) {
            cg_token_data * d = nullptr;
            // Fast path: candidates still in vocabulary order.
            if ((size_t) t < cur->size && cur->data[t].id == t) {
                d = &cur->data[t];
            } else {
                for (size_t i = 0; i < cur->size; ++i) {
                    if (cur->data[i].id == t) { d = &cur->data[i]; break; }
                }
            }
            if (!d) continue;
            d->logit = d->logit > 0 ? d->logit / penalty : d->logit * penalty;
        }
        cur->sorted = false;
    }
};

// Blocks a token that would complete an n-gram the generated text already holds (fairseq's and
// transformers' no_repeat_ngram_size): what stops a small model from looping. The tokens accepted
// before the first apply after a reset are the prompt, and repeating them stays allowed: the user's
// own phrases and the names of the private context are what personalized text is made of.
// Given text classes (cg::text_classes), n-grams are of classes, not ids, and whitespace-only tokens
// are left out: markup that loops in variants of spacing ("*  \n*   \n**" again as "*\n* \n**") and
// phrases repeated in another case are repeats too.
struct NoRepeatNgram : Sampler {
    size_t                        n;
    const std::vector<int32_t> *  classes;  // token -> class, -1 to skip; null: compare ids
    std::vector<int32_t>          history;  // ids, or classes
    size_t                        generated_from = SIZE_MAX;
    NoRepeatNgram(int32_t size, const std::vector<int32_t> * text_classes) : n((size_t) size), classes(text_classes) {}
    int32_t key(cg_token t) const {
        return !classes ? t : t >= 0 && (size_t) t < classes->size() ? (*classes)[(size_t) t] : -1;
    }
    void accept(cg_token t) override {
        const int32_t k = key(t);
        if (k >= 0) history.push_back(k);
    }
    void reset() override {
        history.clear();
        generated_from = SIZE_MAX;
    }
    void apply(cg_token_data_array * cur) override {
        if (generated_from == SIZE_MAX) generated_from = history.size();
        const size_t k = n - 1, h = history.size();
        if (h < k + 1 || h - k <= generated_from) return;
        std::vector<int32_t> banned;
        for (size_t i = generated_from; i + k < h; ++i) {  // an earlier n-gram whose first n-1 keys end the text
            if (std::equal(history.begin() + i, history.begin() + i + k, history.end() - k)) banned.push_back(history[i + k]);
        }
        if (banned.empty()) return;
        std::sort(banned.begin(), banned.end());
        auto is_banned = [&](cg_token t) {
            const int32_t c = key(t);
            return c >= 0 && std::binary_search(banned.begin(), banned.end(), c);
        };
        size_t left = 0;
        for (size_t j = 0; j < cur->size; ++j) left += !is_banned(cur->data[j].id) && cur->data[j].logit > -INFINITY;
        if (left == 0) return;  // every candidate repeats: better a repeat than no token
        for (size_t j = 0; j < cur->size; ++j) {
            if (is_banned(cur->data[j].id)) cur->data[j].logit = -INFINITY;
        }
        cur->sorted = false;
    }
};

struct Chain : Sampler {
    std::vector<cg_sampler *> links;
    ~Chain() override {
        for (auto * l : links) cg_sampler_free(l);
    }
    void apply(cg_token_data_array * cur) override {
        for (auto * l : links) l->iface.apply(l->ctx, cur);
    }
    bool apply_dense(const float * x, int32_t n, cg_token_data_array * cur) override {
        Sampler * first = links.empty() ? nullptr : cg::builtin_sampler(links[0]);
        if (!first || !first->apply_dense(x, n, cur)) return false;
        for (size_t i = 1; i < links.size(); ++i) links[i]->iface.apply(links[i]->ctx, cur);
        return true;
    }
    void accept(cg_token t) override {
        for (auto * l : links) cg_sampler_accept(l, t);
    }
    void reset() override {
        for (auto * l : links) cg_sampler_reset(l);
    }
};

}  // namespace

cg_sampler * cg::wrap_sampler(Sampler * s) { return new cg_sampler{kBuiltin, s}; }

cg::Sampler * cg::builtin_sampler(const cg_sampler * s) {
    return s && s->iface.apply == kBuiltin.apply ? static_cast<Sampler *>(s->ctx) : nullptr;
}

cg_sampler * cg::no_repeat_sampler(const cg_model * model, const cg_sampling_params & p) {
    if (p.no_repeat_ngram <= 0) return nullptr;
    return p.no_repeat_text ? cg_sampler_init_no_repeat_ngram_text(model, p.no_repeat_ngram)
                            : cg_sampler_init_no_repeat_ngram(p.no_repeat_ngram);
}

extern "C" {

cg_sampler * cg_sampler_init_custom(const cg_sampler_i * iface, void * ctx) {
    if (!iface || !iface->apply) return invalid("a custom sampler needs an apply function");
    return new cg_sampler{*iface, ctx};
}

cg_sampler * cg_sampler_init_greedy(void) { return cg::wrap_sampler(new Greedy); }
cg_sampler * cg_sampler_init_dist(uint32_t seed) { return cg::wrap_sampler(new Dist(seed)); }

cg_sampler * cg_sampler_init_temp(float t) {
    if (!(t > 0.0f) || std::isinf(t)) return invalid("temperature must be a finite number > 0 for the temp sampler, got " + std::to_string(t));
    return cg::wrap_sampler(new Temp(t));
}

cg_sampler * cg_sampler_init_top_k(int32_t k) {
    if (k <= 0) return invalid("top_k must be > 0, got " + std::to_string(k));
    return cg::wrap_sampler(new TopK(k));
}

cg_sampler * cg_sampler_init_top_p(float p) {
    if (!(p > 0.0f && p <= 1.0f)) return invalid("top_p must be in (0, 1], got " + std::to_string(p));
    return cg::wrap_sampler(new TopP(p));
}

cg_sampler * cg_sampler_init_min_p(float p) {
    if (!(p >= 0.0f && p <= 1.0f)) return invalid("min_p must be in [0, 1], got " + std::to_string(p));
    return cg::wrap_sampler(new MinP(p));
}

cg_sampler * cg_sampler_init_no_repeat_ngram(int32_t n) {
    if (n < 1) return invalid("no_repeat_ngram must be >= 1 (0 leaves it out of a chain), got " + std::to_string(n));
    return cg::wrap_sampler(new NoRepeatNgram(n, nullptr));
}

cg_sampler * cg_sampler_init_no_repeat_ngram_text(const cg_model * model, int32_t n) {
    if (!model) return invalid("the no-repeat n-gram sampler that compares text needs the model (its vocabulary)");
    if (n < 1) return invalid("no_repeat_ngram must be >= 1 (0 leaves it out of a chain), got " + std::to_string(n));
    return cg::wrap_sampler(new NoRepeatNgram(n, &cg::text_classes(model)));
}

cg_sampler * cg_sampler_init_penalties(int32_t last_n, float repeat_penalty) {
    if (!(repeat_penalty > 0.0f) || std::isinf(repeat_penalty)) {
        return invalid("repeat_penalty must be a finite number > 0, got " + std::to_string(repeat_penalty));
    }
    if (last_n < 0) return invalid("repeat_last_n must be >= 0, got " + std::to_string(last_n));
    return cg::wrap_sampler(new Penalties(last_n, repeat_penalty));
}

cg_sampler * cg_sampler_chain_init(void) { return cg::wrap_sampler(new Chain); }

int32_t cg_sampler_chain_add(cg_sampler * chain, cg_sampler * link) {
    Chain * c = dynamic_cast<Chain *>(cg::builtin_sampler(chain));
    if (!c || !link) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_sampler_chain_add needs a chain and a non-NULL link");
    c->links.push_back(link);
    return CG_OK;
}

void cg_sampler_apply(cg_sampler * s, cg_token_data_array * cur) { s->iface.apply(s->ctx, cur); }
void cg_sampler_accept(cg_sampler * s, cg_token t) { if (s->iface.accept) s->iface.accept(s->ctx, t); }
void cg_sampler_reset(cg_sampler * s) { if (s->iface.reset) s->iface.reset(s->ctx); }

void cg_sampler_free(cg_sampler * s) {
    if (!s) return;
    if (s->iface.free) s->iface.free(s->ctx);
    delete s;
}

namespace {

cg_token sample_into(cg_sampler * s, const float * logits, std::vector<cg_token_data> & cand) {
    const size_t n_vocab = cand.size();
    cg_token_data_array arr{cand.data(), n_vocab, -1, false};
    cg::clear_error();
    Sampler * builtin = cg::builtin_sampler(s);
    if (!builtin || !builtin->apply_dense(logits, (int32_t) n_vocab, &arr)) {
        arr = {cand.data(), n_vocab, -1, false};
        for (size_t i = 0; i < n_vocab; ++i) cand[i] = {(cg_token) i, logits[i], 0.0f};
        s->iface.apply(s->ctx, &arr);
    }
    if (arr.selected < 0 || (size_t) arr.selected >= arr.size) {
        if (!*cg_last_error()) cg::fail(CG_ERR_INVALID_ARGUMENT, "the sampler chain selected no token (end it with greedy or dist)");
        return -1;
    }
    const cg_token_data & chosen = arr.data[arr.selected];
    if (std::isnan(chosen.logit)) {
        cg::fail(CG_ERR_DECODE, "the scores are NaN");
        return -1;
    }
    cg_sampler_accept(s, chosen.id);
    return chosen.id;
}

}  // namespace

cg_token cg_sampler_sample(cg_sampler * s, cg_session * session, int32_t row) {
    const float * logits = cg_session_logits(session, row);
    if (!logits) return -1;
    return sample_into(s, logits, session->candidates);
}

cg_token cg_sampler_sample_logits(cg_sampler * s, const float * logits, int32_t n_vocab) {
    if (!s || !logits || n_vocab <= 0) {
        cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_sampler_sample_logits needs a sampler and n_vocab > 0 scores");
        return -1;
    }
    thread_local std::vector<cg_token_data> scratch;
    scratch.resize((size_t) n_vocab);
    return sample_into(s, logits, scratch);
}

struct cg_sampling_params cg_sampling_default_params(void) {
    cg_sampling_params p;
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = CG_SEED_RANDOM;
    p.no_repeat_ngram = 0;
    p.no_repeat_text = false;
    return p;
}

int32_t cg_sampler_init_from_params(const cg_model * model, const struct cg_sampling_params * p, cg_sampler ** out) {
    if (!p || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "sampling params and out must not be NULL");
    *out = nullptr;
    if (std::isnan(p->temperature) || std::isinf(p->temperature)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "temperature must be a finite number, got " + std::to_string(p->temperature));
    }
    if (p->top_k < 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "top_k must be >= 0 (0 disables), got " + std::to_string(p->top_k));
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "top_p must be in (0, 1], got " + std::to_string(p->top_p));
    }
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "min_p must be in [0, 1], got " + std::to_string(p->min_p));
    }
    if (!(p->repeat_penalty > 0.0f) || std::isinf(p->repeat_penalty)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "repeat_penalty must be a finite number > 0, got " + std::to_string(p->repeat_penalty));
    }
    if (p->repeat_last_n < 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "repeat_last_n must be >= 0");
    if (p->no_repeat_ngram < 0) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "no_repeat_ngram must be >= 0 (0 disables), got " + std::to_string(p->no_repeat_ngram));
    }

    if (p->no_repeat_ngram > 0 && p->no_repeat_text && !model) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "no_repeat_text compares token texts: it needs the model (got NULL)");
    }

    cg_sampler * chain = cg_sampler_chain_init();
    if (p->repeat_penalty != 1.0f && p->repeat_last_n > 0) {
        cg_sampler_chain_add(chain, cg_sampler_init_penalties(p->repeat_last_n, p->repeat_penalty));
    }
    if (cg_sampler * no_repeat = cg::no_repeat_sampler(model, *p)) cg_sampler_chain_add(chain, no_repeat);
    if (p->temperature <= 0.0f) {
        cg_sampler_chain_add(chain, cg_sampler_init_greedy());
    } else {
        if (p->top_k > 0) cg_sampler_chain_add(chain, cg_sampler_init_top_k(p->top_k));
        if (p->top_p < 1.0f) cg_sampler_chain_add(chain, cg_sampler_init_top_p(p->top_p));
        if (p->min_p > 0.0f) cg_sampler_chain_add(chain, cg_sampler_init_min_p(p->min_p));
        cg_sampler_chain_add(chain, cg_sampler_init_temp(p->temperature));
        cg_sampler_chain_add(chain, cg_sampler_init_dist(p->seed));
    }
    *out = chain;
    return CG_OK;
}

}  // extern "C"
