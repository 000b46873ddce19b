/*
 * Fuzzer of the remote-provider interface: a provider that answers with
 * garbage (malformed steps, NULL buffers, out-of-range ids, NaN/inf/positive
 * logprobs, random bytes, more or fewer steps than asked, failures, refusals,
 * reused handles), driving cg_cogen over a real model. Meant for
 * AddressSanitizer builds. It also checks the engine's side of the contract:
 * every handle released exactly once, never waited on after release.
 *
 *   cogenesis_provider_fuzz MODEL.gguf [iterations] [seed]
 *
 * Prints "ok <generations> <fallbacks> <refusals>" and exits 0, or names the
 * broken rule and exits 1.
 */
#include "cogenesis.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HANDLES 4096
#define MAX_STEPS 40
#define MAX_TOP 30

static uint64_t rng_state;
static uint32_t rnd(void) {  /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t) ((rng_state * 2685821657736338717ULL) >> 32);
}
static int chance(int percent) { return (int) (rnd() % 100) < percent; }

struct fuzz {
    int32_t n_vocab;
    int64_t next_handle;
    unsigned char state[MAX_HANDLES];  /* 0 unused, 1 submitted, 2 waited, 3 released */
    int     broken;
    cg_remote_step steps[MAX_STEPS];
    char           bytes[MAX_STEPS][MAX_TOP + 1][12];
    const char *   texts[MAX_STEPS][MAX_TOP];
    int32_t        lens[MAX_STEPS][MAX_TOP];
    cg_token       ids[MAX_STEPS][MAX_TOP];
    float          lps[MAX_STEPS][MAX_TOP];
};

static float junk_logprob(void) {
    switch (rnd() % 8) {
        case 0: return NAN;
        case 1: return INFINITY;
        case 2: return -INFINITY;
        case 3: return 5.0f;
        case 4: return -9999.0f;
        default: return -(float) (rnd() % 2000) / 100.0f;
    }
}

static int32_t fz_submit(void * user, const cg_remote_request * r, int64_t * handle, char * error, int32_t cap) {
    struct fuzz * f = user;
    if (!r || !r->text || (int32_t) strlen(r->text) != r->text_len || r->n_steps < 1) {
        f->broken = 1;
        fprintf(stderr, "broken: a malformed request\n");
    }
    for (int32_t i = 0; i < r->n_tokens; ++i) (void) r->tokens[i], (void) r->may_leave[i];  /* readable */
    if (chance(5)) { snprintf(error, (size_t) cap, "refused"); return CG_ERR_REFUSED; }
    if (chance(10)) { snprintf(error, (size_t) cap, "submit failed %u", rnd()); return CG_ERR_DECODE; }
    if (f->next_handle >= MAX_HANDLES) return CG_ERR_DECODE;
    *handle = f->next_handle++;
    f->state[*handle] = 1;
    return CG_OK;
}

static int32_t fz_wait(void * user, int64_t handle, const cg_remote_step ** out, int32_t * n_out, char * error, int32_t cap) {
    struct fuzz * f = user;
    if (handle < 0 || handle >= MAX_HANDLES || f->state[handle] != 1) {
        f->broken = 1;
        fprintf(stderr, "broken: wait on handle %lld in state %d\n", (long long) handle,
                handle >= 0 && handle < MAX_HANDLES ? f->state[handle] : -1);
        return CG_ERR_DECODE;
    }
    f->state[handle] = 2;
    if (chance(5)) { snprintf(error, (size_t) cap, "refused late"); return CG_ERR_REFUSED; }
    if (chance(10)) { snprintf(error, (size_t) cap, "timeout"); return CG_ERR_DECODE; }
    if (chance(3)) { *out = NULL; *n_out = (int32_t) (rnd() % 5); return CG_OK; }  /* steps promised, none given */
    const int32_t n = (int32_t) (rnd() % (MAX_STEPS + 3)) - 2;  /* -2 .. MAX_STEPS */
    for (int32_t m = 0; m < (n > 0 ? n : 0); ++m) {
        cg_remote_step * s = &f->steps[m];
        memset(s, 0, sizeof *s);
        const int id_form = chance(40);
        s->n_top = chance(5) ? -1 : (int32_t) (rnd() % (MAX_TOP + 1));
        for (int32_t i = 0; i < (s->n_top > 0 ? s->n_top : 0); ++i) {
            const int32_t len = (int32_t) (rnd() % 12);
            for (int32_t b = 0; b < len; ++b) f->bytes[m][i][b] = (char) (chance(70) ? 'a' + rnd() % 26 : rnd() % 256);
            f->texts[m][i] = f->bytes[m][i];
            f->lens[m][i] = len;
            f->ids[m][i] = (cg_token) (rnd() % (uint32_t) (f->n_vocab + 10)) - 5;
            f->lps[m][i] = junk_logprob();
        }
        s->token = chance(5) ? NULL : f->bytes[m][MAX_TOP];
        s->token_len = chance(5) ? -1 : (int32_t) (rnd() % 3);
        memcpy(f->bytes[m][MAX_TOP], " the", 4);
        s->token_id = (cg_token) (rnd() % (uint32_t) (f->n_vocab + 10)) - 5;
        s->top_logprobs = chance(3) ? NULL : f->lps[m];
        if (id_form) {
            s->top_ids = chance(3) ? NULL : f->ids[m];
        } else {
            s->top_text = f->texts[m];
            s->top_len = chance(3) ? NULL : f->lens[m];
        }
    }
    *out = f->steps;
    *n_out = n;
    return CG_OK;
}

