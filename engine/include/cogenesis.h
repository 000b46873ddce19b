/*
 * cogenesis.h - C ABI of the cogenesis-device engine.
 *
 * A small native core over llama.cpp: load a GGUF model, keep per-thread
 * sessions (a llama context each), prefill and decode one or several token
 * sequences, sample with a chain of small samplers, generate with streaming
 * and cancellation, and save/restore the KV state of a prompt prefix.
 *
 * Conventions (after llama.h):
 *   - every object is an opaque handle created by *_init / *_load and
 *     released by the matching *_free;
 *   - parameter structs come from *_default_params();
 *   - calls that can fail return an int32_t status (CG_OK on success) and
 *     leave a message for cg_last_error() on the calling thread;
 *   - calls that fill a caller buffer return the size they need (which may
 *     exceed the capacity passed; call again with a larger buffer) or -1 on error.
 *
 * Threads: a cg_model may be shared by any number of threads; a cg_session
 * must be used by one thread at a time (cg_session_cancel excepted).
 * The engine does no network I/O.
 */
#ifndef COGENESIS_H
#define COGENESIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The engine's version; cg_version() returns CG_VERSION. */
#define CG_VERSION_MAJOR 0
#define CG_VERSION_MINOR 1
#define CG_VERSION_PATCH 0
#define CG_VERSION "0.1.0"

/* Symbols a shared build of the engine exports (define CG_SHARED, and CG_BUILD while building it);
 * a static build, as the Python extension and the examples use, needs neither. */
#ifdef CG_SHARED
#    if defined(_WIN32) && !defined(__MINGW32__)
#        ifdef CG_BUILD
#            define CG_API __declspec(dllexport)
#        else
#            define CG_API __declspec(dllimport)
#        endif
#    else
#        define CG_API __attribute__((visibility("default")))
#    endif
#else
#    define CG_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t cg_token;

typedef struct cg_model      cg_model;
typedef struct cg_session    cg_session;
typedef struct cg_sampler    cg_sampler;
typedef struct cg_generation cg_generation;

enum cg_status {
    CG_OK                   = 0,
    CG_ERR_INVALID_ARGUMENT = 1, /* a parameter is out of range, NaN, NULL... */
    CG_ERR_FILE_NOT_FOUND   = 2, /* a model or state file does not exist */
    CG_ERR_MODEL_LOAD       = 3, /* not a GGUF file, truncated, unsupported */
    CG_ERR_CONTEXT_OVERFLOW = 4, /* tokens do not fit in the context window */
    CG_ERR_DECODE           = 5, /* llama_decode failed */
    CG_ERR_STATE            = 6, /* state file corrupt or from another model */
    CG_ERR_NO_TEMPLATE      = 7, /* the model has no usable chat template */
    CG_ERR_IO               = 8, /* a file could not be written or read */
    CG_ERR_CANCELLED        = 9, /* stopped by cg_session_cancel */
    CG_ERR_REFUSED          = 10, /* the remote provider refused to send (privacy block): fail closed */
};

/* Message describing the last failure on the calling thread ("" if none). */
CG_API const char * cg_last_error(void);

/* Version string of the engine: CG_VERSION of the build. */
CG_API const char * cg_version(void);

/* ---------------------------------------------------------------- model */

struct cg_model_params {
    bool use_mmap;   /* map the file instead of reading it into memory */
    bool vocab_only; /* load the tokenizer only (no weights) */
    /* Repack weights into llama.cpp's extra CPU buffer types (AMX, CPU_REPACK). Off by default: on
     * CPUs with AMX, llama.cpp's AMX matrix multiply segfaults on the first decode (llama.cpp
     * issue 20824; seen with llama-cpp-python 0.3.36's build and SmolLM2 Q4_1). */
    bool use_extra_bufts;
};

CG_API struct cg_model_params cg_model_default_params(void);

/* Load a GGUF file. Checks that it exists and starts with the GGUF magic
 * before handing it to llama.cpp. On success *out owns the model. */
CG_API int32_t cg_model_load(const char * path, struct cg_model_params params, cg_model ** out);
CG_API void    cg_model_free(cg_model * model);

CG_API int32_t  cg_model_n_vocab(const cg_model * model);
CG_API int32_t  cg_model_n_ctx_train(const cg_model * model);
CG_API cg_token cg_model_token_bos(const cg_model * model);
CG_API cg_token cg_model_token_eos(const cg_model * model);
/* True for any end-of-generation token (EOS, EOT, ...). */
CG_API bool     cg_model_token_is_eog(const cg_model * model, cg_token token);
/* Wall time spent in cg_model_load, in milliseconds. */
CG_API double   cg_model_load_ms(const cg_model * model);
/* Human readable description ("llama 135M Q4_1"); returns bytes needed. */
CG_API int32_t  cg_model_desc(const cg_model * model, char * buf, int32_t capacity);
/* Size of the model weights in bytes. */
CG_API uint64_t cg_model_size(const cg_model * model);

/* Text -> tokens. Returns the number of tokens (written up to capacity). */
CG_API int32_t cg_tokenize(const cg_model * model, const char * text, int32_t text_len,
                    bool add_special, bool parse_special, cg_token * out, int32_t capacity);
