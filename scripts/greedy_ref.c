// Reference greedy decoder on llama.cpp's C API: prints prompt ids, generated ids,
// and the top-5 logits of the first generated position, as one JSON object.
// The parity tests run it (through FERRITE_LLAMACPP_BIN) to get llama.cpp's answers on this
// machine; scripts/build-llamacpp.sh compiles it against the llama.cpp it builds.
// usage: greedy_ref MODEL PROMPT N_PREDICT
// env: REF_FLASH_ATTN=off disables flash attention (default: llama.cpp's auto, on for CPU);
//      REF_CACHE_TYPE=q8_0 (or q4_0, f16) sets the K and V cache type.
//      REF_N_CTX (default 1024), REF_N_BATCH (default: REF_N_CTX), REF_N_UBATCH (default 512).
//      REF_SWA_FULL=off: a sliding-window cache of the window plus a micro-batch, as llama.cpp's
//        tools (common_params.swa_full = false) and ferrite by default; the library's default
//        (llama_context_default_params) is a full-size one, as `ferrite --swa-full`.
//      REF_GRAMMAR_FILE=FILE constrains every step with that GBNF grammar (root rule "root"):
//        llama.cpp's grammar sampler, then greedy, as `llama-completion --grammar-file FILE --temp 0`.
//      REF_LORA=FILE[:SCALE][,FILE[:SCALE]...] applies LoRA adapters (scale 1 by default).
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(1); }
    fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    char *buf = malloc(n + 1);
    if (fread(buf, 1, n, f) != (size_t)n) exit(1);
    buf[n] = 0; fclose(f);
    return buf;
}

static void print_ids(const char *name, const llama_token *t, int n) {
    printf("\"%s\":[", name);
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", t[i]);
    printf("]");
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage\n"); return 2; }
    const char *path = argv[1], *prompt = argv[2];
    int n_predict = atoi(argv[3]);
    llama_log_set(NULL, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) return 1;
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    const char *e_ctx = getenv("REF_N_CTX"), *e_b = getenv("REF_N_BATCH"), *e_ub = getenv("REF_N_UBATCH");
    int n_ctx = e_ctx ? atoi(e_ctx) : 1024;
    llama_token *toks = malloc(sizeof(llama_token) * (n_ctx + 1));
    int n = llama_tokenize(vocab, prompt, strlen(prompt), toks, n_ctx, true, true);
    if (n < 0) { fprintf(stderr, "prompt longer than the context\n"); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx; cp.n_batch = e_b ? atoi(e_b) : n_ctx; cp.n_threads = 2; cp.n_threads_batch = 2;
    if (e_ub) cp.n_ubatch = atoi(e_ub);
    const char *swa = getenv("REF_SWA_FULL");
    if (swa && strcmp(swa, "off") == 0) cp.swa_full = false;
    const char *fa = getenv("REF_FLASH_ATTN"), *ct = getenv("REF_CACHE_TYPE");
    if (fa && strcmp(fa, "off") == 0) cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (ct) {
        enum ggml_type t = strcmp(ct, "q8_0") == 0 ? GGML_TYPE_Q8_0 : strcmp(ct, "q4_0") == 0 ? GGML_TYPE_Q4_0 : GGML_TYPE_F16;
        cp.type_k = t; cp.type_v = t;
    }
    struct llama_context *ctx = llama_init_from_model(model, cp);
    const char *lora = getenv("REF_LORA");
    if (lora && *lora) {
        struct llama_adapter_lora *ads[16]; float scales[16]; size_t n_ad = 0;
        char *spec = strdup(lora);
        for (char *tok = strtok(spec, ","); tok && n_ad < 16; tok = strtok(NULL, ",")) {
            char *colon = strrchr(tok, ':');
            scales[n_ad] = 1.0f;
            if (colon) { *colon = 0; scales[n_ad] = strtof(colon + 1, NULL); }
            ads[n_ad] = llama_adapter_lora_init(model, tok);
            if (!ads[n_ad]) { fprintf(stderr, "cannot load adapter %s\n", tok); return 1; }
            n_ad++;
        }
        if (llama_set_adapters_lora(ctx, ads, n_ad, scales)) { fprintf(stderr, "cannot set adapters\n"); return 1; }
    }
    const char *gfile = getenv("REF_GRAMMAR_FILE");
    struct llama_sampler *gsmpl = NULL;
    if (gfile && *gfile) {
        gsmpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
        struct llama_sampler *g = llama_sampler_init_grammar(vocab, slurp(gfile), "root");
        if (!g) { fprintf(stderr, "grammar does not parse\n"); return 1; }
        llama_sampler_chain_add(gsmpl, g);
        llama_sampler_chain_add(gsmpl, llama_sampler_init_greedy());
    }
    printf("{");
    print_ids("prompt_ids", toks, n);
    llama_token *out = malloc(sizeof(llama_token) * (n_predict + 1)); int n_out = 0;
    struct llama_batch batch = llama_batch_get_one(toks, n);
    float top_logit[5]; int top_id[5];
    for (int i = 0; i < n_predict; i++) {
        if (llama_decode(ctx, batch)) return 1;
        float *logits = llama_get_logits_ith(ctx, -1);
        int best = 0;
        for (int v = 1; v < n_vocab; v++) if (logits[v] > logits[best]) best = v;
        if (gsmpl) best = llama_sampler_sample(gsmpl, ctx, -1);
        if (i == 0) {
            for (int k = 0; k < 5; k++) { top_id[k] = -1; top_logit[k] = -1e30f; }
            for (int v = 0; v < n_vocab; v++) {
                float x = logits[v];
                for (int k = 0; k < 5; k++) if (x > top_logit[k]) {
                    for (int j = 4; j > k; j--) { top_logit[j] = top_logit[j-1]; top_id[j] = top_id[j-1]; }
                    top_logit[k] = x; top_id[k] = v; break;
                }
            }
        }
        out[n_out++] = best;
        if (llama_vocab_is_eog(vocab, best)) break;
        batch = llama_batch_get_one(&out[n_out-1], 1);
    }
    printf(",");
    print_ids("generated_ids", out, n_out);
    printf(",\"first_top5\":[");
    for (int k = 0; k < 5; k++) printf(k ? ",[%d,%.5f]" : "[%d,%.5f]", top_id[k], top_logit[k]);
    printf("]}\n");
    llama_free(ctx); llama_model_free(model); llama_backend_free();
    return 0;
}
