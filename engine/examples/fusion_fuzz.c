/*
 * Fuzz the fusion and vocabulary-bridge ABI with malformed inputs; meant to run
 * under AddressSanitizer.
 *
 *   cogenesis_fusion_fuzz ITERATIONS [MODEL.gguf]
 *
 * Every call must either succeed with output free of NaN and +inf, or fail
 * with a status and a message. Prints "ok <calls> <errors>" on success.
 */
#include "cogenesis.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rng_state = 12345u;
static uint32_t next_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}
static float uniform(void) { return (float) (next_u32() % 1000000) / 1000000.0f; }

static float odd_value(void) {
    switch (next_u32() % 6) {
        case 0: return NAN;
        case 1: return INFINITY;
        case 2: return -INFINITY;
        case 3: return -9999.0f;
        case 4: return 0.5f;
        default: return -uniform() * 10.0f;
    }
}

static int check_output(const float * out, int32_t n) {
    for (int32_t i = 0; i < n; ++i) {
        if (isnan(out[i]) || out[i] == INFINITY) {
            fprintf(stderr, "bad output value at %d\n", i);
            return 0;
        }
    }
    return 1;
}

int main(int argc, char ** argv) {
    const int iterations = argc > 1 ? atoi(argv[1]) : 1000;
    long calls = 0, errors = 0;
    cg_gate * gate = NULL;
    float mean[CG_GATE_N_FEATURES] = {0}, sd[CG_GATE_N_FEATURES], w1[4 * CG_GATE_N_FEATURES], b1[4] = {0}, w2[4] = {1, -1, 0.5f, 0};
    for (int j = 0; j < CG_GATE_N_FEATURES; ++j) sd[j] = 1.0f;
    for (int j = 0; j < 4 * CG_GATE_N_FEATURES; ++j) w1[j] = uniform() - 0.5f;
    if (cg_gate_init(4, mean, sd, w1, b1, w2, 0.1f, &gate) != CG_OK) return 1;

    for (int it = 0; it < iterations; ++it) {
        const int32_t n_vocab = 1 + (int32_t) (next_u32() % 3000);
        /* One draw per statement: the order in which the operands of one expression (or the
         * arguments of one call) are evaluated is unspecified, and differs between x86 and ARM64
         * compilers, so two draws in one expression would fuzz other inputs on each machine. */
        const int32_t k_small = (int32_t) (next_u32() % 40) - 2;
        const int32_t k = k_small + (next_u32() % 50 == 0 ? n_vocab : 0);
        float * local = malloc(sizeof(float) * (size_t) n_vocab);
        float * noctx = malloc(sizeof(float) * (size_t) n_vocab);
        float * out = malloc(sizeof(float) * (size_t) n_vocab);
        const int32_t kk = k > 0 ? k : 1;
        int32_t * ids = malloc(sizeof(int32_t) * (size_t) kk);
        float * lps = malloc(sizeof(float) * (size_t) kk);
        for (int32_t i = 0; i < n_vocab; ++i) {
            local[i] = next_u32() % 500 == 0 ? odd_value() : (uniform() - 0.5f) * 20.0f;
            noctx[i] = next_u32() % 500 == 0 ? odd_value() : (uniform() - 0.5f) * 20.0f;
        }
        for (int32_t j = 0; j < kk; ++j) {
            ids[j] = next_u32() % 20 == 0 ? (int32_t) (next_u32() % (unsigned) (n_vocab + 10)) - 5
                                          : (int32_t) (next_u32() % (unsigned) n_vocab);
            lps[j] = next_u32() % 10 == 0 ? odd_value() : -uniform() * 8.0f;
        }
        struct cg_fusion_params p = cg_fusion_default_params();
        p.rule = (enum cg_fusion_rule) (next_u32() % 5);  /* 4 is invalid */
        p.fill = (enum cg_sparse_fill) (next_u32() % 4);  /* 3 is invalid */
        p.weight = next_u32() % 10 == 0 ? odd_value() : uniform();
        p.alpha = next_u32() % 10 == 0 ? odd_value() : uniform() * 2.0f;
        p.plausible = next_u32() % 10 == 0 ? odd_value() : (next_u32() % 2 ? uniform() : 0.0f);
        const cg_sparse_dist dist = {ids, lps, k};
        const cg_gate * use_gate = next_u32() % 8 ? gate : NULL;
        const float * use_noctx = next_u32() % 8 ? noctx : NULL;
        const int32_t rc = cg_fuse(&p, use_gate, local, use_noctx, n_vocab, &dist, out, NULL);
        ++calls;
        if (rc == CG_OK) {
            if (!check_output(out, n_vocab)) return 1;
        } else {
            ++errors;
            if (strlen(cg_last_error()) == 0) {
                fprintf(stderr, "error %d without a message\n", rc);
                return 1;
            }
        }

        /* The same through a sampler chain: fusion link + greedy. */
        cg_sampler * link = cg_sampler_init_fusion(&p, gate, n_vocab);
        if (link) {
            cg_sampler * chain = cg_sampler_chain_init();
            cg_sampler_chain_add(chain, link);
            cg_sampler_chain_add(chain, cg_sampler_init_greedy());
            cg_fusion_sampler_set_remote(link, &dist, noctx);
            cg_token_data * cand = malloc(sizeof(cg_token_data) * (size_t) n_vocab);
            for (int32_t i = 0; i < n_vocab; ++i) cand[i] = (cg_token_data) {i, local[i], 0.0f};
            cg_token_data_array arr = {cand, (size_t) n_vocab, -1, false};
            cg_sampler_apply(chain, &arr);
            if (arr.selected >= (int64_t) arr.size) return 1;
            if (arr.selected >= 0) cg_sampler_accept(chain, arr.data[arr.selected].id);
            struct cg_fusion_info info;
            cg_fusion_sampler_last_info(link, &info);
            free(cand);
            cg_sampler_free(chain);
            ++calls;
        }
        free(local); free(noctx); free(out); free(ids); free(lps);
    }
    cg_gate_free(gate);

    if (argc > 2) {
        cg_model * model = NULL;
        struct cg_model_params mp = cg_model_default_params();
        mp.vocab_only = true;
        if (cg_model_load(argv[2], mp, &model) != CG_OK) return 1;
        cg_vocab_bridge * bridge = NULL;
        if (cg_vocab_bridge_init(model, &bridge) != CG_OK) return 1;
        for (int it = 0; it < iterations; ++it) {
            const int32_t n = (int32_t) (next_u32() % 8);
            char buf[8][24];
            const char * toks[8];
            int32_t lens[8];
            float lps[8];
            cg_token out_ids[8];
            float out_lps[8];
            for (int32_t j = 0; j < n; ++j) {
                lens[j] = (int32_t) (next_u32() % 24);
                for (int32_t b = 0; b < lens[j]; ++b) buf[j][b] = (char) (next_u32() % 256);
                toks[j] = buf[j];
                lps[j] = next_u32() % 5 == 0 ? odd_value() : -uniform() * 5.0f;
            }
            const int32_t m = cg_vocab_bridge_map(bridge, toks, lens, lps, n, out_ids, out_lps);
            ++calls;
            if (m < 0 || m > n) return 1;
            for (int32_t j = 0; j < m; ++j) {
                if (out_ids[j] < 0 || out_ids[j] >= cg_model_n_vocab(model) || !(out_lps[j] <= 0.0f)) return 1;
            }
        }
        cg_vocab_bridge_free(bridge);
        cg_model_free(model);
    }
    printf("ok %ld %ld\n", calls, errors);
    return 0;
}
