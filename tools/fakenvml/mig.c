/*
 * MIG: the MIG devices (one per compute instance) and GPU instances of a MIG-enabled GPU, from the
 * trace's `mig` key, which holds the layout playing at each moment (tests/fixtures/mig/README.md).
 * Same answers as gpumon/sources/capture_mig.py, call for call.
 *
 * Handles. A MIG device handle "would remain invalid" once its compute instance is destroyed
 * (nvml.h), and a layout changes while the trace plays. So a handle stands for one MIG device by
 * its UUID, and every call looks that UUID up in the layout playing now: once the instance is
 * gone, NOT_FOUND. Every MIG device and GPU instance a GPU's trace ever shows gets its handle at
 * nvmlInit (state.migs, state.gpu_instances): the tables are read-only until the last shutdown, so
 * calls need no lock to use them, and a handle is checked by its address before it is read, as
 * GPU handles are (core.c device_of).
 *
 * Faults: a call on a MIG device is a call on its GPU (the parent's lost window, errors and hangs
 * apply). GPM per GPU instance (nvmlGpmMigSampleGet) lives with the rest of GPM in gpm.c; UUID,
 * name, memory and compute processes of a MIG device with the whole GPU's in device.c.
 */
#include "fakenvml.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the layout ----------------------------------------------------------------------------- */

static const cJSON *layout_of(const cJSON *rec)
{
    const cJSON *mig = cJSON_GetObjectItemCaseSensitive(rec, "mig");
    return cJSON_IsObject(mig) ? mig : NULL;
}

static const cJSON *layout_list(const cJSON *rec, const char *key)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(layout_of(rec), key);
    return cJSON_IsArray(list) ? list : NULL;
}

static const char *uuid_of(const cJSON *mig_device)
{
    const cJSON *uuid = cJSON_GetObjectItemCaseSensitive(mig_device, "uuid");
    return cJSON_IsString(uuid) ? uuid->valuestring : NULL;
}

static bool gi_of(const cJSON *gpu_instance, unsigned *gi)
{
    double v;
    if (!json_number(cJSON_GetObjectItemCaseSensitive(gpu_instance, "gi"), &v))
        return false;
    *gi = to_uint(v);
    return true;
}

/* GPU instance `gi` in the layout of `rec`, or NULL when it has none such (now). */
const cJSON *mig_gpu_instance(const cJSON *rec, unsigned gi)
{
    const cJSON *inst;
    unsigned id;
    cJSON_ArrayForEach(inst, layout_list(rec, "gpu_instances"))
        if (gi_of(inst, &id) && id == gi)
            return inst;
    return NULL;
}

/* The MIG device recorded as `uuid` in the layout of `rec`, or NULL once it is destroyed. */
static const cJSON *mig_device_in(const cJSON *rec, const char *uuid)
{
    const cJSON *dev;
    cJSON_ArrayForEach(dev, layout_list(rec, "devices")) {
        const char *u = uuid_of(dev);
        if (u != NULL && strcmp(u, uuid) == 0)
            return dev;
    }
    return NULL;
}

/* --- loading: a handle for every MIG device and GPU instance a trace shows -------------------- */

struct seen {
    const char **uuids;
    size_t uuid_count, uuid_cap;
    unsigned *gis;
    size_t gi_count, gi_cap;
};

static bool grow(void **items, size_t *cap, size_t size)
{
    size_t bigger = *cap ? *cap * 2 : 8;
    void *p = realloc(*items, bigger * size);
    if (p == NULL)
        return false;
    *items = p;
    *cap = bigger;
    return true;
}

/* The MIG devices (by UUID) and GPU instances (by id) of one recorded GPU's trace, first seen first. */
static nvmlReturn_t collect(const struct recorded *r, struct seen *s)
{
    for (size_t i = 0; i < r->count; i++) {
        const cJSON *item;
        cJSON_ArrayForEach(item, layout_list(r->records[i], "devices")) {
            const char *uuid = uuid_of(item);
            bool known = uuid == NULL;
            for (size_t k = 0; k < s->uuid_count && !known; k++)
                known = strcmp(s->uuids[k], uuid) == 0;
            if (known)
                continue;
            if (s->uuid_count == s->uuid_cap && !grow((void **)&s->uuids, &s->uuid_cap, sizeof *s->uuids))
                return NVML_ERROR_MEMORY;
            s->uuids[s->uuid_count++] = uuid;
        }
        cJSON_ArrayForEach(item, layout_list(r->records[i], "gpu_instances")) {
            unsigned gi;
            bool known = !gi_of(item, &gi);
            for (size_t k = 0; k < s->gi_count && !known; k++)
                known = s->gis[k] == gi;
            if (known)
                continue;
            if (s->gi_count == s->gi_cap && !grow((void **)&s->gis, &s->gi_cap, sizeof *s->gis))
                return NVML_ERROR_MEMORY;
            s->gis[s->gi_count++] = gi;
        }
    }
    return NVML_SUCCESS;
}

