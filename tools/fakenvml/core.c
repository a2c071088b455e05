/*
 * Lifecycle (nvmlInit/nvmlShutdown), the call guard every exported function runs under,
 * configuration from the environment, and nvmlErrorString.
 */
#include "fakenvml.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct state g = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    /* `changed` needs CLOCK_MONOTONIC for its timed waits, so it is set up once in init_once. */
};

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_once(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    /* Timed waits (hangs, event waits) measure against the same clock as the trace, which
     * must not jump when someone sets the wall clock. */
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g.changed, &attr);
    pthread_condattr_destroy(&attr);
}

void complain(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fakenvml: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

double monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double elapsed_s(void)
{
    return monotonic_s() - g.started;
}

static struct timespec timespec_of(double s)
{
    struct timespec ts;
    double whole = floor(s);
    ts.tv_sec = (time_t)whole;
    ts.tv_nsec = (long)((s - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Wait on g.changed (g.lock held) until the monotonic `deadline` or a broadcast; returns
 * ETIMEDOUT once the deadline has passed. Callers loop and re-check their condition. */
int wait_until_locked(double deadline)
{
    if (monotonic_s() >= deadline)
        return ETIMEDOUT;
    struct timespec ts = timespec_of(deadline);
    return pthread_cond_timedwait(&g.changed, &g.lock, &ts);
}

static void sleep_s(double s)
{
    if (!(s > 0))
        return;
    struct timespec ts = timespec_of(s);
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
    }
}

/* --- configuration -------------------------------------------------------------------------- */

static bool env_double(const char *name, double fallback, double min, double *out)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') {
        *out = fallback;
        return true;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < min) {
        complain("%s=%s: expected a number not below %g", name, s, min);
        return false;
    }
    *out = v;
    return true;
}

static bool env_unsigned(const char *name, unsigned fallback, unsigned min, unsigned max, unsigned *out)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') {
        *out = fallback;
        return true;
    }
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || *s == '-' || v < min || v > max) {
        complain("%s=%s: expected a whole number from %u to %u", name, s, min, max);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

static char *env_string(const char *name, const char *fallback)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0')
        s = fallback;
    return s == NULL ? NULL : strdup(s);
}

#define MAX_GPUS 1024 /* enough for any real host; bounds what a typo can allocate */

static nvmlReturn_t config_load(struct config *c)
{
    unsigned loop;
#ifdef FAKENVML_DEFAULT_CAPTURE
    c->capture = env_string("FAKENVML_CAPTURE", FAKENVML_DEFAULT_CAPTURE);
#else
    c->capture = env_string("FAKENVML_CAPTURE", NULL);
#endif
    c->faults = env_string("FAKENVML_FAULTS", NULL);
    if (c->capture == NULL) {
        complain("FAKENVML_CAPTURE is not set: name a capture directory (probe.json + trace.jsonl)");
        return NVML_ERROR_UNKNOWN;
    }
    if (!env_unsigned("FAKENVML_GPUS", 0, 1, MAX_GPUS, &c->gpus)
        || !env_double("FAKENVML_SPEED", 1.0, 0.0, &c->speed)
        || !env_double("FAKENVML_START", 0.0, 0.0, &c->start)
        || !env_unsigned("FAKENVML_LOOP", 1, 0, 1, &loop)
        || !env_double("FAKENVML_LATENCY", 0.0, 0.0, &c->latency))
        return NVML_ERROR_UNKNOWN;
    c->loop = loop != 0;
    return NVML_SUCCESS;
}

static void config_free(struct config *c)
{
    free(c->capture);
    free(c->faults);
    memset(c, 0, sizeof *c);
}

/* --- lifecycle ------------------------------------------------------------------------------ */

static void state_free(void)
{
    event_sets_free();
    gpm_samples_free();
    faults_free(&g.faults);
    capture_free();
    config_free(&g.config);
}

nvmlReturn_t DECLDIR nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NO_GPUS / NO_ATTACH change nothing for a recording */
    pthread_once(&once, init_once);
    pthread_mutex_lock(&g.lock);
    while (g.closing)
        pthread_cond_wait(&g.changed, &g.lock);
    if (g.refcount > 0) { /* NVML counts nested inits; only the first one loads anything */
        g.refcount++;
        pthread_mutex_unlock(&g.lock);
        return NVML_SUCCESS;
    }
    /* Loading happens under the lock so that two threads racing to init load once. */
    nvmlReturn_t ret = config_load(&g.config);
    if (ret == NVML_SUCCESS && g.config.faults != NULL)
        ret = faults_load(g.config.faults, &g.faults);
    if (ret == NVML_SUCCESS && g.faults.init_error != NVML_SUCCESS)
        ret = (nvmlReturn_t)g.faults.init_error;
    if (ret == NVML_SUCCESS)
        ret = capture_load();
    if (ret == NVML_SUCCESS && g.config.faults != NULL)
        ret = faults_check(&g.faults, g.config.faults, g.device_count);
    if (ret != NVML_SUCCESS) {
        state_free();
        pthread_mutex_unlock(&g.lock);
        return ret;
    }
    g.refcount = 1;
    g.started = monotonic_s();
    double latency = g.config.latency;
    double init_ms = 0;
    if (g.probe != NULL)
        json_number(cJSON_GetObjectItemCaseSensitive(g.probe, "init_ms"), &init_ms);
    pthread_mutex_unlock(&g.lock);
    sleep_s(init_ms / 1e3 * latency);
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlInit_v2(void)
{
    return nvmlInitWithFlags(0);
}

