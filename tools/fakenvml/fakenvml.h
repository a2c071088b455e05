/*
 * fakenvml: a libnvidia-ml.so.1 that answers from a recorded capture (probe.json + trace.jsonl).
 *
 * Internals shared by the library's translation units. The library is built with
 * -fvisibility=hidden, and only nvml.h's declarations are made visible, so what the
 * shared object exports is exactly the NVML functions we define: a function we do not
 * implement is missing, and callers see NVML_ERROR_FUNCTION_NOT_FOUND as with an old driver.
 */
#ifndef FAKENVML_H
#define FAKENVML_H

#define _GNU_SOURCE

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

/* Both the versioned and the unversioned names (nvmlInit and nvmlInit_v2, ...) are declared, so
 * we can define both: old clients link the plain names, pynvml asks for the _v2/_v3 ones. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#pragma GCC visibility push(default)
#include <nvml.h>
#pragma GCC visibility pop

/* The library reads these once, in nvmlInit (see docs/testing.md). */
struct config {
    char *capture;      /* FAKENVML_CAPTURE: capture directory or trace.jsonl */
    unsigned gpus;      /* FAKENVML_GPUS: 0 = as many as the capture recorded */
    double speed;       /* FAKENVML_SPEED: trace seconds per wall-clock second; 0 holds still */
    double start;       /* FAKENVML_START: trace second playing at nvmlInit */
    bool loop;          /* FAKENVML_LOOP: wrap around at the end of the trace (default) */
    double latency;     /* FAKENVML_LATENCY: multiple of the recorded call latency to sleep; 0 = none */
    char *faults;       /* FAKENVML_FAULTS: faults file, or NULL */
};

enum fault_kind { FAULT_LOST, FAULT_ERROR, FAULT_HANG, FAULT_XID };

#define ANY_GPU (-1)

/* One line of the faults file. Times are seconds since nvmlInit, in wall-clock time. */
struct fault {
    enum fault_kind kind;
    char *call;          /* FAULT_ERROR, FAULT_HANG: function name, "*" for any */
    int gpu;             /* ANY_GPU or an index */
    double at;           /* LOST: from; HANG: from; XID: when */
    double until;        /* LOST: to; HANG: at + seconds */
    int code;            /* FAULT_ERROR: the nvmlReturn_t to answer */
    unsigned long long xid;
    size_t line;         /* in the faults file, for messages */
};

struct faults {
    struct fault *items;
    size_t count;
    int init_error;      /* nvmlInit's answer; NVML_SUCCESS when not scripted */
};

/* The trace of one recorded GPU, in time order. */
struct recorded {
    const cJSON **records;
    double *t;
    size_t count;
    double duration;     /* playing time of one pass, one sample period longer than the span */
    const cJSON *probe;  /* this GPU's object in probe.json "devices", or NULL */
    double energy_lap;   /* what the energy counters gain per pass, so they never go backwards */
    double energy_field_lap;
};

/* What an nvmlDevice_t points to: one GPU as the caller sees it (in state.devices), or one MIG
 * device of a GPU (in state.migs; see mig.c). */
struct nvmlDevice_st {
    unsigned index;      /* a MIG device: its GPU's */
    unsigned recorded;   /* index into state.recorded */
    double offset;       /* trace seconds this copy plays ahead of the recording */
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char bus_id[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    char bus_id_legacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned domain, bus, device;
    /* MIG. A GPU: its MIG devices and GPU instances, every one its trace ever shows, as ranges of
     * state.migs and state.gpu_instances. A MIG device: its GPU, and its UUID as the trace spells
     * it (a fanned-out copy's own `uuid` differs), by which each call finds it in the layout. */
    size_t mig_first, mig_count;
    size_t gi_first, gi_count;
    struct nvmlDevice_st *parent;  /* NULL for a GPU */
    const char *mig_uuid;          /* points into the trace's JSON */
};

/* What an nvmlGpuInstance_t points to: GPU instance `id` of `parent`, present or not right now. */
struct nvmlGpuInstance_st {
    struct nvmlDevice_st *parent;
    unsigned id;
};

struct nvmlGpmSample_st {
    struct nvmlGpmSample_st *next;
    bool taken;
    unsigned gpu;
    bool mig;              /* taken by nvmlGpmMigSampleGet, of GPU instance gpu_instance */
    unsigned gpu_instance;
    double play;         /* trace seconds played when taken, unwrapped */
};

struct xid_event {
    unsigned gpu;
    double at;
    unsigned long long xid;
    bool delivered;
};

struct nvmlEventSet_st {
    struct nvmlEventSet_st *next;
    unsigned long long *registered;  /* event types per GPU */
    struct xid_event *xids;          /* this set's copy of the scripted XIDs, in time order */
    size_t xid_count;
    unsigned waiters;                /* threads inside nvmlEventSetWait on this set */
    bool closing;                    /* nvmlEventSetFree is waiting for the waiters to leave */
};

/* The whole library state. `lock` guards every mutable field; the capture itself is read-only
 * between nvmlInit and the last nvmlShutdown, and is read without the lock. */
struct state {
    pthread_mutex_t lock;
    pthread_cond_t changed;      /* shutdown began, a call left, an event set closed */
    unsigned refcount;           /* nvmlInit calls not yet matched by nvmlShutdown */
    bool closing;                /* the last nvmlShutdown is draining calls in flight */
    unsigned in_flight;          /* calls between call_begin and call_end */
    double started;              /* CLOCK_MONOTONIC seconds at nvmlInit */