/* A fanned-out copy's MIG devices get UUIDs of their own, as capture_mig.py gives them: the
 * recorded UUID with the GPU's index as the last four hex digits. */
static void mig_identify(struct nvmlDevice_st *m, struct nvmlDevice_st *gpu, const char *recorded_uuid)
{
    memset(m, 0, sizeof *m);
    m->index = gpu->index;
    m->recorded = gpu->recorded;
    m->offset = gpu->offset;
    m->parent = gpu;
    m->mig_uuid = recorded_uuid;
    size_t n = strlen(recorded_uuid);
    if (gpu->index < g.recorded_count)
        snprintf(m->uuid, sizeof m->uuid, "%s", recorded_uuid);
    else
        snprintf(m->uuid, sizeof m->uuid, "%.*s%04x", (int)(n >= 4 ? n - 4 : 0), recorded_uuid, gpu->index);
}

nvmlReturn_t mig_load(void)
{
    struct seen *seen = calloc(g.recorded_count, sizeof *seen);
    nvmlReturn_t ret = seen != NULL ? NVML_SUCCESS : NVML_ERROR_MEMORY;
    for (size_t r = 0; ret == NVML_SUCCESS && r < g.recorded_count; r++)
        ret = collect(&g.recorded[r], &seen[r]);
    size_t migs = 0, gis = 0;
    for (unsigned i = 0; ret == NVML_SUCCESS && i < g.device_count; i++) {
        migs += seen[g.devices[i].recorded].uuid_count;
        gis += seen[g.devices[i].recorded].gi_count;
    }
    if (ret == NVML_SUCCESS && migs > 0) {
        g.migs = calloc(migs, sizeof *g.migs);
        ret = g.migs != NULL ? NVML_SUCCESS : NVML_ERROR_MEMORY;
    }
    if (ret == NVML_SUCCESS && gis > 0) {
        g.gpu_instances = calloc(gis, sizeof *g.gpu_instances);
        ret = g.gpu_instances != NULL ? NVML_SUCCESS : NVML_ERROR_MEMORY;
    }
    for (unsigned i = 0; ret == NVML_SUCCESS && i < g.device_count; i++) {
        struct nvmlDevice_st *gpu = &g.devices[i];
        const struct seen *s = &seen[gpu->recorded];
        gpu->mig_first = g.mig_count;
        gpu->mig_count = s->uuid_count;
        for (size_t k = 0; k < s->uuid_count; k++)
            mig_identify(&g.migs[g.mig_count++], gpu, s->uuids[k]);
        gpu->gi_first = g.gpu_instance_count;
        gpu->gi_count = s->gi_count;
        for (size_t k = 0; k < s->gi_count; k++)
            g.gpu_instances[g.gpu_instance_count++] = (struct nvmlGpuInstance_st){.parent = gpu, .id = s->gis[k]};
    }
    for (size_t r = 0; seen != NULL && r < g.recorded_count; r++) {
        free(seen[r].uuids);
        free(seen[r].gis);
    }
    free(seen);
    return ret;
}

void mig_free(void)
{
    free(g.migs);
    free(g.gpu_instances);
    g.migs = NULL;
    g.mig_count = 0;
    g.gpu_instances = NULL;
    g.gpu_instance_count = 0;
}

/* --- handles -------------------------------------------------------------------------------- */

/* As device_of: addresses are compared before anything is read, so a made-up handle is refused. */
static struct nvmlDevice_st *mig_of(nvmlDevice_t handle)
{
    uintptr_t p = (uintptr_t)handle, base = (uintptr_t)g.migs;
    if (g.migs == NULL || p < base || p >= base + g.mig_count * sizeof *g.migs || (p - base) % sizeof *g.migs != 0)
        return NULL;
    return handle;
}

static struct nvmlGpuInstance_st *gpu_instance_of(nvmlGpuInstance_t handle)
{
    uintptr_t p = (uintptr_t)handle, base = (uintptr_t)g.gpu_instances;
    if (g.gpu_instances == NULL || p < base || p >= base + g.gpu_instance_count * sizeof *g.gpu_instances
        || (p - base) % sizeof *g.gpu_instances != 0)
        return NULL;
    return handle;
}

/* Begin a call that takes a GPU handle or a MIG device handle. For a MIG device, c->dev is its GPU
 * (whose faults apply and whose trace record answers), c->mig the MIG device and c->mig_rec its
 * entry in the layout playing now: NOT_FOUND when it has been destroyed since the handle was got. */
