/*
 * Scripted faults (FAKENVML_FAULTS): lost GPUs, failing calls, hanging calls, XID events and a
 * failing nvmlInit. One fault per line; times are seconds since nvmlInit. Same semantics as
 * gpumon.sources.capture.Faults:
 *
 *     lost GPU FROM TO              every call on GPU returns GPU_IS_LOST while FROM <= t < TO
 *     error CALL CODE [GPU]         CALL returns CODE (a number or a name such as NotSupported)
 *     hang CALL SECONDS [GPU] [AT]  CALL blocks until AT + SECONDS when called in that window
 *     xid GPU AT XID                an XID critical-error event on GPU at time AT
 *     init_error CODE               nvmlInit returns CODE
 *
 * GPU is an index or "*" for any GPU; CALL is an NVML function name ("nvmlDeviceGetMemoryInfo"
 * also matches nvmlDeviceGetMemoryInfo_v2) or "*" for every call.
 */
#include "fakenvml.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORDS 6

static bool parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0)
        return false;
    *out = v;
    return true;
}

static bool parse_index(const char *s, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || *s == '\0' || v < 0 || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_gpu(const char *s, int *out)
{
    long v;
    if (strcmp(s, "*") == 0) {
        *out = ANY_GPU;
        return true;
    }
    if (!parse_index(s, 1 << 20, &v))
        return false;
    *out = (int)v;
    return true;
}

static bool parse_code(const char *s, int *out)
{
    long v;
    if (parse_index(s, 1 << 20, &v)) {
        *out = (int)v;
        return true;
    }
    int code = error_code_by_name(s);
    if (code < 0)
        return false;
    *out = code;
    return true;
}

/* Parse one line's words into `f`; a message on failure. */
static const char *parse_fault(char **w, int n, struct fault *f, struct faults *all)
{
    memset(f, 0, sizeof *f);
    f->gpu = ANY_GPU;
    if (strcmp(w[0], "lost") == 0) {
        f->kind = FAULT_LOST;
        if (n != 4 || !parse_gpu(w[1], &f->gpu) || f->gpu == ANY_GPU || !parse_seconds(w[2], &f->at)
            || !parse_seconds(w[3], &f->until))
            return "expected: lost GPU FROM TO";
    } else if (strcmp(w[0], "error") == 0) {
        f->kind = FAULT_ERROR;
        if (n < 3 || n > 4 || !parse_code(w[2], &f->code) || (n == 4 && !parse_gpu(w[3], &f->gpu)))
            return "expected: error CALL CODE [GPU], CODE a number or a name such as NotSupported";
        f->call = strdup(w[1]);
    } else if (strcmp(w[0], "hang") == 0) {
        double seconds;
        f->kind = FAULT_HANG;
        if (n < 3 || n > 5 || !parse_seconds(w[2], &seconds) || (n >= 4 && !parse_gpu(w[3], &f->gpu))
            || (n == 5 && !parse_seconds(w[4], &f->at)))
            return "expected: hang CALL SECONDS [GPU] [AT]";
        f->until = f->at + seconds;
        f->call = strdup(w[1]);
    } else if (strcmp(w[0], "xid") == 0) {
        long xid;
        f->kind = FAULT_XID;
        if (n != 4 || !parse_gpu(w[1], &f->gpu) || f->gpu == ANY_GPU || !parse_seconds(w[2], &f->at)
            || !parse_index(w[3], 1L << 30, &xid))
            return "expected: xid GPU AT XID";
        f->xid = (unsigned long long)xid;
    } else if (strcmp(w[0], "init_error") == 0) {
        if (n != 2 || !parse_code(w[1], &all->init_error) || all->init_error == NVML_SUCCESS)
            return "expected: init_error CODE, CODE a non-zero number or a name such as DriverNotLoaded";
        return NULL; /* not a per-call fault: nothing to append */
    } else {
        return "unknown fault; expected lost, error, hang, xid or init_error";
    }
    if ((f->kind == FAULT_ERROR || f->kind == FAULT_HANG) && f->call == NULL)
        return "out of memory";
    return NULL;
}

nvmlReturn_t faults_load(const char *path, struct faults *out)
{
    memset(out, 0, sizeof *out);
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        complain("FAKENVML_FAULTS=%s: cannot read: %s", path, strerror(errno));
        return NVML_ERROR_UNKNOWN;
    }
    nvmlReturn_t ret = NVML_SUCCESS;
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    while (ret == NVML_SUCCESS && getline(&line, &cap, file) != -1) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        char *words[MAX_WORDS + 1], *save = NULL;
        int n = 0;
        for (char *w = strtok_r(line, " \t\r\n", &save); w != NULL; w = strtok_r(NULL, " \t\r\n", &save)) {
            if (n <= MAX_WORDS)
                words[n] = w;
            n++;
        }
        if (n == 0)
            continue;
        struct fault f = {0};
        const char *why = n > MAX_WORDS ? "too many words" : parse_fault(words, n, &f, out);
        if (why != NULL) {
            free(f.call);
            complain("%s:%zu: %s", path, lineno, why);
            ret = NVML_ERROR_UNKNOWN;
            break;
        }
        if (strcmp(words[0], "init_error") == 0)
            continue;
        f.line = lineno;
        struct fault *bigger = realloc(out->items, (out->count + 1) * sizeof *bigger);
        if (bigger == NULL) {
            free(f.call);
            ret = NVML_ERROR_MEMORY;
            break;
        }
        out->items = bigger;
        out->items[out->count++] = f;
    }
    free(line);
    fclose(file);
    if (ret != NVML_SUCCESS)
        faults_free(out);
    return ret;
}