/* One token -> its bytes (not NUL-terminated). Returns the byte count. */
CG_API int32_t cg_token_to_piece(const cg_model * model, cg_token token, bool special,
                          char * buf, int32_t capacity);
/* Tokens -> text (not NUL-terminated). Returns the byte count. */
CG_API int32_t cg_detokenize(const cg_model * model, const cg_token * tokens, int32_t n_tokens,
                      bool special, char * buf, int32_t capacity);

/* True if the GGUF metadata carries a chat template. */
CG_API bool    cg_model_has_chat_template(const cg_model * model);

/* Format a conversation with the chat template stored in the GGUF metadata.
 * roles[i] / contents[i] are NUL-terminated. Returns the byte count of the
 * prompt, or -1 with CG_ERR_NO_TEMPLATE when the model has none. */
CG_API int32_t cg_chat_apply_template(const cg_model * model, const char * const * roles,
                               const char * const * contents, int32_t n_messages,
                               bool add_generation_prompt, char * buf, int32_t capacity);

/* -------------------------------------------------------------- session */

struct cg_session_params {
    int32_t n_ctx;           /* context window in tokens, shared by all sequences (> 0) */
    int32_t n_batch;         /* max tokens per llama_decode call during prefill */
    int32_t n_ubatch;        /* tokens per compute step; sizes the compute buffer */
    int32_t n_threads;       /* threads for single-token decoding */
    int32_t n_threads_batch; /* threads for prefill */
    int32_t n_seq_max;       /* number of sequences that can be decoded in one batch */
    int32_t flash_attn;      /* -1 auto, 0 off, 1 on (default: on; changes numerics slightly) */
    int32_t n_outputs_max;   /* max logits rows per cg_session_decode; sizes the compute buffer */
};

CG_API struct cg_session_params cg_session_default_params(void);

/* Create a session (one llama context with its KV cache) over a model.
 * The model must outlive the session. */
CG_API int32_t cg_session_init(cg_model * model, struct cg_session_params params, cg_session ** out);
CG_API void    cg_session_free(cg_session * session);

CG_API int32_t cg_session_n_ctx(const cg_session * session);
CG_API int32_t cg_session_n_seq_max(const cg_session * session);

/* Append tokens to sequence seq_id and evaluate them (in n_batch chunks).
 * Afterwards logits row 0 holds the scores after the last token. */
CG_API int32_t cg_session_prefill(cg_session * session, int32_t seq_id, const cg_token * tokens, int32_t n_tokens);

/* Append tokens[i] to sequence seq_ids[i] for i < n and evaluate them all in
 * one llama_decode. Logits row i then holds the scores after entry i.
 * A sequence may appear several times; its entries are appended in order. */
CG_API int32_t cg_session_decode(cg_session * session, const int32_t * seq_ids, const cg_token * tokens, int32_t n);

/* Scores (n_vocab floats) of row `row` of the last prefill/decode, or NULL.
 * The pointer stays valid until the next call that evaluates tokens. */
CG_API const float * cg_session_logits(cg_session * session, int32_t row);

/* Number of tokens held in the KV cache for seq_id. */
CG_API int32_t cg_session_seq_len(const cg_session * session, int32_t seq_id);
/* Copy the tokens of seq_id; returns the count. */
CG_API int32_t cg_session_seq_tokens(const cg_session * session, int32_t seq_id, cg_token * out, int32_t capacity);
/* Keep the first n_keep tokens of seq_id and drop the rest (0 clears it). */
CG_API int32_t cg_session_seq_truncate(cg_session * session, int32_t seq_id, int32_t n_keep);

/* Write the KV state and tokens of seq_id to a file, tagged with the model's
 * fingerprint and closed by a checksum over tokens and KV data. This is the private-context
 * cache: prefill once, reuse often. The file is created 0600 under a unique temporary name
 * beside path, then renamed over it. */
CG_API int32_t cg_session_state_save(cg_session * session, int32_t seq_id, const char * path);
/* Replace seq_id with the state in a file written by cg_session_state_save. Fails with
 * CG_ERR_STATE if the file is larger than cg_session_state_max_size (checked before reading),
 * corrupt, truncated, spliced from two saves (checksum) or from another model. */
CG_API int32_t cg_session_state_load(cg_session * session, int32_t seq_id, const char * path);
/* The same state as bytes, for apps that store or encrypt the cache themselves:
 * cg_session_state_size gives the bytes seq_id needs (0 when it is empty or out of range),
 * cg_session_state_get writes them to buf and their count to *n_written, and
 * cg_session_state_set loads them back (the checks of cg_session_state_load apply). */
CG_API size_t  cg_session_state_size(cg_session * session, int32_t seq_id);
CG_API int32_t cg_session_state_get(cg_session * session, int32_t seq_id, uint8_t * buf, size_t capacity, size_t * n_written);
CG_API int32_t cg_session_state_set(cg_session * session, int32_t seq_id, const uint8_t * data, size_t size);
/* The largest state this session can hold (a full window of KV data), in bytes. */
CG_API size_t  cg_session_state_max_size(const cg_session * session);

