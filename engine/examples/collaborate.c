/*
 * An app that collaborates through the C ABI alone: cogenesis.h, no Python.
 *
 *   cogenesis_collaborate MODEL.gguf INSTRUCTION ABOUT_THE_USER [max_tokens] [lookahead] [REMOTE.gguf]
 *
 * The local model reads the instruction with ABOUT_THE_USER as its system
 * message (the private context); the "remote" reads only the instruction and
 * the text as it may leave. Here the remote provider is a second engine model
 * (REMOTE.gguf, by default the same file) run without the private context: a
 * real model and no network. An app replaces exactly the three provider
 * functions below with its HTTP client: submit() starts a request, wait()
 * blocks for its answer and hands over the steps, release() frees it.
 *
 * Greedy text goes to stdout; statistics to stderr.
 */
#include "cogenesis.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOP_K 20
#define MAX_STEPS 32

/* ------------------------------------------------------ the remote provider */

struct second_model {
    cg_model *   model;
    cg_session * session;
    /* The one request in flight (the engine never has more than one). */
    int64_t      handle;
    char *       text;
    int32_t      n_steps;
    int          requests;
    /* The answer, in the text form a server returns: token bytes and logprobs. */
    cg_remote_step steps[MAX_STEPS];
    char           pieces[MAX_STEPS][1 + TOP_K][64];
    const char *   top_text[MAX_STEPS][TOP_K];
    int32_t        top_len[MAX_STEPS][TOP_K];
    float          top_lp[MAX_STEPS][TOP_K];
};

static void set_error(char * error, int32_t capacity, const char * what) {
    snprintf(error, (size_t) capacity, "%s: %s", what, cg_last_error());
}

static int32_t provider_submit(void * user, const cg_remote_request * request, int64_t * handle,
                               char * error, int32_t capacity) {
    struct second_model * r = user;
    (void) error;
    (void) capacity;
    free(r->text);  /* the request's buffers live only during this call: copy what is needed */
    r->text = malloc((size_t) request->text_len + 1);
    memcpy(r->text, request->text, (size_t) request->text_len + 1);
    r->n_steps = request->n_steps < MAX_STEPS ? request->n_steps : MAX_STEPS;
    *handle = ++r->handle;
    r->requests++;
    return CG_OK;
}

/* The top TOP_K of a row as (id, logprob), best first. */
static int32_t top_k(const float * row, int32_t n_vocab, cg_token * ids, double * lps) {
    double mx = row[0], sum = 0.0;
    for (int32_t i = 1; i < n_vocab; ++i) if (row[i] > mx) mx = row[i];
    for (int32_t i = 0; i < n_vocab; ++i) sum += exp((double) row[i] - mx);
    const double lse = mx + log(sum);
    int32_t k = 0;
    for (int32_t i = 0; i < n_vocab; ++i) {
        const double lp = (double) row[i] - lse;
        if (k == TOP_K && lp <= lps[k - 1]) continue;
        int32_t j = k < TOP_K ? k++ : TOP_K - 1;
        while (j > 0 && lps[j - 1] < lp) { ids[j] = ids[j - 1]; lps[j] = lps[j - 1]; --j; }
        ids[j] = i;
        lps[j] = lp;
    }
    return k;
}

static int32_t provider_wait(void * user, int64_t handle, const cg_remote_step ** steps, int32_t * n_steps,
                             char * error, int32_t capacity) {
    struct second_model * r = user;
    if (handle != r->handle) {
        snprintf(error, (size_t) capacity, "unknown request %lld", (long long) handle);
        return CG_ERR_INVALID_ARGUMENT;
    }
    const int32_t len = (int32_t) strlen(r->text);
    const int32_t n = cg_tokenize(r->model, r->text, len, true, true, NULL, 0);
    cg_token * prompt = malloc(sizeof(cg_token) * (size_t) n);
    cg_tokenize(r->model, r->text, len, true, true, prompt, n);
    cg_session_seq_truncate(r->session, 0, 0);
    const int32_t rc = cg_session_prefill(r->session, 0, prompt, n);
    free(prompt);
    if (rc != CG_OK) { set_error(error, capacity, "prefill"); return rc; }
    const int32_t n_vocab = cg_model_n_vocab(r->model);
    int32_t m = 0;
    for (; m < r->n_steps; ++m) {
        cg_token ids[TOP_K];
        double lps[TOP_K];
        const int32_t k = top_k(cg_session_logits(r->session, 0), n_vocab, ids, lps);
        if (cg_model_token_is_eog(r->model, ids[0])) break;  /* end of text: no scores here */
        cg_remote_step * s = &r->steps[m];
        for (int32_t i = 0; i < k; ++i) {
            char * piece = r->pieces[m][1 + i];
            int32_t plen = cg_token_to_piece(r->model, ids[i], false, piece, 64);
            if (plen > 64 || plen < 0) plen = 0;  /* a longer token is left out of the list */
            r->top_text[m][i] = piece;
            r->top_len[m][i] = plen;
            r->top_lp[m][i] = (float) lps[i];
        }
        memset(s, 0, sizeof *s);
        s->token = r->top_text[m][0];
        s->token_len = r->top_len[m][0];
        s->token_id = -1;
        s->n_top = k;
        s->top_text = r->top_text[m];
        s->top_len = r->top_len[m];
        s->top_logprobs = r->top_lp[m];
        if (cg_session_decode(r->session, (const int32_t[]){0}, &ids[0], 1) != CG_OK) {
            set_error(error, capacity, "decode");
            return CG_ERR_DECODE;
        }
    }
    *steps = r->steps;
    *n_steps = m;
    return CG_OK;
}