nvmlReturn_t call_begin_any(struct call *c, const char *name, nvmlDevice_t device)
{
    nvmlReturn_t ret = call_enter(c, name);
    if (ret != NVML_SUCCESS)
        return ret;
    struct nvmlDevice_st *mig = mig_of(device);
    if (mig == NULL)
        return call_device(c, device);
    ret = call_device(c, mig->parent);
    if (ret == NVML_SUCCESS) {
        c->mig = mig;
        c->mig_rec = mig_device_in(c->rec, mig->mig_uuid);
        if (c->mig_rec == NULL)
            ret = NVML_ERROR_NOT_FOUND;
    }
    return ret;
}

/* Calls that only a MIG device handle answers: on a whole GPU, INVALID_ARGUMENT (as capture_mig.py). */
static nvmlReturn_t call_begin_mig(struct call *c, const char *name, nvmlDevice_t device)
{
    nvmlReturn_t ret = call_begin_any(c, name, device);
    return ret == NVML_SUCCESS && c->mig == NULL ? NVML_ERROR_INVALID_ARGUMENT : ret;
}

/* --- mode and enumeration ------------------------------------------------------------------- */

/* The layout's mode while the trace has one; probe.json's otherwise (a GPU without MIG: [0, 0]). */
nvmlReturn_t DECLDIR nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    struct call c;
    const cJSON *mode = NULL;
    double v[2];
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && (currentMode == NULL || pendingMode == NULL))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && layout_of(c.rec) != NULL) {
        note_latency(&c, "nvmlDeviceGetMigMode");
        mode = cJSON_GetObjectItemCaseSensitive(layout_of(c.rec), "mode");
    } else if (ret == NVML_SUCCESS) {
        ret = answer(&c, NULL, "nvmlDeviceGetMigMode", &mode, NULL);
    }
    if (ret == NVML_SUCCESS && (!cJSON_IsArray(mode) || cJSON_GetArraySize(mode) < 2
                                || !json_number(cJSON_GetArrayItem(mode, 0), &v[0])
                                || !json_number(cJSON_GetArrayItem(mode, 1), &v[1])))
        ret = NVML_ERROR_UNKNOWN;
    if (ret == NVML_SUCCESS) {
        *currentMode = to_uint(v[0]);
        *pendingMode = to_uint(v[1]);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    struct call c;
    double v = 0;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && count == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = answer_number(&c, NULL, "nvmlDeviceGetMaxMigDeviceCount", &v);
    if (ret == NVML_SUCCESS)
        *count = to_uint(v);
    return call_end(&c, ret);
}