/* Ask the session's running prefill/generation to stop as soon as possible.
 * Safe to call from any thread. The flag clears when the next generation starts. */
CG_API void cg_session_cancel(cg_session * session);

/* --------------------------------------------------------- LoRA adapter */

/* A LoRA adapter in GGUF (what `cogenesis finetune` exports, or llama.cpp's
 * convert_lora_to_gguf.py writes), loaded once for a model and attached to any
 * of its sessions. Usage:
 *   cg_adapter * a;
 *   cg_adapter_load(model, "adapter.gguf", &a);
 *   cg_session_set_adapter(session, a, 1.0f);    // every decode now uses base + scale * LoRA
 *   ...
 *   cg_session_set_adapter(session, NULL, 0.0f);  // back to the base weights
 *   cg_adapter_free(a);                           // after detaching it from every session */
typedef struct cg_adapter cg_adapter;

/* Load an adapter for model. Fails with CG_ERR_FILE_NOT_FOUND, or CG_ERR_MODEL_LOAD
 * for a file that is not GGUF or not a LoRA adapter of this model's architecture
 * and shapes. The model must outlive the adapter. */
CG_API int32_t cg_adapter_load(cg_model * model, const char * path, cg_adapter ** out);
CG_API void    cg_adapter_free(cg_adapter * adapter);

/* Attach adapter to the session with a scale (1 = as trained; the file's alpha/rank
 * applies on top), replacing any attached one; NULL detaches. A change clears the
 * session's KV cache (its sequences restart empty), since cached tokens were computed
 * with the old weights; state files record the adapter and refuse another. The
 * adapter must stay loaded while attached. */
CG_API int32_t cg_session_set_adapter(cg_session * session, const cg_adapter * adapter, float scale);

/* -------------------------------------------------------------- sampler */

typedef struct cg_token_data {
    cg_token id;
    float    logit;
    float    p;
} cg_token_data;

typedef struct cg_token_data_array {
    cg_token_data * data;
    size_t          size;
    int64_t         selected; /* index into data chosen by a selecting sampler, -1 if none */
    bool            sorted;   /* data is sorted by logit, descending */
} cg_token_data_array;

/* A sampler is one small object: apply transforms or selects from the
 * candidates, accept observes the token finally chosen, reset starts over.
 * A chain is itself a sampler. Custom samplers plug in through cg_sampler_i. */
typedef struct cg_sampler_i {
    void (*apply) (void * ctx, cg_token_data_array * candidates); /* required */
    void (*accept)(void * ctx, cg_token token);                   /* optional */
    void (*reset) (void * ctx);                                   /* optional */
    void (*free)  (void * ctx);                                   /* optional */
} cg_sampler_i;

CG_API cg_sampler * cg_sampler_init_custom(const cg_sampler_i * iface, void * ctx);

/* Built-in samplers. Each returns NULL (and sets cg_last_error) for invalid
 * arguments. */
CG_API cg_sampler * cg_sampler_init_greedy(void);
CG_API cg_sampler * cg_sampler_init_dist(uint32_t seed);      /* sample from softmax(logits) */
CG_API cg_sampler * cg_sampler_init_temp(float temperature);  /* temperature > 0 */
CG_API cg_sampler * cg_sampler_init_top_k(int32_t k);         /* k > 0 */
CG_API cg_sampler * cg_sampler_init_top_p(float p);           /* 0 < p <= 1 */
CG_API cg_sampler * cg_sampler_init_min_p(float p);           /* 0 <= p <= 1 */
CG_API cg_sampler * cg_sampler_init_penalties(int32_t last_n, float repeat_penalty); /* repeat_penalty > 0 */
/* Never complete an n-gram (n >= 1) of the generated text: tokens accepted before the chain's
 * first apply after a reset (the prompt) do not count, so the prompt's phrases may be repeated. */
CG_API cg_sampler * cg_sampler_init_no_repeat_ngram(int32_t n);
/* The same over token texts: tokens compare equal when their texts, lower-cased (ASCII) and without
 * whitespace, are equal, and tokens that are only whitespace are left out of the n-grams, so markup
 * looping in variants of spacing and phrases repeated in another case are caught. The model's token
 * classes are made on the first call (about 0.1 s for 150k tokens) and kept with the model. */
CG_API cg_sampler * cg_sampler_init_no_repeat_ngram_text(const cg_model * model, int32_t n);

CG_API cg_sampler * cg_sampler_chain_init(void);
/* Append `link` to `chain`; the chain takes ownership of it. */
CG_API int32_t      cg_sampler_chain_add(cg_sampler * chain, cg_sampler * link);

CG_API void cg_sampler_apply (cg_sampler * sampler, cg_token_data_array * candidates);
CG_API void cg_sampler_accept(cg_sampler * sampler, cg_token token);
CG_API void cg_sampler_reset (cg_sampler * sampler);
CG_API void cg_sampler_free  (cg_sampler * sampler);

/* Build candidates from logits row `row` of the session, apply the sampler,
 * accept the chosen token and return it (-1 on error). */