static void fz_release(void * user, int64_t handle) {
    struct fuzz * f = user;
    if (handle < 0 || handle >= MAX_HANDLES || f->state[handle] == 0 || f->state[handle] == 3) {
        f->broken = 1;
        fprintf(stderr, "broken: release of handle %lld twice or unknown\n", (long long) handle);
        return;
    }
    f->state[handle] = 3;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [iterations] [seed]\n", argv[0]);
        return 2;
    }
    const int iterations = argc > 2 ? atoi(argv[2]) : 40;
    rng_state = argc > 3 ? strtoull(argv[3], NULL, 10) : 0x9E3779B97F4A7C15ULL;
    cg_model * model = NULL;
    if (cg_model_load(argv[1], cg_model_default_params(), &model) != CG_OK) {
        fprintf(stderr, "error: %s\n", cg_last_error());
        return 1;
    }
    struct cg_session_params sp = cg_session_default_params();
    sp.n_ctx = 512;
    sp.n_seq_max = 2;
    cg_session * session = NULL;
    if (cg_session_init(model, sp, &session) != CG_OK) return 1;
    static struct fuzz f;
    f.n_vocab = cg_model_n_vocab(model);
    f.next_handle = 1;
    const cg_remote_provider provider = {fz_submit, fz_wait, fz_release, &f};
    const char * text = "<|im_start|>user\nWrite a note to Ingrid about the Lofoten race.<|im_end|>\n<|im_start|>assistant\n";
    cg_token prompt[64];
    const int32_t n_prompt = cg_tokenize(model, text, (int32_t) strlen(text), true, true, prompt, 64);
    int generations = 0, fallbacks = 0, refusals = 0;
    for (int it = 0; it < iterations; ++it) {
        struct cg_cogen_params p = cg_cogen_default_params();
        p.max_tokens = 1 + (int32_t) (rnd() % 12);
        p.lookahead = 1 + (int32_t) (rnd() % 8);
        p.attribution.enabled = chance(70);
        p.batch_verify = chance(30);
        p.overlap = chance(80);
        p.fusion.fill = chance(50) ? CG_FILL_MASK : CG_FILL_TAIL;
        p.fusion.plausible = chance(30) ? 0.0f : 0.1f;
        p.remote_vocab = chance(50) ? model : NULL;
        p.sampling.temperature = chance(50) ? 0.0f : 0.8f;
        p.sampling.seed = rnd();
        cg_cogen * co = NULL;
        if (cg_cogen_init(session, prompt, n_prompt, prompt, n_prompt, "public: ", &p, &provider, &co) != CG_OK) {
            fprintf(stderr, "error: init: %s\n", cg_last_error());
            return 1;
        }
        int32_t rc = CG_OK;
        while (rc == CG_OK && cg_cogen_finish_reason(co) == CG_FINISH_NONE) {
            struct cg_cogen_token t;
            const char * out;
            int32_t len;
            rc = cg_cogen_next(co, &t, &out, &len);
            if (rc == CG_OK && (len < 0 || (t.token >= f.n_vocab))) {
                fprintf(stderr, "broken: a bad token or text length\n");
                return 1;
            }
        }
        if (rc == CG_ERR_REFUSED) ++refusals;
        else if (rc != CG_OK) { fprintf(stderr, "error: next: %d %s\n", rc, cg_last_error()); return 1; }
        fallbacks += cg_cogen_fallback_reason(co)[0] != '\0';
        cg_cogen_free(co);
        ++generations;
        for (int64_t h = 1; h < f.next_handle; ++h) {
            if (f.state[h] == 1 || f.state[h] == 2) {
                fprintf(stderr, "broken: handle %lld never released\n", (long long) h);
                return 1;
            }
        }
        if (f.broken) return 1;
        if (f.next_handle > MAX_HANDLES - 64) {
            memset(f.state, 0, sizeof f.state);
            f.next_handle = 1;
        }
    }
    printf("ok %d %d %d\n", generations, fallbacks, refusals);
    cg_session_free(session);
    cg_model_free(model);
    return 0;
}