nvmlReturn_t DECLDIR nvmlInit(void)
{
    return nvmlInitWithFlags(0);
}

nvmlReturn_t DECLDIR nvmlShutdown(void)
{
    pthread_once(&once, init_once);
    pthread_mutex_lock(&g.lock);
    if (g.refcount == 0 || g.closing) {
        pthread_mutex_unlock(&g.lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    if (--g.refcount > 0) {
        pthread_mutex_unlock(&g.lock);
        return NVML_SUCCESS;
    }
    /* The last shutdown: wake every hung call and event wait, let the calls in flight leave,
     * then free what they were reading. */
    g.closing = true;
    pthread_cond_broadcast(&g.changed);
    while (g.in_flight > 0)
        pthread_cond_wait(&g.changed, &g.lock);
    double shutdown_ms = 0;
    if (g.probe != NULL)
        json_number(cJSON_GetObjectItemCaseSensitive(g.probe, "shutdown_ms"), &shutdown_ms);
    double latency = g.config.latency;
    state_free();
    g.closing = false;
    pthread_cond_broadcast(&g.changed); /* an nvmlInit may be waiting for us */
    pthread_mutex_unlock(&g.lock);
    sleep_s(shutdown_ms / 1e3 * latency);
    return NVML_SUCCESS;
}

/* --- the call guard ------------------------------------------------------------------------- */

struct nvmlDevice_st *device_of(nvmlDevice_t handle)
{
    /* Compare addresses before dereferencing anything, so a stale or made-up handle is
     * answered with INVALID_ARGUMENT rather than read. */
    uintptr_t p = (uintptr_t)handle, base = (uintptr_t)g.devices;
    if (g.devices == NULL || p < base || p >= base + g.device_count * sizeof *g.devices
        || (p - base) % sizeof *g.devices != 0)
        return NULL;
    return handle;
}

/* Count the call in flight, so the last nvmlShutdown waits for it before freeing anything. */
nvmlReturn_t call_enter(struct call *c, const char *name)
{
    memset(c, 0, sizeof *c);
    c->name = name;
    pthread_once(&once, init_once);
    pthread_mutex_lock(&g.lock);
    if (g.refcount == 0 || g.closing) {
        pthread_mutex_unlock(&g.lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    g.in_flight++;
    c->entered = true;
    pthread_mutex_unlock(&g.lock);
    return NVML_SUCCESS;
}

/* Resolve the device and apply its faults; then fix the trace record the call answers from. */
nvmlReturn_t call_device(struct call *c, nvmlDevice_t device)
{
    c->dev = device_of(device);
    if (c->dev == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = faults_apply(c);
    if (ret == NVML_SUCCESS) {
        /* One reading of the clock per call, so the record and the lap count agree. */
        c->play = play_time(c->dev);
        c->rec = record_at(c->dev, c->play);
    }
    return ret;
}

nvmlReturn_t call_begin(struct call *c, const char *name, nvmlDevice_t device)
{
    nvmlReturn_t ret = call_enter(c, name);
    return ret == NVML_SUCCESS ? call_device(c, device) : ret;
}

nvmlReturn_t call_begin_system(struct call *c, const char *name)
{
    nvmlReturn_t ret = call_enter(c, name);
    return ret == NVML_SUCCESS ? faults_apply(c) : ret;
}

nvmlReturn_t call_end(struct call *c, nvmlReturn_t ret)
{
    if (!c->entered)
        return ret;
    /* Sleep outside the lock: a slow call on one GPU must not slow the others. */
    sleep_s(c->latency_us / 1e6 * g.config.latency);
    pthread_mutex_lock(&g.lock);
    if (--g.in_flight == 0)
        pthread_cond_broadcast(&g.changed);
    pthread_mutex_unlock(&g.lock);
    return ret;
}

/* --- nvmlErrorString ------------------------------------------------------------------------ */

static const struct {
    nvmlReturn_t code;
    const char *name;    /* pynvml's exception class is NVMLError_<name> */
    const char *text;    /* what the real library's nvmlErrorString says */
} ERRORS[] = {
    {NVML_SUCCESS, "Success", "Success"},
    {NVML_ERROR_UNINITIALIZED, "Uninitialized", "Uninitialized"},
    {NVML_ERROR_INVALID_ARGUMENT, "InvalidArgument", "Invalid Argument"},
    {NVML_ERROR_NOT_SUPPORTED, "NotSupported", "Not Supported"},
    {NVML_ERROR_NO_PERMISSION, "NoPermission", "Insufficient Permissions"},
    {NVML_ERROR_ALREADY_INITIALIZED, "AlreadyInitialized", "Already Initialized"},
    {NVML_ERROR_NOT_FOUND, "NotFound", "Not Found"},
    {NVML_ERROR_INSUFFICIENT_SIZE, "InsufficientSize", "Insufficient Size"},
    {NVML_ERROR_INSUFFICIENT_POWER, "InsufficientPower", "Insufficient External Power"},
    {NVML_ERROR_DRIVER_NOT_LOADED, "DriverNotLoaded", "Driver Not Loaded"},
    {NVML_ERROR_TIMEOUT, "Timeout", "Timeout"},
    {NVML_ERROR_IRQ_ISSUE, "IrqIssue", "Interrupt Request Issue"},
    {NVML_ERROR_LIBRARY_NOT_FOUND, "LibraryNotFound", "NVML Shared Library Not Found"},
    {NVML_ERROR_FUNCTION_NOT_FOUND, "FunctionNotFound", "Function Not Found"},
    {NVML_ERROR_CORRUPTED_INFOROM, "CorruptedInforom", "Corrupted infoROM"},
    {NVML_ERROR_GPU_IS_LOST, "GpuIsLost", "GPU is lost"},
    {NVML_ERROR_RESET_REQUIRED, "ResetRequired", "GPU requires restart"},
    {NVML_ERROR_OPERATING_SYSTEM, "OperatingSystem", "The operating system has blocked the request."},
    {NVML_ERROR_LIB_RM_VERSION_MISMATCH, "LibRmVersionMismatch", "RM has detected an NVML/RM version mismatch."},
    {NVML_ERROR_IN_USE, "InUse", "In use by another client"},
    {NVML_ERROR_MEMORY, "Memory", "Insufficient Memory"},
    {NVML_ERROR_NO_DATA, "NoData", "No data"},
    {NVML_ERROR_VGPU_ECC_NOT_SUPPORTED, "VgpuEccNotSupported",
     "The requested vgpu operation is not available on target device, because ECC is enabled"},
    {NVML_ERROR_INSUFFICIENT_RESOURCES, "InsufficientResources", "Ran out of critical resources, other than memory"},
    {NVML_ERROR_FREQ_NOT_SUPPORTED, "FreqNotSupported", "The requested frequency is not supported"},
    {NVML_ERROR_ARGUMENT_VERSION_MISMATCH, "ArgumentVersionMismatch", "Argument version mismatch"},
    {NVML_ERROR_DEPRECATED, "Deprecated", "The requested functionality has been deprecated"},
    {NVML_ERROR_NOT_READY, "NotReady", "System is not ready for the request"},
    {NVML_ERROR_GPU_NOT_FOUND, "GpuNotFound", "No GPUs were found"},
    {NVML_ERROR_INVALID_STATE, "InvalidState", "Resource not in correct state to perform requested operation"},
    {NVML_ERROR_RESET_TYPE_NOT_SUPPORTED, "ResetTypeNotSupported", "Reset not supported for given device/parameters"},
    {NVML_ERROR_UNKNOWN, "Unknown", "Unknown Error"},
};

const DECLDIR char *nvmlErrorString(nvmlReturn_t result)
{
    for (size_t i = 0; i < sizeof ERRORS / sizeof *ERRORS; i++)
        if (ERRORS[i].code == result)
            return ERRORS[i].text;
    return "Unknown Error";
}

/* "NotSupported", "NVMLError_NotSupported" or "NVML_ERROR_NOT_SUPPORTED" -> 3; -1 if unknown. */
int error_code_by_name(const char *name)
{
    if (strncmp(name, "NVMLError_", 10) == 0)
        name += 10;
    for (size_t i = 0; i < sizeof ERRORS / sizeof *ERRORS; i++) {
        if (strcmp(ERRORS[i].name, name) == 0)
            return (int)ERRORS[i].code;
    }
    if (strncmp(name, "NVML_ERROR_", 11) == 0) {
        /* NVML_ERROR_NOT_SUPPORTED: compare with the camel-case name, ignoring underscores. */
        const char *upper = name + 11;
        for (size_t i = 0; i < sizeof ERRORS / sizeof *ERRORS; i++) {
            const char *a = upper, *b = ERRORS[i].name;
            while (*a != '\0' && *b != '\0') {
                if (*a == '_') {
                    a++;
                    continue;
                }
                if ((*a | 0x20) != (*b | 0x20))
                    break;
                a++;
                b++;
            }
            if (*a == '\0' && *b == '\0')
                return (int)ERRORS[i].code;
        }
    }
    return -1;
}
