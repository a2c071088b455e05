/*
 * The capture: loading probe.json and trace.jsonl, mapping wall-clock time to a trace record,
 * fanning one recorded GPU out to N, and reading recorded answers (values or NVML errors).
 * Mirrors gpumon/sources/capture.py, so the Python fake and this library agree.
 */
#include "fakenvml.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TRACE_PERIOD_FALLBACK_S 0.25 /* a trace with one record plays it this long */

/* --- reading JSON as Python writes it --------------------------------------------------------- */

/* Python's json module writes NaN, Infinity and -Infinity (NVML can return a NaN GPM metric with
 * success), and cJSON rejects them. Quote them outside strings; json_number() reads them back. */
static char *quote_nonfinite(const char *text, size_t len)
{
    static const char *const TOKENS[] = {"NaN", "Infinity", "-Infinity"};
    /* Each token grows by two quotes and is at least three characters long: 2 * len is plenty. */
    char *out = malloc(2 * len + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    bool in_string = false;
    for (size_t i = 0; i < len;) {
        char ch = text[i];
        if (in_string) {
            out[o++] = ch;
            if (ch == '\\' && i + 1 < len)
                out[o++] = text[++i];
            else if (ch == '"')
                in_string = false;
            i++;
            continue;
        }
        if (ch == '"')
            in_string = true;
        bool quoted = false;
        for (size_t k = 0; k < sizeof TOKENS / sizeof *TOKENS && !quoted; k++) {
            size_t n = strlen(TOKENS[k]);
            if (len - i >= n && memcmp(text + i, TOKENS[k], n) == 0) {
                out[o++] = '"';
                memcpy(out + o, TOKENS[k], n);
                o += n;
                out[o++] = '"';
                i += n;
                quoted = true;
            }
        }
        if (!quoted)
            out[o++] = text[i++];
    }
    out[o] = '\0';
    return out;
}

static cJSON *parse_json(const char *text, size_t len)
{
    char *quoted = quote_nonfinite(text, len);
    if (quoted == NULL)
        return NULL;
    cJSON *json = cJSON_Parse(quoted);
    free(quoted);
    return json;
}

bool json_number(const cJSON *item, double *out)
{
    if (cJSON_IsNumber(item)) {
        *out = item->valuedouble;
        return true;
    }
    if (cJSON_IsBool(item)) {
        *out = cJSON_IsTrue(item) ? 1.0 : 0.0;
        return true;
    }
    if (cJSON_IsString(item)) {
        if (strcmp(item->valuestring, "NaN") == 0)
            *out = NAN;
        else if (strcmp(item->valuestring, "Infinity") == 0)
            *out = INFINITY;
        else if (strcmp(item->valuestring, "-Infinity") == 0)
            *out = -INFINITY;
        else
            return false;
        return true;
    }
    return false;
}

unsigned long long to_ull(double v)
{
    if (isnan(v))
        return 0;
    if (v < 0)
        return (unsigned long long)(long long)v; /* as C would convert a negative count */
    if (v >= 18446744073709551615.0)
        return ULLONG_MAX;
    return (unsigned long long)v;
}

unsigned int to_uint(double v)
{
    if (isnan(v))
        return 0;
    if (v < 0)
        return (unsigned int)(int)fmax(v, (double)INT_MIN);
    if (v >= (double)UINT_MAX)
        return UINT_MAX;
    return (unsigned int)v;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1)
            break;
        char *bigger = realloc(buf, cap * 2);
        if (bigger == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    bool failed = ferror(f) != 0;
    fclose(f);
    if (buf == NULL || failed) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* --- loading ---------------------------------------------------------------------------------- */

struct line {
    const cJSON *json;
    double t;
    int gpu;
    size_t seq; /* file order, so equal times keep it (Python's sort is stable) */
};

static int by_gpu_then_time(const void *a, const void *b)
{
    const struct line *x = a, *y = b;
    if (x->gpu != y->gpu)
        return x->gpu < y->gpu ? -1 : 1;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static nvmlReturn_t load_probe(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return NVML_SUCCESS; /* probe.json is optional: then every static answer is NotSupported */
    size_t len;
    char *text = read_file(path, &len);
    if (text == NULL) {
        complain("%s: cannot read: %s", path, strerror(errno));
        return NVML_ERROR_UNKNOWN;
    }
    g.probe = parse_json(text, len);
    free(text);
    const cJSON *devices = cJSON_GetObjectItemCaseSensitive(g.probe, "devices");
    bool valid = cJSON_IsObject(g.probe) && (devices == NULL || cJSON_IsArray(devices));
    const cJSON *dev;
    cJSON_ArrayForEach(dev, devices)
        valid = valid && cJSON_IsObject(dev);
    if (!valid) {
        complain("%s: expected a JSON object with a 'devices' list of objects", path);
        return NVML_ERROR_UNKNOWN;
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t parse_trace_line(const char *path, size_t lineno, const char *text, size_t len,
                                     struct line *out)
{
    cJSON *json = parse_json(text, len);
    if (json == NULL) {
        complain("%s:%zu: invalid JSON", path, lineno);
        return NVML_ERROR_UNKNOWN;
    }
    g.lines[g.line_count++] = json; /* owned from here on, freed with the capture */
    if (!cJSON_IsObject(json)) {
        complain("%s:%zu: expected a JSON object per line", path, lineno);
        return NVML_ERROR_UNKNOWN;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(json, "t");
    const cJSON *gpu = cJSON_GetObjectItemCaseSensitive(json, "gpu");
    if (!cJSON_IsNumber(t) || !isfinite(t->valuedouble)) {
        complain("%s:%zu: field 't' missing or not a finite number", path, lineno);
        return NVML_ERROR_UNKNOWN;
    }
    if (!cJSON_IsNumber(gpu) || gpu->valuedouble != floor(gpu->valuedouble) || fabs(gpu->valuedouble) > INT_MAX) {
        complain("%s:%zu: field 'gpu' missing or not a whole number", path, lineno);
        return NVML_ERROR_UNKNOWN;
    }
    out->json = json;
    out->t = t->valuedouble;
    out->gpu = (int)gpu->valuedouble;
    out->seq = lineno;
    return NVML_SUCCESS;
}

static nvmlReturn_t load_trace(const char *path, struct line **lines_out, size_t *count_out)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        complain("%s: capture not found (expected a directory with trace.jsonl, or a trace.jsonl file): %s",
                 path, strerror(errno));
        return NVML_ERROR_UNKNOWN;
    }
    nvmlReturn_t ret = NVML_SUCCESS;
    struct line *lines = NULL;
    size_t count = 0, cap = 0, lineno = 0, bufcap = 0;
    char *buf = NULL;
    ssize_t n;
    while (ret == NVML_SUCCESS && (n = getline(&buf, &bufcap, f)) != -1) {
        lineno++;
        if (strspn(buf, " \t\r\n") == (size_t)n)
            continue;
        if (count == cap) {
            size_t bigger = cap ? cap * 2 : 256;
            struct line *l = realloc(lines, bigger * sizeof *l);
            cJSON **j = realloc(g.lines, bigger * sizeof *j);
            if (j != NULL)
                g.lines = j;
            if (l != NULL)
                lines = l;
            if (l == NULL || j == NULL) {
                ret = NVML_ERROR_MEMORY;
                break;
            }
            cap = bigger;
        }
        ret = parse_trace_line(path, lineno, buf, (size_t)n, &lines[count]);
        if (ret == NVML_SUCCESS)
            count++;
    }
    free(buf);
    fclose(f);
    if (ret == NVML_SUCCESS && count == 0) {
        complain("%s: no samples in the trace", path);
        ret = NVML_ERROR_UNKNOWN;
    }
    if (ret != NVML_SUCCESS) {
        free(lines);
        return ret;
    }
    qsort(lines, count, sizeof *lines, by_gpu_then_time);
    *lines_out = lines;
    *count_out = count;
    return NVML_SUCCESS;
}

/* What a counter gains over one pass of the trace: its rise over the recorded span plus one
 * sample period, so that looping continues the count instead of starting it again. */
static double lap_gain(const struct recorded *r, const char *object, const char *key)
{
    double first = NAN, last = NAN, v;
    for (size_t i = 0; i < r->count; i++) {
        const cJSON *holder = object ? cJSON_GetObjectItemCaseSensitive(r->records[i], object) : r->records[i];
        if (!json_number(cJSON_GetObjectItemCaseSensitive(holder, key), &v) || !isfinite(v))
            continue;
        if (isnan(first))
            first = v;
        last = v;
    }
    if (r->count < 2 || isnan(first) || last <= first)
        return 0;
    return (last - first) * (double)r->count / (double)(r->count - 1);
}

static nvmlReturn_t group_by_gpu(struct line *lines, size_t count)
{
    size_t groups = 0;
    for (size_t i = 0; i < count; i++)
        groups += i == 0 || lines[i].gpu != lines[i - 1].gpu;
    g.recorded = calloc(groups, sizeof *g.recorded);
    if (g.recorded == NULL)
        return NVML_ERROR_MEMORY;
    g.recorded_count = groups;
    const cJSON *devices = cJSON_GetObjectItemCaseSensitive(g.probe, "devices");
    int probe_devices = cJSON_GetArraySize(devices);
    for (size_t i = 0, k = 0; k < groups; k++) {
        size_t j = i;
        while (j < count && lines[j].gpu == lines[i].gpu)
            j++;
        struct recorded *r = &g.recorded[k];
        r->count = j - i;
        r->records = calloc(r->count, sizeof *r->records);
        r->t = calloc(r->count, sizeof *r->t);
        if (r->records == NULL || r->t == NULL)
            return NVML_ERROR_MEMORY;
        for (size_t m = 0; m < r->count; m++) {
            r->records[m] = lines[i + m].json;
            r->t[m] = lines[i + m].t;
        }
        double span = r->t[r->count - 1] - r->t[0];
        r->duration = r->count < 2 || span <= 0 ? TRACE_PERIOD_FALLBACK_S : span + span / (double)(r->count - 1);
        /* As capture.py does: the k-th recorded GPU answers from the k-th probe device. */
        r->probe = probe_devices > 0 ? cJSON_GetArrayItem(devices, (int)(k % (size_t)probe_devices)) : NULL;
        r->energy_lap = lap_gain(r, NULL, "energy_mj_call");
        r->energy_field_lap = lap_gain(r, "fields", "energy_mj");
        i = j;
    }
    return NVML_SUCCESS;
}

/* --- identities: fanned-out copies get their own UUID and PCI bus id -------------------------- */

static const cJSON *recorded_getter(unsigned recorded, const char *key)
{
    const cJSON *getters = cJSON_GetObjectItemCaseSensitive(g.recorded[recorded].probe, "getters");
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(getters, key);
    if (entry == NULL || is_recorded_error(entry))
        return NULL;
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(entry, "ok");
    return ok != NULL ? ok : entry;
}

bool parse_bus_id(const char *s, unsigned *domain, unsigned *bus, unsigned *device)
{
    int used = 0;
    return s != NULL && sscanf(s, "%x:%x:%x.%*x%n", domain, bus, device, &used) == 3 && used > 0
           && s[used] == '\0';
}

static bool uuid_taken(unsigned upto, const char *uuid)
{
    for (unsigned i = 0; i < upto; i++)
        if (strcmp(g.devices[i].uuid, uuid) == 0)
            return true;
    return false;
}

static bool bus_taken(unsigned upto, const char *bus_id)
{
    for (unsigned i = 0; i < upto; i++)
        if (strcmp(g.devices[i].bus_id, bus_id) == 0)
            return true;
    return false;
}

static void identify(unsigned index)
{
    struct nvmlDevice_st *d = &g.devices[index];
    size_t n = g.recorded_count;
    const cJSON *uuid = recorded_getter(d->recorded, "nvmlDeviceGetUUID");
    const cJSON *pci = recorded_getter(d->recorded, "nvmlDeviceGetPciInfo");
    const cJSON *bus_id = cJSON_GetObjectItemCaseSensitive(pci, "busId");
    char base[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    if (cJSON_IsString(uuid))
        snprintf(base, sizeof base, "%s", uuid->valuestring);
    else
        snprintf(base, sizeof base, "GPU-00000000-0000-4000-8000-00000000%04x", d->recorded);

    if (index < n) { /* a recorded GPU keeps its identity */
        snprintf(d->uuid, sizeof d->uuid, "%s", base);
        if (cJSON_IsString(bus_id))
            snprintf(d->bus_id, sizeof d->bus_id, "%s", bus_id->valuestring);
        else
            snprintf(d->bus_id, sizeof d->bus_id, "00000000:%02X:00.0", index & 0xFF);
    } else { /* a copy: the recorded UUID with its index as the last digits, a bus of its own */
        size_t keep = strlen(base) >= 4 ? strlen(base) - 4 : 0;
        for (unsigned serial = index;; serial += g.device_count) {
            snprintf(d->uuid, sizeof d->uuid, "%.*s%04x", (int)keep, base, serial & 0xFFFF);
            if (!uuid_taken(index, d->uuid) || serial > 0xFFFF)
                break;
        }
        unsigned domain = 0, bus_ignored, dev_ignored;
        if (!cJSON_IsString(bus_id) || !parse_bus_id(bus_id->valuestring, &domain, &bus_ignored, &dev_ignored))
            domain = 0;
        for (unsigned bus = 0x10 + index;; bus++) {
            snprintf(d->bus_id, sizeof d->bus_id, "%08X:%02X:00.0", domain + (bus >> 8), bus & 0xFF);
            if (!bus_taken(index, d->bus_id))
                break;
        }
    }
    if (!parse_bus_id(d->bus_id, &d->domain, &d->bus, &d->device))
        d->domain = d->bus = d->device = 0;
    const cJSON *legacy = cJSON_GetObjectItemCaseSensitive(pci, "busIdLegacy");
    if (index < n && cJSON_IsString(legacy))
        snprintf(d->bus_id_legacy, sizeof d->bus_id_legacy, "%s", legacy->valuestring);
    else
        snprintf(d->bus_id_legacy, sizeof d->bus_id_legacy, "%04X:%02X:%02X.0", d->domain & 0xFFFF,
                 d->bus & 0xFF, d->device & 0xFF);
}

static nvmlReturn_t make_devices(void)
{
    size_t n = g.recorded_count;
    unsigned count = g.config.gpus ? g.config.gpus : (unsigned)n;
    g.devices = calloc(count, sizeof *g.devices);
    if (g.devices == NULL)
        return NVML_ERROR_MEMORY;
    g.device_count = count;
    size_t copies = (count + n - 1) / n; /* every copy of a recorded GPU gets its own offset */
    for (unsigned i = 0; i < count; i++) {
        struct nvmlDevice_st *d = &g.devices[i];
        d->index = i;
        d->recorded = (unsigned)(i % n);
        d->offset = (double)(i / n) * g.recorded[d->recorded].duration / (double)copies;
        identify(i);
    }
    return NVML_SUCCESS;
}

nvmlReturn_t capture_load(void)
{
    const char *path = g.config.capture;
    char *trace = NULL, *probe = NULL;
    struct stat st;
    bool dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    if (dir) {
        if (asprintf(&trace, "%s/trace.jsonl", path) < 0)
            trace = NULL;
        if (asprintf(&probe, "%s/probe.json", path) < 0)
            probe = NULL;
    } else {
        const char *slash = strrchr(path, '/');
        trace = strdup(path);
        if (asprintf(&probe, "%.*sprobe.json", slash ? (int)(slash - path + 1) : 0, path) < 0)
            probe = NULL;
    }
    struct line *lines = NULL;
    size_t count = 0;
    nvmlReturn_t ret = trace && probe ? NVML_SUCCESS : NVML_ERROR_MEMORY;
    if (ret == NVML_SUCCESS)
        ret = load_probe(probe);
    if (ret == NVML_SUCCESS)
        ret = load_trace(trace, &lines, &count);
    if (ret == NVML_SUCCESS)
        ret = group_by_gpu(lines, count);
    if (ret == NVML_SUCCESS)
        ret = make_devices();
    if (ret == NVML_SUCCESS)
        ret = mig_load(); /* handles for the MIG devices and GPU instances of the trace's layouts */
    free(lines);
    free(trace);
    free(probe);
    return ret;
}

void capture_free(void)
{
    mig_free();
    for (size_t i = 0; i < g.recorded_count; i++) {
        free(g.recorded[i].records);
        free(g.recorded[i].t);
    }
    free(g.recorded);
    for (size_t i = 0; i < g.line_count; i++)
        cJSON_Delete(g.lines[i]);
    free(g.lines);
    cJSON_Delete(g.probe);
    free(g.devices);
    g.recorded = NULL;
    g.recorded_count = 0;
    g.lines = NULL;
    g.line_count = 0;
    g.probe = NULL;
    g.devices = NULL;
    g.device_count = 0;
}

/* --- time ----------------------------------------------------------------------------------- */

double play_time(const struct nvmlDevice_st *dev)
{
    return elapsed_s() * g.config.speed + g.config.start + dev->offset;
}

double wrap(const struct recorded *r, double play)
{
    return g.config.loop ? fmod(play, r->duration) : fmin(play, r->duration);
}

double laps(const struct recorded *r, double play)
{
    return g.config.loop ? floor(play / r->duration) : 0;
}

size_t record_index_at(const struct recorded *r, double position)
{
    double t = r->t[0] + position;
    size_t lo = 0, hi = r->count; /* the first record later than t */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->t[mid] <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 ? lo - 1 : 0;
}

const cJSON *record_at(const struct nvmlDevice_st *dev, double play)
{
    const struct recorded *r = &g.recorded[dev->recorded];
    return r->records[record_index_at(r, wrap(r, play))];
}

/* --- answers -------------------------------------------------------------------------------- */

const cJSON *probe_entry(const struct nvmlDevice_st *dev, const char *key)
{
    const cJSON *probe = g.recorded[dev->recorded].probe;
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(probe, "getters"), key);
    if (entry == NULL)
        entry = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(probe, "parametrized"), key);
    return entry;
}

const cJSON *probe_system(const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(g.probe, "system"), key);
}

/* A recorded whole-call error: {"err": ...} with nothing but latencies beside it. */
bool is_recorded_error(const cJSON *entry)
{
    return cJSON_IsObject(entry) && cJSON_HasObjectItem(entry, "err") && !cJSON_HasObjectItem(entry, "ok")
           && cJSON_GetArraySize(entry) <= 5;
}

/* The NVML code of a recorded error: 3, "NVMLError_NotSupported(3)" or "NVMLError_NotSupported". */
int error_code_of(const cJSON *err)
{
    double v;
    if (cJSON_IsNumber(err) && json_number(err, &v))
        return (int)v;
    if (!cJSON_IsString(err))
        return NVML_ERROR_UNKNOWN;
    const char *s = err->valuestring, *paren = strchr(s, '(');
    size_t name_len = paren ? (size_t)(paren - s) : strlen(s);
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(name_len < sizeof name ? name_len : sizeof name - 1), s);
    int code = error_code_by_name(name);
    if (code >= 0)
        return code;
    int digits = 0;
    if (paren != NULL && sscanf(paren, "(%d)", &digits) == 1)
        return digits;
    return NVML_ERROR_UNKNOWN;
}

double latency_of(const cJSON *probe_entry)
{
    double us = 0;
    json_number(cJSON_GetObjectItemCaseSensitive(probe_entry, "us_med"), &us);
    return isfinite(us) && us > 0 ? us : 0;
}

void note_latency(struct call *c, const char *probe_key)
{
    c->latency_us = latency_of(probe_entry(c->dev, probe_key));
}

/* The answer to a call on c->dev: the playing trace record's `trace_key` when it has one, else
 * probe.json's `probe_key`; NotSupported when neither knows. Also sets the call's latency. */
nvmlReturn_t answer(struct call *c, const char *trace_key, const char *probe_key, const cJSON **out,
                    bool *from_trace)
{
    const cJSON *item = trace_key ? cJSON_GetObjectItemCaseSensitive(c->rec, trace_key) : NULL;
    if (from_trace)
        *from_trace = item != NULL;
    if (item != NULL) {
        double us = 0;
        json_number(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c->rec, "lat_us"), trace_key),
                    &us);
        c->latency_us = isfinite(us) && us > 0 ? us : 0;
    } else {
        item = probe_entry(c->dev, probe_key);
        if (item == NULL)
            return NVML_ERROR_NOT_SUPPORTED;
        c->latency_us = latency_of(item);
        if (cJSON_HasObjectItem(item, "ok"))
            item = cJSON_GetObjectItemCaseSensitive(item, "ok");
    }
    if (is_recorded_error(item))
        return (nvmlReturn_t)error_code_of(cJSON_GetObjectItemCaseSensitive(item, "err"));
    *out = item;
    return NVML_SUCCESS;
}

nvmlReturn_t answer_number(struct call *c, const char *trace_key, const char *probe_key, double *out)
{
    const cJSON *item;
    nvmlReturn_t ret = answer(c, trace_key, probe_key, &item, NULL);
    if (ret == NVML_SUCCESS && !json_number(item, out))
        ret = NVML_ERROR_UNKNOWN; /* the capture holds something that is not a number */
    return ret;
}

nvmlReturn_t member_number(const cJSON *obj, const char *key, double *out)
{
    return json_number(cJSON_GetObjectItemCaseSensitive(obj, key), out) ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t copy_string(const char *s, char *buf, unsigned int length)
{
    if (buf == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    size_t n = strlen(s);
    if (n + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, n + 1);
    return NVML_SUCCESS;
}