CG_API cg_token cg_sampler_sample(cg_sampler * sampler, cg_session * session, int32_t row);

/* The same over any dense row of n_vocab scores (e.g. computed by the app). */
CG_API cg_token cg_sampler_sample_logits(cg_sampler * sampler, const float * logits, int32_t n_vocab);

#define CG_SEED_RANDOM 0xFFFFFFFFu

struct cg_sampling_params {
    float    temperature;    /* <= 0 means greedy; must not be NaN */
    int32_t  top_k;          /* 0 disables */
    float    top_p;          /* in (0, 1]; 1 disables */
    float    min_p;          /* in [0, 1]; 0 disables */
    float    repeat_penalty; /* > 0; 1 disables */
    int32_t  repeat_last_n;  /* tokens considered by the penalty */
    uint32_t seed;           /* CG_SEED_RANDOM picks one */
    int32_t  no_repeat_ngram; /* n >= 1: never complete an n-gram the generated text already holds; 0 disables */
    bool     no_repeat_text;  /* compare the n-grams' tokens by text (cg_sampler_init_no_repeat_ngram_text) */
};

CG_API struct cg_sampling_params cg_sampling_default_params(void);

/* Validate params and build the standard chain:
 * penalties -> no-repeat n-gram -> top_k -> top_p -> min_p -> temperature -> dist (or greedy).
 * `model` gives the vocabulary to links that read token texts (no_repeat_text); NULL otherwise. */
CG_API int32_t cg_sampler_init_from_params(const cg_model * model, const struct cg_sampling_params * params,
                                           cg_sampler ** out);

/* ----------------------------------------------------------- generation */

enum cg_finish_reason {
    CG_FINISH_NONE         = 0, /* still running */
    CG_FINISH_EOS          = 1, /* the model produced an end-of-generation token */
    CG_FINISH_STOP         = 2, /* a stop string appeared (it is not part of the text) */
    CG_FINISH_LENGTH       = 3, /* max_tokens reached */
    CG_FINISH_CONTEXT_FULL = 4, /* the context window is full */
    CG_FINISH_CANCELLED    = 5, /* cg_session_cancel or the callback asked to stop */
};

/* Called once per generated token with the text it completes (possibly empty:
 * text is held back while it may be an incomplete UTF-8 character or the start
 * of a stop string). Return false to stop generating. */
typedef bool (*cg_token_callback)(cg_token token, const char * text, int32_t text_len, void * user_data);

struct cg_generate_params {
    int32_t              seq_id;     /* sequence to generate on */
    int32_t              max_tokens; /* >= 0 */
    const char * const * stop;       /* stop strings (may be NULL) */
    int32_t              n_stop;
    bool                 ignore_eos;
    cg_token_callback    on_token;   /* cg_generate only; may be NULL */
    void *               user_data;
};

CG_API struct cg_generate_params cg_generate_default_params(void);

/* Timing statistics of one generation, in milliseconds. */
struct cg_timings {
    double  load_ms;        /* model load (once per model) */
    double  prefill_ms;     /* evaluating the prompt tokens not already cached */
    double  first_token_ms; /* start of generation to first token chosen */
    double  decode_ms;      /* evaluating generated tokens */
    double  sample_ms;      /* sampler chain */
    int32_t n_prompt;       /* prompt tokens */
    int32_t n_reused;       /* prompt tokens found in the KV cache */
    int32_t n_generated;    /* tokens generated (excluding a final EOS) */
    int32_t n_decoded;      /* generated tokens evaluated (decode_ms covers these) */
};

/* Begin a generation: reuse the longest cached prefix of the prompt on
 * params->seq_id, evaluate the rest, and reset the sampler (then feed it the
 * prompt for penalties). session and sampler must outlive the generation. */
CG_API int32_t cg_generation_init(cg_session * session, const cg_token * prompt, int32_t n_prompt,
                            cg_sampler * sampler, const struct cg_generate_params * params,
                            cg_generation ** out);

/* Produce one token. On CG_OK: *token is the token (-1 once finished),
 * *text / *text_len the newly released text (valid until the next call).
 * Check cg_generation_finish_reason after each call. */
CG_API int32_t cg_generation_next(cg_generation * gen, cg_token * token, const char ** text, int32_t * text_len);

CG_API enum cg_finish_reason cg_generation_finish_reason(const cg_generation * gen);
/* All text released so far (not NUL-terminated). */
CG_API const char *      cg_generation_text(const cg_generation * gen, int32_t * len);
CG_API int32_t           cg_generation_tokens(const cg_generation * gen, cg_token * out, int32_t capacity);
CG_API struct cg_timings cg_generation_timings(const cg_generation * gen);
CG_API void              cg_generation_free(cg_generation * gen);

/* Run a whole generation, calling params->on_token for each token.
 * Writes the finish reason and timings if the pointers are not NULL. */
CG_API int32_t cg_generate(cg_session * session, const cg_token * prompt, int32_t n_prompt,
                    cg_sampler * sampler, const struct cg_generate_params * params,
                    enum cg_finish_reason * finish_reason, struct cg_timings * timings);

