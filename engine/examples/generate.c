/*
 * A desktop app's view of the engine: plain C, only cogenesis.h.
 *
 *   cogenesis_example MODEL.gguf "prompt" [max_tokens] [state_file]
 *
 * Greedy-generates a continuation of the raw prompt, streaming it to stdout,
 * and prints timings to stderr. With state_file, the prompt's KV state is
 * saved there first and restored into a second session that does the
 * generation, the way an app reuses a prefilled private context.
 */
#include "cogenesis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool print_token(cg_token token, const char * text, int32_t len, void * user_data) {
    (void) token;
    (void) user_data;
    fwrite(text, 1, (size_t) len, stdout);
    fflush(stdout);
    return true;
}

static int die(const char * what) {
    fprintf(stderr, "error: %s: %s\n", what, cg_last_error());
    return 1;
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [max_tokens] [state_file]\n", argv[0]);
        return 2;
    }
    const int32_t max_tokens = argc > 3 ? atoi(argv[3]) : 32;
    const char * state_file = argc > 4 ? argv[4] : NULL;

    cg_model * model = NULL;
    if (cg_model_load(argv[1], cg_model_default_params(), &model) != CG_OK) return die("load");

    const int32_t n_prompt = cg_tokenize(model, argv[2], (int32_t) strlen(argv[2]), true, false, NULL, 0);
    cg_token * prompt = malloc(sizeof(cg_token) * (size_t) n_prompt);
    cg_tokenize(model, argv[2], (int32_t) strlen(argv[2]), true, false, prompt, n_prompt);

    struct cg_session_params sp = cg_session_default_params();
    sp.n_ctx = 512;
    cg_session * session = NULL;
    if (cg_session_init(model, sp, &session) != CG_OK) return die("session");

    if (state_file) {
        cg_session * writer = NULL;
        if (cg_session_init(model, sp, &writer) != CG_OK) return die("session");
        if (cg_session_prefill(writer, 0, prompt, n_prompt) != CG_OK) return die("prefill");
        if (cg_session_state_save(writer, 0, state_file) != CG_OK) return die("save");
        cg_session_free(writer);
        if (cg_session_state_load(session, 0, state_file) != CG_OK) return die("load state");
    }

    struct cg_sampling_params smp = cg_sampling_default_params();
    smp.temperature = 0.0f;
    cg_sampler * sampler = NULL;
    if (cg_sampler_init_from_params(model, &smp, &sampler) != CG_OK) return die("sampler");

    struct cg_generate_params gp = cg_generate_default_params();
    gp.max_tokens = max_tokens;
    gp.on_token = print_token;
    enum cg_finish_reason reason;
    struct cg_timings t;
    if (cg_generate(session, prompt, n_prompt, sampler, &gp, &reason, &t) != CG_OK) return die("generate");

    fprintf(stderr, "\nfinish=%d prompt=%d reused=%d generated=%d prefill=%.1fms first_token=%.1fms decode=%.1fms\n",
            (int) reason, t.n_prompt, t.n_reused, t.n_generated, t.prefill_ms, t.first_token_ms, t.decode_ms);

    cg_sampler_free(sampler);
    cg_session_free(session);
    cg_model_free(model);
    free(prompt);
    return 0;
}