/* A fault on a GPU that does not exist would silently never happen: say so instead. */
nvmlReturn_t faults_check(const struct faults *f, const char *path, unsigned gpus)
{
    for (size_t i = 0; i < f->count; i++) {
        if (f->items[i].gpu != ANY_GPU && (unsigned)f->items[i].gpu >= gpus) {
            complain("%s:%zu: there is no GPU %d, only %u (FAKENVML_GPUS sets how many)", path, f->items[i].line,
                     f->items[i].gpu, gpus);
            return NVML_ERROR_UNKNOWN;
        }
    }
    return NVML_SUCCESS;
}

void faults_free(struct faults *f)
{
    for (size_t i = 0; i < f->count; i++)
        free(f->items[i].call);
    free(f->items);
    memset(f, 0, sizeof *f);
}

/* "nvmlDeviceGetMemoryInfo" matches nvmlDeviceGetMemoryInfo and nvmlDeviceGetMemoryInfo_v2. */
static bool call_matches(const char *pattern, const char *name)
{
    if (strcmp(pattern, "*") == 0 || strcmp(pattern, name) == 0)
        return true;
    size_t n = strlen(pattern);
    if (strncmp(pattern, name, n) != 0 || name[n] != '_' || name[n + 1] != 'v')
        return false;
    const char *digits = name + n + 2;
    return *digits != '\0' && strspn(digits, "0123456789") == strlen(digits);
}

static bool gpu_matches(int gpu, const struct nvmlDevice_st *dev)
{
    return gpu == ANY_GPU || (dev != NULL && (unsigned)gpu == dev->index);
}

nvmlReturn_t faults_apply(struct call *c)
{
    const struct faults *fs = &g.faults;
    double now = elapsed_s();
    for (size_t i = 0; i < fs->count; i++) {
        const struct fault *f = &fs->items[i];
        if (f->kind == FAULT_LOST && c->dev != NULL && (unsigned)f->gpu == c->dev->index && f->at <= now
            && now < f->until)
            return NVML_ERROR_GPU_IS_LOST;
    }
    for (size_t i = 0; i < fs->count; i++) {
        const struct fault *f = &fs->items[i];
        if (f->kind != FAULT_HANG || !call_matches(f->call, c->name) || !gpu_matches(f->gpu, c->dev)
            || now < f->at || now >= f->until)
            continue;
        /* Block like a wedged driver call, but let nvmlShutdown release us so tests can end. */
        pthread_mutex_lock(&g.lock);
        while (!g.closing && wait_until_locked(g.started + f->until) != ETIMEDOUT) {
        }
        bool closing = g.closing;
        pthread_mutex_unlock(&g.lock);
        if (closing)
            return NVML_ERROR_UNINITIALIZED;
    }
    for (size_t i = 0; i < fs->count; i++) {
        const struct fault *f = &fs->items[i];
        if (f->kind == FAULT_ERROR && call_matches(f->call, c->name) && gpu_matches(f->gpu, c->dev))
            return (nvmlReturn_t)f->code;
    }
    return NVML_SUCCESS;
}