/* --------------------------------------------------------------- fusion */

/* How local and remote next-token scores are combined. Both sides are first
 * turned into log-probabilities: the local side by log-softmax over its dense
 * logits, the remote side from its sparse top-k logprobs (see cg_sparse_fill). */
enum cg_fusion_rule {
    CG_FUSION_WEIGHTED      = 0, /* w*local + (1-w)*remote; w = 0.5 is the paper's mean */
    CG_FUSION_MAX           = 1, /* max(local, remote) */
    CG_FUSION_CONTEXT_DELTA = 2, /* remote + alpha*(local - local_noctx) */
    CG_FUSION_GATE          = 3, /* weighted, with w from a learned gate (cg_gate) */
};

/* What the remote side says about tokens outside its top-k. Never 0. */
enum cg_sparse_fill {
    CG_FILL_MASK  = 0, /* -inf: only listed tokens can be chosen */
    CG_FILL_TAIL  = 1, /* an equal share of the remaining mass 1 - sum(p_topk) */
    CG_FILL_LOCAL = 2, /* the remaining mass, shared in proportion to the local model's probabilities:
                        * unlisted tokens keep the local model's order and ratios after fusion */
};

/* A remote next-token distribution known on k tokens. Handling, by design:
 * k == 0 makes the step local-only; logprobs <= -9999 (OpenAI's sentinel) are
 * dropped; duplicate ids are merged (probabilities added); ids outside the
 * vocabulary, NaN or +inf logprobs, and logprobs > 0.001 are errors. */
typedef struct cg_sparse_dist {
    const int32_t * ids;
    const float *   logprobs;
    int32_t         k;
} cg_sparse_dist;

struct cg_fusion_params {
    enum cg_fusion_rule rule;
    enum cg_sparse_fill fill;
    float   weight; /* w in [0, 1]: the local share (WEIGHTED) */
    float   alpha;  /* a >= 0: strength of the private-context delta (CONTEXT_DELTA) */
    /* The remote may only choose among tokens the local model (with the private
     * context) finds plausible: a token whose local probability is below
     * plausible * (local top-1 probability) is removed from the fused scores.
     * When no listed remote token is left, the step is local-only ("overruled").
     * So a remote cannot dictate text the local model would not write, whatever
     * it lists. 0 turns the limit off (the paper's fusion); in [0, 1]. */
    float   plausible;
};

CG_API struct cg_fusion_params cg_fusion_default_params(void);

#define CG_GATE_N_FEATURES 8

/* Vocabulary-independent features of one step, the learned gate's input:
 * entropies, top-1 probabilities, overlap and divergence of the top-k lists. */
struct cg_fusion_features {
    float local_entropy;    /* nats, full local distribution */
    float remote_entropy;   /* nats, remote top-k renormalized */
    float local_top_p;      /* probability of the local top-1 */
    float remote_top_p;     /* probability of the remote top-1 */
    float overlap;          /* |local top-k & remote top-k| / k, k = remote k (at most 20) */
    float divergence;       /* Jensen-Shannon (nats) on the union of both top-k lists, renormalized */
    float local_p_of_remote_top; /* local probability of the remote's top-1 */
    float remote_p_of_local_top; /* remote probability of the local's top-1 (its fill if unlisted) */
};

/* Attribution of one fused step: who wanted what, and the weight used. */
struct cg_fusion_info {
    float    weight;       /* local weight used: w (WEIGHTED), the gate's output (GATE), 1 on
                              local-only steps, NaN for MAX and CONTEXT_DELTA (no weight) */
    cg_token local_top;    /* argmax of the local scores */
    cg_token remote_top;   /* remote top-1 (-1 on local-only steps) */
    cg_token fused_top;    /* argmax of the fused scores */
    cg_token chosen;       /* token the chain finally chose (-1 until accepted) */
    bool     consulted;    /* a remote distribution took part */
    bool     overruled;    /* the remote listed no plausible token, so the step was local-only */
    struct cg_fusion_features features; /* filled for GATE, zero otherwise */
};

/* A small MLP w = sigmoid(w2 . tanh(W1 ((f - mean) / std) + b1) + b2) over the
 * CG_GATE_N_FEATURES features. The text file holds, whitespace separated:
 * "cogenesis-gate 1 <n_features> <n_hidden>", then mean[n_features],
 * std[n_features], W1[n_hidden * n_features] (row-major), b1[n_hidden],
 * w2[n_hidden], b2. */
typedef struct cg_gate cg_gate;

CG_API int32_t cg_gate_load(const char * path, cg_gate ** out);
/* The same from arrays (copied). */
CG_API int32_t cg_gate_init(int32_t n_hidden, const float * mean, const float * std_, const float * w1,
                     const float * b1, const float * w2, float b2, cg_gate ** out);
CG_API void    cg_gate_free(cg_gate * gate);
/* The gate's output for given features. */
CG_API float   cg_gate_weight(const cg_gate * gate, const struct cg_fusion_features * features);