/* The index-th MIG device of the layout playing now; NOT_FOUND past its last (or without MIG). */
nvmlReturn_t DECLDIR nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                         nvmlDevice_t *migDevice)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && migDevice == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret != NVML_SUCCESS)
        return call_end(&c, ret);
    const cJSON *devices = layout_list(c.rec, "devices");
    const char *uuid = index < (unsigned)cJSON_GetArraySize(devices) ? uuid_of(cJSON_GetArrayItem(devices, (int)index))
                                                                      : NULL;
    ret = NVML_ERROR_NOT_FOUND;
    for (size_t k = 0; uuid != NULL && k < c.dev->mig_count; k++) {
        struct nvmlDevice_st *m = &g.migs[c.dev->mig_first + k];
        if (strcmp(m->mig_uuid, uuid) == 0) {
            *migDevice = m;
            ret = NVML_SUCCESS;
            break;
        }
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice, nvmlDevice_t *device)
{
    struct call c;
    nvmlReturn_t ret = call_begin_mig(&c, __func__, migDevice);
    if (ret == NVML_SUCCESS && device == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        *device = c.dev;
    return call_end(&c, ret);
}

/* Says what kind of handle it is, even for a MIG device destroyed since (the handle still is one). */
nvmlReturn_t DECLDIR nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
    struct call c;
    nvmlReturn_t ret = call_enter(&c, __func__);
    struct nvmlDevice_st *mig = ret == NVML_SUCCESS ? mig_of(device) : NULL;
    if (ret == NVML_SUCCESS)
        ret = call_device(&c, mig != NULL ? mig->parent : device);
    if (ret == NVML_SUCCESS && isMigDevice == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        *isMigDevice = mig != NULL;
    return call_end(&c, ret);
}

static nvmlReturn_t instance_id(const char *name, nvmlDevice_t device, const char *key, unsigned int *id)
{
    struct call c;
    double v = 0;
    nvmlReturn_t ret = call_begin_mig(&c, name, device);
    if (ret == NVML_SUCCESS && id == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = member_number(c.mig_rec, key, &v);
    if (ret == NVML_SUCCESS)
        *id = to_uint(v);
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return instance_id(__func__, device, "gi", id);
}

nvmlReturn_t DECLDIR nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return instance_id(__func__, device, "ci", id);
}

/* Only MIG devices have attributes (nvml.h); a whole GPU answers NOT_SUPPORTED. */
nvmlReturn_t DECLDIR nvmlDeviceGetAttributes_v2(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes)
{
    static const char *const MEMBERS[] = {
        "multiprocessorCount", "sharedCopyEngineCount", "sharedDecoderCount", "sharedEncoderCount",
        "sharedJpegCount", "sharedOfaCount", "gpuInstanceSliceCount", "computeInstanceSliceCount", "memorySizeMB",
    };
    struct call c;
    double v[sizeof MEMBERS / sizeof *MEMBERS] = {0};
    nvmlReturn_t ret = call_begin_any(&c, __func__, device);
    if (ret == NVML_SUCCESS)
        note_latency(&c, "nvmlDeviceGetAttributes_v2");
    if (ret == NVML_SUCCESS && c.mig == NULL)
        ret = NVML_ERROR_NOT_SUPPORTED;
    if (ret == NVML_SUCCESS && attributes == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        const cJSON *recorded = cJSON_GetObjectItemCaseSensitive(c.mig_rec, "attributes");
        for (size_t i = 0; i < sizeof MEMBERS / sizeof *MEMBERS; i++)
            member_number(recorded, MEMBERS[i], &v[i]); /* one the capture lacks stays 0 */
        memset(attributes, 0, sizeof *attributes);
        attributes->multiprocessorCount = to_uint(v[0]);
        attributes->sharedCopyEngineCount = to_uint(v[1]);
        attributes->sharedDecoderCount = to_uint(v[2]);
        attributes->sharedEncoderCount = to_uint(v[3]);
        attributes->sharedJpegCount = to_uint(v[4]);
        attributes->sharedOfaCount = to_uint(v[5]);
        attributes->gpuInstanceSliceCount = to_uint(v[6]);
        attributes->computeInstanceSliceCount = to_uint(v[7]);
        attributes->memorySizeMB = to_ull(v[8]);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetAttributes(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes)
{
    return nvmlDeviceGetAttributes_v2(device, attributes);
}

/* --- GPU instances (privileged in NVML; the faults file can refuse them as NVML would a user) --- */

nvmlReturn_t DECLDIR nvmlDeviceGetGpuInstanceById(nvmlDevice_t device, unsigned int id, nvmlGpuInstance_t *gpuInstance)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && gpuInstance == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && mig_gpu_instance(c.rec, id) == NULL)
        ret = NVML_ERROR_NOT_FOUND;
    if (ret == NVML_SUCCESS) {
        ret = NVML_ERROR_NOT_FOUND; /* unreachable: every id the trace shows has its handle */
        for (size_t k = 0; k < c.dev->gi_count; k++) {
            struct nvmlGpuInstance_st *gi = &g.gpu_instances[c.dev->gi_first + k];
            if (gi->id == id) {
                *gpuInstance = gi;
                ret = NVML_SUCCESS;
                break;
            }
        }
    }
    return call_end(&c, ret);
}

/* Looked up again on every call: a GPU instance destroyed since its handle was got is NOT_FOUND. */
nvmlReturn_t DECLDIR nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t *info)
{
    struct call c;
    nvmlReturn_t ret = call_enter(&c, __func__);
    struct nvmlGpuInstance_st *gi = ret == NVML_SUCCESS ? gpu_instance_of(gpuInstance) : NULL;
    if (ret == NVML_SUCCESS && gi == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = call_device(&c, gi->parent);
    if (ret == NVML_SUCCESS && info == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    const cJSON *inst = ret == NVML_SUCCESS ? mig_gpu_instance(c.rec, gi->id) : NULL;
    if (ret == NVML_SUCCESS && inst == NULL)
        ret = NVML_ERROR_NOT_FOUND;
    if (ret == NVML_SUCCESS) {
        double profile = 0, start = 0, size = 0;
        const cJSON *placement = cJSON_GetObjectItemCaseSensitive(inst, "placement"); /* [start, size] */
        member_number(inst, "profile_id", &profile);
        json_number(cJSON_GetArrayItem(placement, 0), &start);
        json_number(cJSON_GetArrayItem(placement, 1), &size);
        memset(info, 0, sizeof *info);
        info->device = gi->parent;
        info->id = gi->id;
        info->profileId = to_uint(profile);
        info->placement.start = to_uint(start);
        info->placement.size = to_uint(size);
    }
    return call_end(&c, ret);
}