static void provider_release(void * user, int64_t handle) {
    struct second_model * r = user;
    if (handle == r->handle) {
        free(r->text);
        r->text = NULL;
    }
}

/* ------------------------------------------------------------------ the app */

static int die(const char * what) {
    fprintf(stderr, "error: %s: %s\n", what, cg_last_error());
    return 1;
}

/* Text -> tokens of a chat: [system,] user, then the assistant's turn. */
static cg_token * chat_tokens(cg_model * model, const char * system, const char * user, int32_t * n) {
    const char * roles[2] = {"system", "user"};
    const char * contents[2] = {system, user};
    const int32_t skip = system ? 0 : 1;
    const int32_t len = cg_chat_apply_template(model, roles + skip, contents + skip, 2 - skip, true, NULL, 0);
    if (len < 0) return NULL;
    char * text = malloc((size_t) len + 1);
    cg_chat_apply_template(model, roles + skip, contents + skip, 2 - skip, true, text, len);
    text[len] = '\0';
    *n = cg_tokenize(model, text, len, true, true, NULL, 0);
    cg_token * tokens = malloc(sizeof(cg_token) * (size_t) *n);
    cg_tokenize(model, text, len, true, true, tokens, *n);
    free(text);
    return tokens;
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf INSTRUCTION ABOUT_THE_USER [max_tokens] [lookahead] [REMOTE.gguf]\n", argv[0]);
        return 2;
    }
    const char * instruction = argv[2];
    const char * about_user = argv[3];
    struct cg_cogen_params p = cg_cogen_default_params();
    p.max_tokens = argc > 4 ? atoi(argv[4]) : 32;
    p.lookahead = argc > 5 ? atoi(argv[5]) : 8;

    cg_model * model = NULL;
    if (cg_model_load(argv[1], cg_model_default_params(), &model) != CG_OK) return die("load");
    struct second_model remote = {0};
    if (argc > 6) {
        if (cg_model_load(argv[6], cg_model_default_params(), &remote.model) != CG_OK) return die("load remote");
    } else {
        remote.model = model;
    }
    p.remote_vocab = remote.model;  /* the remote's tokenizer is known: lookahead stays exact */

    struct cg_session_params sp = cg_session_default_params();
    sp.n_ctx = 1024;
    sp.n_seq_max = 2;  /* the private-context sequence, and the one without it (attribution) */
    cg_session * session = NULL;
    if (cg_session_init(model, sp, &session) != CG_OK) return die("session");
    struct cg_session_params rp = cg_session_default_params();
    rp.n_ctx = 1024;
    if (cg_session_init(remote.model, rp, &remote.session) != CG_OK) return die("remote session");

    int32_t n_prompt = 0, n_noctx = 0, n_public = 0;
    cg_token * prompt = chat_tokens(model, about_user, instruction, &n_prompt);
    cg_token * noctx = chat_tokens(model, NULL, instruction, &n_noctx);
    if (!prompt || !noctx) return die("chat template");
    /* The public prefix is the remote's own chat prompt for the instruction. */
    const char * roles[1] = {"user"};
    const char * contents[1] = {instruction};
    n_public = cg_chat_apply_template(remote.model, roles, contents, 1, true, NULL, 0);
    if (n_public < 0) return die("remote chat template");
    char * public_prefix = malloc((size_t) n_public + 1);
    cg_chat_apply_template(remote.model, roles, contents, 1, true, public_prefix, n_public);
    public_prefix[n_public] = '\0';

    const cg_remote_provider provider = {provider_submit, provider_wait, provider_release, &remote};
    cg_cogen * co = NULL;
    if (cg_cogen_init(session, prompt, n_prompt, noctx, n_noctx, public_prefix, &p, &provider, &co) != CG_OK) {
        return die("cogen");
    }
    int withheld = 0, fused = 0;
    while (cg_cogen_finish_reason(co) == CG_FINISH_NONE) {
        struct cg_cogen_token t;
        const char * text;
        int32_t len;
        if (cg_cogen_next(co, &t, &text, &len) != CG_OK) return die("next");
        fwrite(text, 1, (size_t) len, stdout);
        withheld += t.token >= 0 && t.withheld;
        fused += t.token >= 0 && t.fused;
    }
    fflush(stdout);
    const struct cg_cogen_stats st = cg_cogen_get_stats(co);
    const char * fallback = cg_cogen_fallback_reason(co);
    fprintf(stderr, "\nfinish=%d generated=%d fused=%d withheld=%d requests=%d accepted=%d provider_requests=%d "
            "wait=%.1fms decode=%.1fms total=%.1fms%s%s\n",
            (int) cg_cogen_finish_reason(co), st.n_generated, fused, withheld, st.n_requests, st.n_accepted,
            remote.requests, st.wait_ms, st.decode_ms, st.total_ms, fallback[0] ? " fallback=" : "", fallback);

    cg_cogen_free(co);
    free(public_prefix);
    free(prompt);
    free(noctx);
    free(remote.text);
    cg_session_free(remote.session);
    cg_session_free(session);
    if (remote.model != model) cg_model_free(remote.model);
    cg_model_free(model);
    return 0;
}