/* Fuse dense local logits (n_vocab floats) with a sparse remote distribution
 * into out (n_vocab floats; may alias local). local_noctx is required for
 * CONTEXT_DELTA only, gate for GATE only. info may be NULL. Local logits may
 * be -inf (masked) but not NaN or +inf. */
CG_API int32_t cg_fuse(const struct cg_fusion_params * params, const cg_gate * gate, const float * local,
                const float * local_noctx, int32_t n_vocab, const cg_sparse_dist * remote, float * out,
                struct cg_fusion_info * info);

/* The fusion link of a sampler chain (put it first). Before each step give it
 * the remote distribution with cg_fusion_sampler_set_remote; a step with none
 * set is local-only. The distribution is consumed by that step. gate may be
 * NULL unless params->rule is GATE; it must outlive the sampler. */
CG_API cg_sampler * cg_sampler_init_fusion(const struct cg_fusion_params * params, const cg_gate * gate, int32_t n_vocab);
/* Copies remote (and local_noctx, n_vocab floats, for CONTEXT_DELTA). */
CG_API int32_t cg_fusion_sampler_set_remote(cg_sampler * fusion, const cg_sparse_dist * remote, const float * local_noctx);
/* Attribution of the last fused step (chosen is set once the chain accepted a token). */
CG_API int32_t cg_fusion_sampler_last_info(const cg_sampler * fusion, struct cg_fusion_info * out);

/* The chain collaboration samples with: no-repeat n-gram -> fusion -> the rest of the standard chain
 * (cg_sampler_init_from_params). The no-repeat link goes first so that it rules out a repeat on the
 * local scores, before the fusion link: a token it rules out is never chosen whatever the remote
 * says of it, and the plausibility limit counts from the best token still allowed (after the fusion,
 * a repeat that was the only plausible token would have to be let through). *fusion is the fusion
 * link, owned by *chain, for cg_fusion_sampler_set_remote. */
CG_API int32_t cg_sampler_init_fusion_chain(const cg_model * model, const struct cg_fusion_params * fusion_params,
                                            const cg_gate * gate, const struct cg_sampling_params * sampling,
                                            cg_sampler ** chain, cg_sampler ** fusion);

/* The paper's P/K/T schedule: consult the remote on every step below p, then
 * in each cycle of k + t steps skip k and consult t. step is 0-based. */
CG_API bool cg_schedule_consult(int32_t p, int32_t k, int32_t t, int32_t step);

/* ------------------------------------------------------ vocabulary bridge */

/* Maps token strings of another tokenizer (a remote model's) onto this
 * model's vocabulary by longest-prefix match over the local tokens' bytes. */
typedef struct cg_vocab_bridge cg_vocab_bridge;

CG_API int32_t cg_vocab_bridge_init(const cg_model * model, cg_vocab_bridge ** out);
CG_API void    cg_vocab_bridge_free(cg_vocab_bridge * bridge);

/* Local id whose bytes are the longest prefix of text[0:len], or -1 (for an
 * empty string). A control token's name (this model's "<|im_end|>", or another
 * family's end of turn: "<|eot_id|>", "<|endoftext|>", "</s>", ...) maps to the
 * control token, or to this model's end of generation, never to a literal '<'.
 * Results are cached; safe to call from several threads. */
CG_API cg_token cg_vocab_bridge_lookup(cg_vocab_bridge * bridge, const char * text, int32_t len);

/* Map n remote (token bytes, logprob) pairs to a local sparse distribution:
 * empty tokens, NaN logprobs and the -9999 sentinel are dropped, tokens that
 * land on the same local id have their probabilities added. Writes up to n
 * entries to out_ids / out_logprobs and returns their count. */
CG_API int32_t cg_vocab_bridge_map(cg_vocab_bridge * bridge, const char * const * tokens, const int32_t * lens,
                            const float * logprobs, int32_t n, cg_token * out_ids, float * out_logprobs);

/* ------------------------------------------------- collaborative generation */

/*
 * The logits-mode loop of the CoGenesis method, in one object. The local model
 * (with the private context) and a remote model (without it) write together:
 * each remote request continues the text written so far for up to `lookahead`
 * positions and lists its top-k at each; the engine fuses position by position
 * and accepts while the fused token equals the remote's own (the remote's
 * scores were computed on exactly that prefix), rolls the KV cache back at the
 * first difference, and sends the next request from there. The local model
 * decodes its pending token while a request is in flight.
 *
 * The engine does no I/O: remote scores arrive through a cg_remote_provider
 * that the app implements (an HTTP client, a second model, ...).
 *
 * Egress privacy is decided here, on the device: before a generated token goes
 * into a request, the local model scores it with and without the private
 * context (a second sequence of the session, seeded with noctx_prompt). A token
 * the context explains is withheld: the request carries CG_PLACEHOLDER instead
 * (once per run) and its may_leave mask entry is 0.
 *
 * Usage:
 *   struct cg_cogen_params p = cg_cogen_default_params();
 *   p.max_tokens = 128;  // p.lookahead stays 0: adaptive
 *   struct cg_remote_provider prov = { my_submit, my_wait, my_release, my_state };
 *   cg_cogen * co;
 *   cg_cogen_init(session, prompt, n_prompt, noctx, n_noctx, public_prefix, &p, &prov, &co);
 *   while (cg_cogen_finish_reason(co) == CG_FINISH_NONE) {
 *       struct cg_cogen_token t; const char * text; int32_t len;
 *       if (cg_cogen_next(co, &t, &text, &len) != CG_OK) break;
 *       fwrite(text, 1, len, stdout);
 *   }
 *   cg_cogen_free(co);
 */