    struct config config;
    cJSON *probe;                /* probe.json, or NULL */
    cJSON **lines;               /* every parsed trace line, owned here */
    size_t line_count;
    struct recorded *recorded;
    size_t recorded_count;
    struct nvmlDevice_st *devices;
    unsigned device_count;
    struct nvmlDevice_st *migs;              /* every GPU's MIG devices (mig.c) */
    size_t mig_count;
    struct nvmlGpuInstance_st *gpu_instances; /* every GPU's GPU instances (mig.c) */
    size_t gpu_instance_count;
    struct faults faults;

    struct nvmlGpmSample_st *samples;
    struct nvmlEventSet_st *event_sets;
};

extern struct state g;

/* One NVML call in progress. Every exported function that needs nvmlInit runs as
 *     struct call c; nvmlReturn_t r = call_begin(&c, __func__, device); ...; return call_end(&c, r);
 * so that shutdown can wait for it, faults apply to it by name, and its recorded latency is slept.
 * call_begin_system is for calls without a device (only faults for any GPU apply); call_enter
 * alone for calls that find their device first (by UUID, bus id, GPM sample) and then call
 * call_device, which applies that GPU's faults. call_device takes GPU handles only (a MIG device
 * handle is INVALID_ARGUMENT); the few calls that also take MIG device handles begin with
 * call_begin_any (mig.c), which applies the parent GPU's faults. */
struct call {
    const char *name;
    struct nvmlDevice_st *dev;   /* NULL for calls that take no device */
    double play;                 /* trace seconds dev has played, unwrapped, at call_begin */
    const cJSON *rec;            /* the trace record playing on dev at that moment */
    struct nvmlDevice_st *mig;   /* a call on a MIG device (call_begin_any): it; dev is its GPU */
    const cJSON *mig_rec;        /* and its entry in rec's layout (`mig.devices`) */
    double latency_us;           /* recorded cost of this call */
    bool entered;
};

/* core.c */
double monotonic_s(void);
double elapsed_s(void);
nvmlReturn_t call_enter(struct call *c, const char *name);
nvmlReturn_t call_begin(struct call *c, const char *name, nvmlDevice_t device);
nvmlReturn_t call_begin_system(struct call *c, const char *name);
nvmlReturn_t call_device(struct call *c, nvmlDevice_t device);
nvmlReturn_t call_end(struct call *c, nvmlReturn_t ret);
int wait_until_locked(double deadline);
struct nvmlDevice_st *device_of(nvmlDevice_t handle);

/* capture.c: loading */
nvmlReturn_t capture_load(void);
void capture_free(void);

/* capture.c: time */
double play_time(const struct nvmlDevice_st *dev);
double wrap(const struct recorded *r, double play);
size_t record_index_at(const struct recorded *r, double position);
const cJSON *record_at(const struct nvmlDevice_st *dev, double play);
bool parse_bus_id(const char *s, unsigned *domain, unsigned *bus, unsigned *device);
double laps(const struct recorded *r, double play);

/* capture.c: answers */
const cJSON *probe_entry(const struct nvmlDevice_st *dev, const char *key);
const cJSON *probe_system(const char *key);
bool is_recorded_error(const cJSON *entry);
int error_code_of(const cJSON *err);
int error_code_by_name(const char *name);
bool json_number(const cJSON *item, double *out);
unsigned long long to_ull(double v);
unsigned int to_uint(double v);
double latency_of(const cJSON *probe_entry);
void note_latency(struct call *c, const char *probe_key);
nvmlReturn_t answer(struct call *c, const char *trace_key, const char *probe_key, const cJSON **out, bool *from_trace);
nvmlReturn_t answer_number(struct call *c, const char *trace_key, const char *probe_key, double *out);
nvmlReturn_t member_number(const cJSON *obj, const char *key, double *out);
nvmlReturn_t copy_string(const char *s, char *buf, unsigned int length);

/* faults.c */
nvmlReturn_t faults_load(const char *path, struct faults *out);
nvmlReturn_t faults_check(const struct faults *f, const char *path, unsigned gpus);
void faults_free(struct faults *f);
nvmlReturn_t faults_apply(struct call *c);

/* mig.c: MIG devices and GPU instances of the trace's `mig` layouts */
nvmlReturn_t mig_load(void);
void mig_free(void);
nvmlReturn_t call_begin_any(struct call *c, const char *name, nvmlDevice_t device);
const cJSON *mig_gpu_instance(const cJSON *rec, unsigned gi);

/* events.c: shutdown frees what clients left behind */
void event_sets_free(void);
void gpm_samples_free(void);

/* A diagnostic on stderr: why nvmlInit failed, which line of a file is wrong. */
void complain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