typedef struct cg_cogen cg_cogen;

#define CG_PLACEHOLDER "[PRIVATE]"

/* What a request carries. Every pointer is valid only during submit(). */
typedef struct cg_remote_request {
    const char *     text;         /* public_prefix + the generated text as it may leave (withheld runs
                                      replaced by CG_PLACEHOLDER); UTF-8, NUL-terminated */
    int32_t          text_len;
    const cg_token * tokens;       /* the generated tokens so far (local vocabulary) */
    const uint8_t *  may_leave;    /* per token: 1 = in the text as written, 0 = withheld */
    int32_t          n_tokens;
    int32_t          n_steps;      /* positions wanted: continue the text this many tokens, greedily */
    int32_t          top_k;        /* alternatives wanted per position (0 = the provider's default) */
    float            context_bits; /* private-context information in the sent tokens (attribution) */
} cg_remote_request;

/* One position of the remote's answer. Either text form (top_text/top_len, as a
 * server returns token strings; mapped onto the local vocabulary) or id form
 * (top_ids in the local vocabulary, for a provider that shares it). */
typedef struct cg_remote_step {
    const char *         token;        /* bytes of the token the remote chose at this position */
    int32_t              token_len;
    cg_token             token_id;     /* id form: the chosen token's local id */
    int32_t              n_top;        /* alternatives listed; 0 = no scores at this position */
    const char * const * top_text;     /* text form: bytes of each alternative ... */
    const int32_t *      top_len;      /* ... and their lengths; NULL top_text selects the id form */
    const cg_token *     top_ids;      /* id form */
    const float *        top_logprobs; /* natural-log probabilities (<= 0; -9999 and NaN are dropped) */
} cg_remote_step;

/* The remote side, implemented by the app. Threads: the engine calls all three
 * on the thread that runs cg_cogen_next or cg_cogen_free, never concurrently;
 * the provider may do its I/O on threads of its own. To cancel a wait from
 * another thread, the app calls cg_session_cancel and makes its wait return
 * (any status): the generation then ends as cancelled, not as a fallback. Errors: return non-zero and write a
 * NUL-terminated message into error (error_capacity bytes); the engine then
 * goes on local-only and keeps the message (cg_cogen_fallback_reason). Return
 * CG_ERR_REFUSED instead to end the generation with that status. */
typedef struct cg_remote_provider {
    /* Start a request and return at once (do the waiting in wait). Writes a
     * handle of the provider's choosing. */
    int32_t (*submit)(void * user, const cg_remote_request * request, int64_t * handle,
                      char * error, int32_t error_capacity);
    /* Block until the answer to `handle`, then point *steps at n_steps positions
     * (buffers owned by the provider, valid until release(handle)). Called at
     * most once per handle; n_steps may be fewer than asked (end of text). */
    int32_t (*wait)(void * user, int64_t handle, const cg_remote_step ** steps, int32_t * n_steps,
                    char * error, int32_t error_capacity);
    /* The engine is done with `handle`: cancel it if still in flight and free its
     * buffers. Called exactly once for every handle submit returned. */
    void    (*release)(void * user, int64_t handle);
    void *  user;
    /* Optional (NULL: none): the app's text guard asked about each new token before it may join a
     * request, with attribution on or off. text: the end of the generated text as it may leave (withheld runs
     * as CG_PLACEHOLDER), whose last n_new bytes are the new token. Returns the byte offset in text
     * where the first private span reaching into the new bytes starts, or -1 if none does. The engine
     * withholds the unsent tokens from there on and ends the run, so no request shows the remote that
     * a token it proposed, and the engine took, is one the guard would redact. */
    int32_t (*vet)(void * user, const char * text, int32_t text_len, int32_t n_new);
} cg_remote_provider;

/* Attribution (egress privacy), decided on the device: withhold a token when
 * log p(t|context) - log p(t|no context) > threshold nats, or log p(t|no context)
 * < min_logprob; the rest of a withheld word, and a rare withheld word repeated,
 * go too; and at most budget_bits of context information are sent in any
 * `window` consecutive sent tokens. */
struct cg_attribution_params {
    bool    enabled;     /* score tokens without the context (a second sequence of the session) */
    float   threshold;   /* nats, >= 0 */
    float   min_logprob; /* nats */
    float   budget_bits; /* >= 0 */
    int32_t window;      /* tokens, >= 1 */
};

CG_API struct cg_attribution_params cg_attribution_default_params(void);

struct cg_cogen_params {
    int32_t max_tokens;      /* tokens to generate (>= 1) */
    int32_t lookahead;       /* positions asked per request, 1..31 (1 = the paper's per-token protocol);
                                0 (default) = adaptive: each request's depth is chosen from the measured
                                latency per request and per token, local speed and acceptance */
    int32_t top_k;           /* alternatives asked per position (0 = the provider's default) */
    bool    overlap;         /* decode the pending token while a request is in flight */
    bool    batch_verify;    /* score the remote's lookahead tokens in one batch, on both sequences
                                when attributing, instead of one at a time (exact only on
                                batch-invariant backends; pays off where a batch costs less than
                                its tokens one by one, which on a CPU it barely does) */
    int32_t schedule_p, schedule_k, schedule_t; /* cg_schedule_consult; schedule_p < 0 consults always */
    const char * const * stop; /* stop strings (may be NULL) */
    int32_t n_stop;
    struct cg_attribution_params attribution;
    struct cg_fusion_params   fusion;
    const cg_gate *           gate;     /* for CG_FUSION_GATE; must outlive the object */
    struct cg_sampling_params sampling; /* default: greedy, no_repeat_ngram 4 by text (else cg_sampling_default_params) */
    cg_vocab_bridge *         bridge;   /* maps text-form steps (NULL: built at init, a vocabulary scan) */
    /* The remote's tokenizer when it is known (of any family): lookahead then
     * continues only while the remote's tokens are how it would tokenize their
     * text, so a fresh request would see the same prefix. NULL: token
     * boundaries are checked only. Must outlive the object. */
    const cg_model *          remote_vocab;
};

CG_API struct cg_cogen_params cg_cogen_default_params(void);

/* One generated token and how it was chosen. */
struct cg_cogen_token {
    cg_token token;
    bool     fused;          /* remote scores took part (false: local-only or overruled) */
    bool     withheld;       /* requests carry a placeholder for it */
    float    weight;         /* the local side's weight (1 when local-only) */
    float    local_logprob;  /* log p(token | context) under the local model */
    float    remote_logprob; /* under the remote's top-k; NaN when unlisted or not consulted */
    float    context_nats;   /* log-ratio with vs without the context; NaN when not scored */
};

/* Statistics of one collaborative generation (milliseconds and counts). */
struct cg_cogen_stats {
    double  prefill_ms;      /* the prompts (both sequences' first part) not already cached */
    double  first_token_ms;  /* init to the first token */
    double  decode_ms;       /* evaluating generated tokens (and the no-context side with them) */
    double  sample_ms;       /* fusion and the sampler chain */
    double  wait_ms;         /* blocked in the provider's wait */
    double  attribution_ms;  /* scoring tokens without the context, deciding what may leave */
    double  total_ms;        /* init to the latest call */
    int32_t n_prompt;
    int32_t n_reused;        /* prompt tokens found in the KV cache */
    int32_t n_generated;     /* tokens generated (excluding a final end-of-generation token) */
    int32_t n_requests;      /* requests submitted */
    int32_t n_accepted;      /* positions where the fused token was the remote's own */
    int32_t n_asked;         /* positions asked of the remote, over all requests */
    int32_t n_scored;        /* positions fused with the remote's scores (n_asked - n_scored: wasted) */
    int32_t n_decodes;       /* local evaluations after the prompts' (one batch each, both sequences) */
    int32_t n_withheld;      /* generated tokens withheld (as of the latest request) */
    float   context_bits;    /* context information in the tokens sent (latest request) */
};

/* Start: prefill `prompt` (with the private context) on sequence 0 with
 * prefix reuse; `noctx_prompt` (the same task without it) seeds sequence 1
 * when attribution is on. public_prefix: the remote's prompt text, which each
 * request's text begins with. provider NULL: local-only. The session needs
 * n_seq_max >= 2 for attribution and must outlive the object, as must the
 * provider. The provider struct is copied. */
CG_API int32_t cg_cogen_init(cg_session * session, const cg_token * prompt, int32_t n_prompt,
                      const cg_token * noctx_prompt, int32_t n_noctx, const char * public_prefix,
                      const struct cg_cogen_params * params, const cg_remote_provider * provider,
                      cg_cogen ** out);

/* Produce one token. On CG_OK: *token describes it (token -1 once finished),
 * *text / *text_len the newly released text (valid until the next call).
 * Check cg_cogen_finish_reason after each call. Cancel with cg_session_cancel. */
CG_API int32_t cg_cogen_next(cg_cogen * co, struct cg_cogen_token * token, const char ** text, int32_t * text_len);

CG_API enum cg_finish_reason cg_cogen_finish_reason(const cg_cogen * co);
/* All text released so far (not NUL-terminated). */
CG_API const char *          cg_cogen_text(const cg_cogen * co, int32_t * len);
CG_API struct cg_cogen_stats cg_cogen_get_stats(const cg_cogen * co);
/* Why generation went on local-only after a provider failure ("" if it did not). */
CG_API const char *          cg_cogen_fallback_reason(const cg_cogen * co);
/* Releases any request in flight, and the no-context sequence's cells. */
CG_API void                  cg_cogen_free(cg_cogen * co);

#ifdef __cplusplus
}
#endif

#endif /* COGENESIS_H */
