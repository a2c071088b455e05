/*
 * System and device queries. Each answers what the capture recorded: the trace record playing
 * now for values that change (the trace's keys, see shared/fixtures/nvml/README.md), probe.json
 * for the rest, recorded NVML errors included. Keys are the pynvml function names probe.json uses.
 */
#include "fakenvml.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* --- helpers -------------------------------------------------------------------------------- */

/* One number from the trace (`trace_key`, may be NULL) or probe.json (`probe_key`). `out_ok` is
 * false when the caller passed a NULL output pointer. */
static nvmlReturn_t get_number(const char *name, nvmlDevice_t device, const char *trace_key, const char *probe_key,
                               bool out_ok, double *v)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, name, device);
    if (ret == NVML_SUCCESS && !out_ok)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = answer_number(&c, trace_key, probe_key, v);
    return call_end(&c, ret);
}

/* Getters of one unsigned value: `type` is unsigned int or an NVML enum. */
#define UINT_GETTER(fn, type, trace_key)                                                   \
    nvmlReturn_t DECLDIR fn(nvmlDevice_t device, type *out)                                \
    {                                                                                      \
        double v = 0;                                                                      \
        nvmlReturn_t ret = get_number(#fn, device, trace_key, #fn, out != NULL, &v);       \
        if (ret == NVML_SUCCESS)                                                           \
            *out = (type)to_uint(v);                                                       \
        return ret;                                                                        \
    }

#define ULL_GETTER(fn, trace_key)                                                          \
    nvmlReturn_t DECLDIR fn(nvmlDevice_t device, unsigned long long *out)                  \
    {                                                                                      \
        double v = 0;                                                                      \
        nvmlReturn_t ret = get_number(#fn, device, trace_key, #fn, out != NULL, &v);       \
        if (ret == NVML_SUCCESS)                                                           \
            *out = to_ull(v);                                                              \
        return ret;                                                                        \
    }

/* A recorded list of numbers, e.g. [min, max]: element i of a probe answer. */
static nvmlReturn_t list_numbers(const cJSON *list, double *out, int n)
{
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) < n)
        return NVML_ERROR_UNKNOWN;
    for (int i = 0; i < n; i++)
        if (!json_number(cJSON_GetArrayItem(list, i), &out[i]))
            return NVML_ERROR_UNKNOWN;
    return NVML_SUCCESS;
}

static nvmlReturn_t get_numbers(const char *name, nvmlDevice_t device, const char *probe_key, bool out_ok,
                                double *out, int n)
{
    struct call c;
    const cJSON *item;
    nvmlReturn_t ret = call_begin(&c, name, device);
    if (ret == NVML_SUCCESS && !out_ok)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = answer(&c, NULL, probe_key, &item, NULL);
    if (ret == NVML_SUCCESS)
        ret = list_numbers(item, out, n);
    return call_end(&c, ret);
}

static nvmlReturn_t get_string(const char *name, nvmlDevice_t device, const char *probe_key, char *buf,
                               unsigned int length)
{
    struct call c;
    const cJSON *item;
    nvmlReturn_t ret = call_begin(&c, name, device);
    if (ret == NVML_SUCCESS)
        ret = answer(&c, NULL, probe_key, &item, NULL);
    if (ret == NVML_SUCCESS)
        ret = cJSON_IsString(item) ? copy_string(item->valuestring, buf, length) : NVML_ERROR_UNKNOWN;
    return call_end(&c, ret);
}

/* --- system --------------------------------------------------------------------------------- */

static nvmlReturn_t system_answer(struct call *c, const char *key, const cJSON **out)
{
    const cJSON *entry = probe_system(key);
    if (entry == NULL)
        return NVML_ERROR_NOT_SUPPORTED;
    c->latency_us = latency_of(entry);
    if (is_recorded_error(entry))
        return (nvmlReturn_t)error_code_of(cJSON_GetObjectItemCaseSensitive(entry, "err"));
    *out = cJSON_HasObjectItem(entry, "ok") ? cJSON_GetObjectItemCaseSensitive(entry, "ok") : entry;
    return NVML_SUCCESS;
}

static nvmlReturn_t system_string(const char *name, const char *key, const char *fallback, char *buf,
                                  unsigned int length)
{
    struct call c;
    const cJSON *item = NULL;
    nvmlReturn_t ret = call_begin_system(&c, name);
    if (ret == NVML_SUCCESS)
        ret = system_answer(&c, key, &item);
    if (ret == NVML_ERROR_NOT_SUPPORTED && fallback != NULL)
        ret = copy_string(fallback, buf, length);
    else if (ret == NVML_SUCCESS)
        ret = cJSON_IsString(item) ? copy_string(item->valuestring, buf, length) : NVML_ERROR_UNKNOWN;
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    return system_string(__func__, "driver", "replay", version, length); /* capture.py's default */
}

nvmlReturn_t DECLDIR nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    return system_string(__func__, "nvml", NULL, version, length);
}

nvmlReturn_t DECLDIR nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    struct call c;
    const cJSON *item = NULL;
    double v = 0;
    nvmlReturn_t ret = call_begin_system(&c, __func__);
    if (ret == NVML_SUCCESS && cudaDriverVersion == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = system_answer(&c, "cuda", &item);
    if (ret == NVML_ERROR_NOT_SUPPORTED)
        ret = NVML_SUCCESS; /* capture.py answers 0 when the probe did not record it */
    else if (ret == NVML_SUCCESS && !json_number(item, &v))
        ret = NVML_ERROR_UNKNOWN;
    if (ret == NVML_SUCCESS)
        *cudaDriverVersion = (int)v;
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

nvmlReturn_t DECLDIR nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    struct call c;
    nvmlReturn_t ret = call_begin_system(&c, __func__);
    if (ret == NVML_SUCCESS && deviceCount == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        c.latency_us = latency_of(probe_system("count"));
        *deviceCount = g.device_count;
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return nvmlDeviceGetCount_v2(deviceCount);
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    struct call c;
    nvmlReturn_t ret = call_begin_system(&c, __func__);
    if (ret == NVML_SUCCESS && (device == NULL || index >= g.device_count))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        c.latency_us = latency_of(probe_system("handle0"));
        *device = &g.devices[index];
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

/* Only the GPU asked for answers, so a lost GPU fails its own lookup, not another's. */
static nvmlReturn_t handle_found(struct call *c, struct nvmlDevice_st *found, nvmlDevice_t *device)
{
    if (found == NULL)
        return NVML_ERROR_NOT_FOUND;
    nvmlReturn_t ret = call_device(c, found);
    if (ret == NVML_SUCCESS)
        *device = found;
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    struct call c;
    struct nvmlDevice_st *found = NULL;
    nvmlReturn_t ret = call_enter(&c, __func__);
    if (ret == NVML_SUCCESS && (uuid == NULL || device == NULL))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        for (unsigned i = 0; i < g.device_count && found == NULL; i++)
            if (strcmp(g.devices[i].uuid, uuid) == 0)
                found = &g.devices[i];
        ret = handle_found(&c, found, device);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    struct call c;
    struct nvmlDevice_st *found = NULL;
    unsigned domain, bus, dev;
    nvmlReturn_t ret = call_enter(&c, __func__);
    if (ret == NVML_SUCCESS && (pciBusId == NULL || device == NULL || !parse_bus_id(pciBusId, &domain, &bus, &dev)))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        /* Either spelling (8- or 4-digit domain, any case) names the same device. */
        for (unsigned i = 0; i < g.device_count && found == NULL; i++) {
            const struct nvmlDevice_st *d = &g.devices[i];
            if (d->domain == domain && d->bus == bus && d->device == dev)
                found = &g.devices[i];
        }
        ret = handle_found(&c, found, device);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByPciBusId_v2(pciBusId, device);
}

/* --- identity ------------------------------------------------------------------------------- */

nvmlReturn_t DECLDIR nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && index == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        note_latency(&c, "nvmlDeviceGetIndex");
        *index = c.dev->index;
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && minorNumber == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        note_latency(&c, "nvmlDeviceGetMinorNumber");
        *minorNumber = c.dev->index; /* /dev/nvidiaN: one per GPU, like the index on most hosts */
    }
    return call_end(&c, ret);
}

/* A MIG device's UUID too (mig.c gives a fanned-out copy's its own), while it exists. */
nvmlReturn_t DECLDIR nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    struct call c;
    nvmlReturn_t ret = call_begin_any(&c, __func__, device);
    if (ret == NVML_SUCCESS) {
        note_latency(&c, "nvmlDeviceGetUUID");
        ret = copy_string(c.mig != NULL ? c.mig->uuid : c.dev->uuid, uuid, length);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    struct call c;
    const cJSON *item = NULL;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && pci == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = answer(&c, NULL, "nvmlDeviceGetPciInfo", &item, NULL);
    if (ret == NVML_SUCCESS) {
        double device_id = 0, subsystem_id = 0;
        member_number(item, "pciDeviceId", &device_id);
        member_number(item, "pciSubSystemId", &subsystem_id);
        memset(pci, 0, sizeof *pci);
        snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%s", c.dev->bus_id_legacy);
        snprintf(pci->busId, sizeof pci->busId, "%s", c.dev->bus_id);
        pci->domain = c.dev->domain;
        pci->bus = c.dev->bus;
        pci->device = c.dev->device;
        pci->pciDeviceId = to_uint(device_id);
        pci->pciSubSystemId = to_uint(subsystem_id);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    return nvmlDeviceGetPciInfo_v3(device, pci);
}

nvmlReturn_t DECLDIR nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    return nvmlDeviceGetPciInfo_v3(device, pci);
}

/* A MIG device's name is its layout entry's ("NVIDIA H200 MIG 1g.18gb"): gpumon reads profiles from it. */
nvmlReturn_t DECLDIR nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    struct call c;
    const cJSON *item = NULL;
    nvmlReturn_t ret = call_begin_any(&c, __func__, device);
    if (ret == NVML_SUCCESS && c.mig != NULL) {
        note_latency(&c, "nvmlDeviceGetName");
        item = cJSON_GetObjectItemCaseSensitive(c.mig_rec, "name");
    } else if (ret == NVML_SUCCESS) {
        ret = answer(&c, NULL, "nvmlDeviceGetName", &item, NULL);
    }
    if (ret == NVML_SUCCESS)
        ret = cJSON_IsString(item) ? copy_string(item->valuestring, name, length) : NVML_ERROR_UNKNOWN;
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length)
{
    return get_string(__func__, device, "nvmlDeviceGetSerial", serial, length);
}

nvmlReturn_t DECLDIR nvmlDeviceGetVbiosVersion(nvmlDevice_t device, char *version, unsigned int length)
{
    return get_string(__func__, device, "nvmlDeviceGetVbiosVersion", version, length);
}

nvmlReturn_t DECLDIR nvmlDeviceGetBoardPartNumber(nvmlDevice_t device, char *partNumber, unsigned int length)
{
    return get_string(__func__, device, "nvmlDeviceGetBoardPartNumber", partNumber, length);
}

nvmlReturn_t DECLDIR nvmlDeviceGetInforomImageVersion(nvmlDevice_t device, char *version, unsigned int length)
{
    return get_string(__func__, device, "nvmlDeviceGetInforomImageVersion", version, length);
}

nvmlReturn_t DECLDIR nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
    double v[2];
    nvmlReturn_t ret = get_numbers(__func__, device, __func__, major != NULL && minor != NULL, v, 2);
    if (ret == NVML_SUCCESS) {
        *major = (int)v[0];
        *minor = (int)v[1];
    }
    return ret;
}

/* --- single values -------------------------------------------------------------------------- */

UINT_GETTER(nvmlDeviceGetArchitecture, nvmlDeviceArchitecture_t, NULL)
UINT_GETTER(nvmlDeviceGetBrand, nvmlBrandType_t, NULL)
UINT_GETTER(nvmlDeviceGetPersistenceMode, nvmlEnableState_t, NULL)
UINT_GETTER(nvmlDeviceGetComputeMode, nvmlComputeMode_t, NULL)
UINT_GETTER(nvmlDeviceGetDisplayMode, nvmlEnableState_t, NULL)
UINT_GETTER(nvmlDeviceGetDisplayActive, nvmlEnableState_t, NULL)
UINT_GETTER(nvmlDeviceGetPerformanceState, nvmlPstates_t, "pstate")
UINT_GETTER(nvmlDeviceGetPowerState, nvmlPstates_t, "pstate")
UINT_GETTER(nvmlDeviceGetFanSpeed, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetNumFans, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetCurrPcieLinkGeneration, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetCurrPcieLinkWidth, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetMaxPcieLinkGeneration, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetMaxPcieLinkWidth, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetGpuMaxPcieLinkGeneration, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetPcieReplayCounter, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetPowerUsage, unsigned int, "power_mw")
UINT_GETTER(nvmlDeviceGetEnforcedPowerLimit, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetPowerManagementLimit, unsigned int, NULL)
UINT_GETTER(nvmlDeviceGetPowerManagementDefaultLimit, unsigned int, NULL)

ULL_GETTER(nvmlDeviceGetCurrentClocksEventReasons, "clocks_event_reasons")
ULL_GETTER(nvmlDeviceGetCurrentClocksThrottleReasons, "clocks_event_reasons")
ULL_GETTER(nvmlDeviceGetSupportedClocksEventReasons, NULL)
ULL_GETTER(nvmlDeviceGetSupportedClocksThrottleReasons, NULL)
ULL_GETTER(nvmlDeviceGetSupportedEventTypes, NULL)

/* A counter that must keep counting when the trace loops: add what each pass gained. */
nvmlReturn_t DECLDIR nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy)
{
    struct call c;
    const cJSON *item;
    bool from_trace = false;
    double v = 0;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && energy == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = answer(&c, "energy_mj_call", __func__, &item, &from_trace);
    if (ret == NVML_SUCCESS && !json_number(item, &v))
        ret = NVML_ERROR_UNKNOWN;
    if (ret == NVML_SUCCESS) {
        const struct recorded *r = &g.recorded[c.dev->recorded];
        if (from_trace)
            v += laps(r, c.play) * r->energy_lap;
        *energy = to_ull(v);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType,
                                              unsigned int *temp)
{
    struct call c;
    double v = 0;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && (temp == NULL || sensorType != NVML_TEMPERATURE_GPU))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        ret = answer_number(&c, "temp_c", "nvmlDeviceGetTemperature(GPU)", &v);
    if (ret == NVML_SUCCESS)
        *temp = to_uint(v);
    return call_end(&c, ret);
}

/* Getters with an argument: probe.json keys them as "name(argument)". */

nvmlReturn_t DECLDIR nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, nvmlTemperatureThresholds_t thresholdType,
                                                       unsigned int *temp)
{
    char key[96];
    double v = 0;
    snprintf(key, sizeof key, "nvmlDeviceGetTemperatureThreshold(%d)", (int)thresholdType);
    nvmlReturn_t ret = get_number(__func__, device, NULL, key, temp != NULL, &v);
    if (ret == NVML_SUCCESS)
        *temp = to_uint(v);
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link, nvmlEnableState_t *isActive)
{
    char key[96];
    double v = 0;
    snprintf(key, sizeof key, "nvmlDeviceGetNvLinkState(%u)", link);
    nvmlReturn_t ret = get_number(__func__, device, NULL, key, isActive != NULL, &v);
    if (ret == NVML_SUCCESS)
        *isActive = (nvmlEnableState_t)to_uint(v);
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetNvLinkVersion(nvmlDevice_t device, unsigned int link, unsigned int *version)
{
    char key[96];
    double v = 0;
    snprintf(key, sizeof key, "nvmlDeviceGetNvLinkVersion(%u)", link);
    nvmlReturn_t ret = get_number(__func__, device, NULL, key, version != NULL, &v);
    if (ret == NVML_SUCCESS)
        *version = to_uint(v);
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetNvLinkErrorCounter(nvmlDevice_t device, unsigned int link,
                                                     nvmlNvLinkErrorCounter_t counter, unsigned long long *counterValue)
{
    char key[96], name[16];
    double v = 0;
    snprintf(key, sizeof key, "nvmlDeviceGetNvLinkErrorCounter(%u,%d)", link, (int)counter);
    snprintf(name, sizeof name, "%u", link);
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && counterValue == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    /* A trace record may carry a link's counters, {"nvlink_errors": {"<link>": [replay, recovery,
     * crc_flit, crc_data]}}, so that they rise during the trace (as capture.py reads them); a link
     * or counter the record lacks answers from probe.json. */
    const cJSON *counts = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c.rec, "nvlink_errors"), name);
    if (ret == NVML_SUCCESS && cJSON_IsArray(counts) && (int)counter >= 0
        && json_number(cJSON_GetArrayItem(counts, (int)counter), &v))
        note_latency(&c, key);
    else if (ret == NVML_SUCCESS)
        ret = answer_number(&c, NULL, key, &v);
    if (ret == NVML_SUCCESS)
        *counterValue = to_ull(v);
    return call_end(&c, ret);
}

static const char *const CLOCK_NAMES[] = {"GRAPHICS", "SM", "MEM", "VIDEO"};

static nvmlReturn_t clock_info(const char *name, const char *probe_name, nvmlDevice_t device, nvmlClockType_t type,
                               bool current, unsigned int *clock)
{
    char key[96];
    double v = 0;
    if ((unsigned)type >= sizeof CLOCK_NAMES / sizeof *CLOCK_NAMES) {
        struct call c;
        nvmlReturn_t ret = call_begin(&c, name, device);
        return call_end(&c, ret == NVML_SUCCESS ? NVML_ERROR_INVALID_ARGUMENT : ret);
    }
    /* The trace recorded the SM and memory clocks; graphics and video clocks stay as probed. */
    const char *trace_key = !current ? NULL : type == NVML_CLOCK_SM ? "sm_clock_mhz"
                                          : type == NVML_CLOCK_MEM ? "mem_clock_mhz" : NULL;
    snprintf(key, sizeof key, "%s(%s)", probe_name, CLOCK_NAMES[type]);
    nvmlReturn_t ret = get_number(name, device, trace_key, key, clock != NULL, &v);
    if (ret == NVML_SUCCESS)
        *clock = to_uint(v);
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock)
{
    return clock_info(__func__, "nvmlDeviceGetClockInfo", device, type, true, clock);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock)
{
    return clock_info(__func__, "nvmlDeviceGetMaxClockInfo", device, type, false, clock);
}

nvmlReturn_t DECLDIR nvmlDeviceGetApplicationsClock(nvmlDevice_t device, nvmlClockType_t clockType,
                                                    unsigned int *clockMHz)
{
    return clock_info(__func__, "nvmlDeviceGetApplicationsClock", device, clockType, false, clockMHz);
}

/* Blocks ~20 ms per call on real hardware: with FAKENVML_LATENCY it does here too. */
nvmlReturn_t DECLDIR nvmlDeviceGetPcieThroughput(nvmlDevice_t device, nvmlPcieUtilCounter_t counter,
                                                 unsigned int *value)
{
    double v = 0;
    bool tx = counter == NVML_PCIE_UTIL_TX_BYTES;
    if (!tx && counter != NVML_PCIE_UTIL_RX_BYTES) {
        struct call c;
        nvmlReturn_t ret = call_begin(&c, __func__, device);
        return call_end(&c, ret == NVML_SUCCESS ? NVML_ERROR_INVALID_ARGUMENT : ret);
    }
    nvmlReturn_t ret = get_number(__func__, device, tx ? "pcie_tx_kbps" : "pcie_rx_kbps",
                                    tx ? "nvmlDeviceGetPcieThroughput(TX)" : "nvmlDeviceGetPcieThroughput(RX)",
                                    value != NULL, &v);
    if (ret == NVML_SUCCESS)
        *value = to_uint(v);
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType,
                                                 nvmlEccCounterType_t counterType, unsigned long long *eccCounts)
{
    char key[96];
    double v = 0;
    snprintf(key, sizeof key, "nvmlDeviceGetTotalEccErrors(%d,%d)", (int)errorType, (int)counterType);
    nvmlReturn_t ret = get_number(__func__, device, NULL, key, eccCounts != NULL, &v);
    if (ret == NVML_SUCCESS)
        *eccCounts = to_ull(v);
    return ret;
}

/* --- structs -------------------------------------------------------------------------------- */

/* One recorded object (trace or probe), with `n` numeric members read into `out`. */
static nvmlReturn_t get_object(struct call *c, const char *trace_key, const char *probe_key, bool out_ok,
                               const char *const *members, double *out, int n, const cJSON **object,
                               bool *from_trace)
{
    const cJSON *item = NULL;
    nvmlReturn_t ret = out_ok ? answer(c, trace_key, probe_key, &item, from_trace) : NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; ret == NVML_SUCCESS && i < n; i++)
        ret = member_number(item, members[i], &out[i]);
    if (object != NULL)
        *object = item;
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    static const char *const MEMBERS[] = {"gpu", "memory"};
    double v[2];
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS)
        ret = get_object(&c, "util", __func__, utilization != NULL, MEMBERS, v, 2, NULL, NULL);
    if (ret == NVML_SUCCESS) {
        utilization->gpu = to_uint(v[0]);
        utilization->memory = to_uint(v[1]);
    }
    return call_end(&c, ret);
}

/* A MIG device's memory, from its layout entry's `mem` (recorded the v2 way, as the GPU's). Every
 * compute instance of a GPU instance reports the GPU instance's memory, as NVML does. */
static nvmlReturn_t mig_memory(struct call *c, bool out_ok, double v[4])
{
    static const char *const MEMBERS[] = {"total", "free", "used"};
    if (!out_ok)
        return NVML_ERROR_INVALID_ARGUMENT;
    note_latency(c, "nvmlDeviceGetMemoryInfo");
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(c->mig_rec, "mem");
    nvmlReturn_t ret = NVML_SUCCESS;
    for (int i = 0; ret == NVML_SUCCESS && i < 3; i++)
        ret = member_number(mem, MEMBERS[i], &v[i]);
    v[3] = 0;
    member_number(mem, "reserved", &v[3]);
    return ret;
}

/* The trace records memory the v2 way (reserved apart from used); v1 counts reserved memory as
 * used, as the real driver does (probe.json: v1 used == v2 used + reserved == total - free). */
nvmlReturn_t DECLDIR nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    static const char *const MEMBERS[] = {"total", "free", "used"};
    double v[3];
    bool from_trace = false;
    struct call c;
    nvmlReturn_t ret = call_begin_any(&c, __func__, device);
    if (ret == NVML_SUCCESS && c.mig != NULL) {
        double mig[4];
        ret = mig_memory(&c, memory != NULL, mig);
        memcpy(v, mig, sizeof v);
        from_trace = true;
    } else if (ret == NVML_SUCCESS) {
        ret = get_object(&c, "mem", __func__, memory != NULL, MEMBERS, v, 3, NULL, &from_trace);
    }
    if (ret == NVML_SUCCESS) {
        memory->total = to_ull(v[0]);
        memory->free = to_ull(v[1]);
        if (from_trace)
            memory->used = memory->free <= memory->total ? memory->total - memory->free : 0;
        else
            memory->used = to_ull(v[2]);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    static const char *const MEMBERS[] = {"total", "free", "used"};
    double v[3], reserved = 0;
    struct call c;
    const cJSON *item;
    nvmlReturn_t ret = call_begin_any(&c, __func__, device);
    if (ret == NVML_SUCCESS && memory != NULL && memory->version != nvmlMemory_v2)
        ret = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (ret == NVML_SUCCESS && c.mig != NULL) {
        double mig[4];
        ret = mig_memory(&c, memory != NULL, mig);
        memcpy(v, mig, sizeof v);
        reserved = mig[3];
    } else if (ret == NVML_SUCCESS) {
        ret = get_object(&c, "mem", "nvmlDeviceGetMemoryInfo(v2)", memory != NULL, MEMBERS, v, 3, &item, NULL);
        if (ret == NVML_SUCCESS)
            member_number(item, "reserved", &reserved); /* absent from captures of old drivers: 0 */
    }
    if (ret == NVML_SUCCESS) {
        memory->total = to_ull(v[0]);
        memory->free = to_ull(v[1]);
        memory->used = to_ull(v[2]);
        memory->reserved = to_ull(reserved);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetBAR1MemoryInfo(nvmlDevice_t device, nvmlBAR1Memory_t *bar1Memory)
{
    static const char *const MEMBERS[] = {"bar1Total", "bar1Free", "bar1Used"};
    double v[3];
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS)
        ret = get_object(&c, NULL, __func__, bar1Memory != NULL, MEMBERS, v, 3, NULL, NULL);
    if (ret == NVML_SUCCESS) {
        bar1Memory->bar1Total = to_ull(v[0]);
        bar1Memory->bar1Free = to_ull(v[1]);
        bar1Memory->bar1Used = to_ull(v[2]);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetViolationStatus(nvmlDevice_t device, nvmlPerfPolicyType_t perfPolicyType,
                                                  nvmlViolationTime_t *violTime)
{
    static const char *const MEMBERS[] = {"referenceTime", "violationTime"};
    char key[96];
    double v[2];
    struct call c;
    snprintf(key, sizeof key, "nvmlDeviceGetViolationStatus(%d)", (int)perfPolicyType);
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS)
        ret = get_object(&c, NULL, key, violTime != NULL, MEMBERS, v, 2, NULL, NULL);
    if (ret == NVML_SUCCESS) {
        violTime->referenceTime = to_ull(v[0]);
        violTime->violationTime = to_ull(v[1]);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device, unsigned int *minLimit,
                                                                  unsigned int *maxLimit)
{
    double v[2];
    nvmlReturn_t ret = get_numbers(__func__, device, __func__, minLimit != NULL && maxLimit != NULL, v, 2);
    if (ret == NVML_SUCCESS) {
        *minLimit = to_uint(v[0]);
        *maxLimit = to_uint(v[1]);
    }
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
                                               unsigned int *isPending, unsigned int *failureOccurred)
{
    double v[4];
    bool out_ok = corrRows != NULL && uncRows != NULL && isPending != NULL && failureOccurred != NULL;
    nvmlReturn_t ret = get_numbers(__func__, device, __func__, out_ok, v, 4);
    if (ret == NVML_SUCCESS) {
        *corrRows = to_uint(v[0]);
        *uncRows = to_uint(v[1]);
        *isPending = to_uint(v[2]);
        *failureOccurred = to_uint(v[3]);
    }
    return ret;
}

nvmlReturn_t DECLDIR nvmlDeviceGetEccMode(nvmlDevice_t device, nvmlEnableState_t *current, nvmlEnableState_t *pending)
{
    double v[2];
    nvmlReturn_t ret = get_numbers(__func__, device, __func__, current != NULL && pending != NULL, v, 2);
    if (ret == NVML_SUCCESS) {
        *current = (nvmlEnableState_t)to_uint(v[0]);
        *pending = (nvmlEnableState_t)to_uint(v[1]);
    }
    return ret;
}

/* --- running processes ---------------------------------------------------------------------- */

/* NVML's two-call protocol: with too small a buffer, say how many there are and return
 * INSUFFICIENT_SIZE; with none running, SUCCESS and a count of 0. Under MIG each process carries its
 * GPU and compute instance ids: recorded as "gi"/"ci" in the GPU's list, and a MIG device's list
 * (its layout entry's `procs`, compute processes only) has its own instance's. */
static nvmlReturn_t processes(const char *name, nvmlDevice_t device, const char *trace_key, const char *probe_key,
                              bool mig_ok, unsigned int *infoCount, nvmlProcessInfo_t *infos)
{
    struct call c;
    const cJSON *list = NULL;
    double mig_gi = NAN, mig_ci = NAN;
    nvmlReturn_t ret = mig_ok ? call_begin_any(&c, name, device) : call_begin(&c, name, device);
    if (ret == NVML_SUCCESS && infoCount == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && c.mig != NULL) {
        note_latency(&c, probe_key);
        list = cJSON_GetObjectItemCaseSensitive(c.mig_rec, "procs");
        member_number(c.mig_rec, "gi", &mig_gi);
        member_number(c.mig_rec, "ci", &mig_ci);
    } else if (ret == NVML_SUCCESS) {
        ret = answer(&c, trace_key, probe_key, &list, NULL);
    }
    if (ret == NVML_SUCCESS && !cJSON_IsArray(list))
        ret = NVML_ERROR_UNKNOWN;
    if (ret == NVML_SUCCESS) {
        unsigned n = (unsigned)cJSON_GetArraySize(list);
        if (*infoCount < n) {
            ret = NVML_ERROR_INSUFFICIENT_SIZE;
        } else if (n > 0 && infos == NULL) {
            ret = NVML_ERROR_INVALID_ARGUMENT;
        } else {
            unsigned i = 0;
            const cJSON *p;
            cJSON_ArrayForEach(p, list) {
                double pid = 0, used = NAN, gi = mig_gi, ci = mig_ci;
                member_number(p, "pid", &pid);
                member_number(p, "used", &used); /* null: not available, as under WDDM */
                if (c.mig == NULL) {
                    member_number(p, "gi", &gi);
                    member_number(p, "ci", &ci);
                }
                infos[i].pid = to_uint(pid);
                infos[i].usedGpuMemory = isnan(used) ? (unsigned long long)NVML_VALUE_NOT_AVAILABLE : to_ull(used);
                infos[i].gpuInstanceId = isnan(gi) ? 0xFFFFFFFFu : to_uint(gi); /* 0xFFFFFFFF: no MIG */
                infos[i].computeInstanceId = isnan(ci) ? 0xFFFFFFFFu : to_uint(ci);
                i++;
            }
        }
        *infoCount = n;
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                             nvmlProcessInfo_t *infos)
{
    return processes(__func__, device, "procs", "nvmlDeviceGetComputeRunningProcesses", true, infoCount, infos);
}

/* v2 has the same layout as v3 (nvml.h: nvmlProcessInfo_v2_t is nvmlProcessInfo_t). */
nvmlReturn_t DECLDIR nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                             nvmlProcessInfo_v2_t *infos)
{
    return processes(__func__, device, "procs", "nvmlDeviceGetComputeRunningProcesses", true, infoCount, infos);
}

nvmlReturn_t DECLDIR nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                              nvmlProcessInfo_t *infos)
{
    return processes(__func__, device, "procs_graphics", "nvmlDeviceGetGraphicsRunningProcesses", false, infoCount,
                     infos);
}

nvmlReturn_t DECLDIR nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                              nvmlProcessInfo_v2_t *infos)
{
    return processes(__func__, device, "procs_graphics", "nvmlDeviceGetGraphicsRunningProcesses", false, infoCount,
                     infos);
}

nvmlReturn_t DECLDIR nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                                nvmlProcessInfo_t *infos)
{
    return processes(__func__, device, "procs_mps", "nvmlDeviceGetMPSComputeRunningProcesses", false, infoCount,
                     infos);
}

/* --- per-process utilisation ---------------------------------------------------------------- */

#define UTILIZATION_BUFFER_S 10.0 /* how far back samples are kept, like the driver's buffer */
#define MAX_UTIL_SAMPLES 8192

struct util_sample {
    unsigned pid;
    unsigned long long stamp;
    unsigned v[4]; /* sm, mem, enc, dec */
};

/* The trace's "proc_util" samples of the records played in the last UTILIZATION_BUFFER_S,
 * stamped with the record's Unix time plus a lap's length per loop (so stamps keep rising), and
 * newer than last_seen. Returns how many, or -1 with *ret set when the capture has none at all
 * (then probe.json's answer, as recorded: NotFound on the H200). */
static long utilization_samples(struct call *c, const char *probe_key, unsigned long long last_seen,
                                struct util_sample *out, nvmlReturn_t *ret)
{
    const struct recorded *r = &g.recorded[c->dev->recorded];
    bool any = false;
    for (size_t i = 0; i < r->count && !any; i++)
        any = cJSON_GetObjectItemCaseSensitive(r->records[i], "proc_util") != NULL;
    if (!any) {
        const cJSON *entry = probe_entry(c->dev, probe_key);
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(entry, "err");
        *ret = err != NULL ? (nvmlReturn_t)error_code_of(err) : NVML_ERROR_NOT_SUPPORTED;
        return -1;
    }
    double play = g.config.loop ? c->play : fmin(c->play, r->duration);
    double first = fmax(0.0, floor((play - UTILIZATION_BUFFER_S) / r->duration));
    long n = 0;
    for (double lap = first; lap <= floor(play / r->duration); lap++) {
        for (size_t i = 0; i < r->count; i++) {
            double at = lap * r->duration + r->t[i] - r->t[0];
            unsigned long long stamp = (unsigned long long)((r->t[i] + lap * r->duration) * 1e6);
            if (!(at > play - UTILIZATION_BUFFER_S && at <= play && stamp > last_seen))
                continue;
            const cJSON *u;
            cJSON_ArrayForEach(u, cJSON_GetObjectItemCaseSensitive(r->records[i], "proc_util")) {
                if (n == MAX_UTIL_SAMPLES)
                    return n;
                double v[5] = {0, 0, 0, 0, 0};
                member_number(u, "pid", &v[0]);
                member_number(u, "sm", &v[1]);
                member_number(u, "mem", &v[2]);
                member_number(u, "enc", &v[3]);
                member_number(u, "dec", &v[4]);
                out[n].pid = to_uint(v[0]);
                out[n].stamp = stamp;
                for (int k = 0; k < 4; k++)
                    out[n].v[k] = to_uint(v[k + 1]);
                n++;
            }
        }
    }
    return n;
}

/* Every sample, as the older call returns them (several per process when it ran in several). */
nvmlReturn_t DECLDIR nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *utilization,
                                                     unsigned int *processSamplesCount,
                                                     unsigned long long lastSeenTimeStamp)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && processSamplesCount == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret != NVML_SUCCESS)
        return call_end(&c, ret);
    note_latency(&c, "nvmlDeviceGetProcessUtilization(0)");
    struct util_sample *samples = calloc(MAX_UTIL_SAMPLES, sizeof *samples);
    if (samples == NULL)
        return call_end(&c, NVML_ERROR_MEMORY);
    long n = utilization_samples(&c, "nvmlDeviceGetProcessUtilization(0)", lastSeenTimeStamp, samples, &ret);
    if (n == 0)
        ret = NVML_ERROR_NOT_FOUND;
    else if (n > 0 && (utilization == NULL || *processSamplesCount < (unsigned)n))
        ret = NVML_ERROR_INSUFFICIENT_SIZE;
    else if (n > 0) {
        for (long i = 0; i < n; i++) {
            utilization[i].pid = samples[i].pid;
            utilization[i].timeStamp = samples[i].stamp;
            utilization[i].smUtil = samples[i].v[0];
            utilization[i].memUtil = samples[i].v[1];
            utilization[i].encUtil = samples[i].v[2];
            utilization[i].decUtil = samples[i].v[3];
        }
    }
    if (n > 0)
        *processSamplesCount = (unsigned)n;
    free(samples);
    return call_end(&c, ret);
}

/* One entry per process: its mean over the samples, stamped with the newest, as the driver
 * sums up "the last sample period" per process. */
nvmlReturn_t DECLDIR nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t device,
                                                           nvmlProcessesUtilizationInfo_t *procesesUtilInfo)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && procesesUtilInfo == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && procesesUtilInfo->version != nvmlProcessesUtilizationInfo_v1)
        ret = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (ret != NVML_SUCCESS)
        return call_end(&c, ret);
    note_latency(&c, "nvmlDeviceGetProcessesUtilizationInfo(0)");
    struct util_sample *samples = calloc(MAX_UTIL_SAMPLES, sizeof *samples);
    struct util_sample *merged = calloc(MAX_UTIL_SAMPLES, sizeof *merged);
    unsigned *counts = calloc(MAX_UTIL_SAMPLES, sizeof *counts);
    unsigned long long (*sums)[4] = calloc(MAX_UTIL_SAMPLES, sizeof *sums);
    if (samples == NULL || merged == NULL || counts == NULL || sums == NULL) {
        free(samples);
        free(merged);
        free(counts);
        free(sums);
        return call_end(&c, NVML_ERROR_MEMORY);
    }
    long n = utilization_samples(&c, "nvmlDeviceGetProcessesUtilizationInfo(0)",
                                 procesesUtilInfo->lastSeenTimeStamp, samples, &ret);
    unsigned m = 0;
    for (long i = 0; i < n; i++) {
        unsigned j = 0;
        while (j < m && merged[j].pid != samples[i].pid)
            j++;
        if (j == m) {
            merged[m++] = samples[i];
            memset(merged[j].v, 0, sizeof merged[j].v);
        }
        if (samples[i].stamp > merged[j].stamp)
            merged[j].stamp = samples[i].stamp;
        for (int k = 0; k < 4; k++)
            sums[j][k] += samples[i].v[k];
        counts[j]++;
    }
    if (n == 0)
        ret = NVML_ERROR_NOT_FOUND;
    else if (n > 0 && (procesesUtilInfo->procUtilArray == NULL || procesesUtilInfo->processSamplesCount < m))
        ret = NVML_ERROR_INSUFFICIENT_SIZE;
    else if (n > 0) {
        for (unsigned j = 0; j < m; j++) {
            nvmlProcessUtilizationInfo_v1_t *o = &procesesUtilInfo->procUtilArray[j];
            memset(o, 0, sizeof *o);
            o->pid = merged[j].pid;
            o->timeStamp = merged[j].stamp;
            o->smUtil = (unsigned)(sums[j][0] / counts[j]);
            o->memUtil = (unsigned)(sums[j][1] / counts[j]);
            o->encUtil = (unsigned)(sums[j][2] / counts[j]);
            o->decUtil = (unsigned)(sums[j][3] / counts[j]);
        }
    }
    if (n > 0)
        procesesUtilInfo->processSamplesCount = m;
    free(samples);
    free(merged);
    free(counts);
    free(sums);
    return call_end(&c, ret);
}

/* --- field values --------------------------------------------------------------------------- */

/* The trace's name for the fields it recorded (see capture.py TRACE_FIELDS). */
static const char *trace_field(unsigned int id)
{
    switch (id) {
    case 3: return "ecc_sbe_vol";
    case 4: return "ecc_dbe_vol";
    case 82: return "mem_temp_c";
    case 83: return "energy_mj";
    case 94: return "pcie_replay";
    case 138: return "nvlink_tx_kib";
    case 139: return "nvlink_rx_kib";
    case 186: return "power_instant_mw";
    case 197: return "pcie_tx_bytes";
    case 198: return "pcie_rx_bytes";
    default: return NULL;
    }
}

/* Store `x` as the field's `type`; with has_value false, only the type (NVML leaves it zero). */
static void set_field(nvmlFieldValue_t *v, int type, bool has_value, double x)
{
    v->valueType = (nvmlValueType_t)type;
    memset(&v->value, 0, sizeof v->value);
    if (!has_value)
        return;
    switch (type) {
    case NVML_VALUE_TYPE_UNSIGNED_INT: v->value.uiVal = to_uint(x); break;
    case NVML_VALUE_TYPE_UNSIGNED_LONG: v->value.ulVal = (unsigned long)to_ull(x); break;
    case NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: v->value.ullVal = to_ull(x); break;
    case NVML_VALUE_TYPE_SIGNED_LONG_LONG: v->value.sllVal = isfinite(x) ? (long long)x : 0; break;
    case NVML_VALUE_TYPE_SIGNED_INT: v->value.siVal = isfinite(x) ? (int)x : 0; break;
    case NVML_VALUE_TYPE_UNSIGNED_SHORT: v->value.usVal = (unsigned short)to_uint(x); break;
    default: v->value.dVal = x; break;
    }
}

/* A field recorded per link (the NVLink throughput fields 138-141), answered for `scope` as NVML
 * does: link n for scopeId n, the sum of all links for UINT_MAX, InvalidArgument for another scope. */
static nvmlReturn_t scoped_value(const cJSON *links, unsigned int scope, double *out)
{
    int n = cJSON_GetArraySize(links);
    double x;
    *out = 0;
    if (scope == UINT_MAX) {
        for (int i = 0; i < n; i++) {
            if (!json_number(cJSON_GetArrayItem(links, i), &x))
                return NVML_ERROR_UNKNOWN;
            *out += x;
        }
        return NVML_SUCCESS;
    }
    if (scope >= (unsigned int)n)
        return NVML_ERROR_INVALID_ARGUMENT;
    return json_number(cJSON_GetArrayItem(links, (int)scope), out) ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

/* Per-field return codes inside a successful call, as the driver does: a field the GPU lacks
 * is NotSupported in its own slot, and the call still succeeds. */
nvmlReturn_t DECLDIR nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && (valuesCount < 0 || (valuesCount > 0 && values == NULL)))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(c.rec, "fields");
    if (ret == NVML_SUCCESS && cJSON_IsObject(fields) && cJSON_GetArraySize(fields) == 1
        && cJSON_HasObjectItem(fields, "err"))
        ret = (nvmlReturn_t)error_code_of(cJSON_GetObjectItemCaseSensitive(fields, "err"));
    if (ret != NVML_SUCCESS)
        return call_end(&c, ret);

    const cJSON *by_id = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(g.recorded[c.dev->recorded].probe, "fields"), "by_id");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long stamp = (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000;
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *v = &values[i];
        char id[16];
        snprintf(id, sizeof id, "%u", v->fieldId);
        const cJSON *probe = cJSON_GetObjectItemCaseSensitive(by_id, id);
        const char *key = trace_field(v->fieldId);
        const cJSON *recorded = key ? cJSON_GetObjectItemCaseSensitive(fields, key) : NULL;
        double scoped = 0;
        bool per_link = cJSON_IsArray(recorded);
        nvmlReturn_t scope_ret = per_link ? scoped_value(recorded, v->scopeId, &scoped) : NVML_SUCCESS;
        double probe_ret = NVML_ERROR_NOT_SUPPORTED, type = -1, lat = 0, x;
        member_number(probe, "ret", &probe_ret);
        member_number(probe, "type", &type);
        member_number(probe, "lat_us", &lat);
        c.latency_us += isfinite(lat) && lat > 0 ? lat : 0; /* the slow fields are what cost */
        v->timestamp = stamp;
        v->latencyUsec = (long long)lat;
        if (recorded == NULL || cJSON_IsNull(recorded)) { /* not in the trace: as probed */
            bool has = json_number(cJSON_GetObjectItemCaseSensitive(probe, "value"), &x);
            v->nvmlReturn = (nvmlReturn_t)probe_ret;
            set_field(v, type >= 0 ? (int)type : NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, has, x);
        } else if (per_link) { /* one value per link: scopeId picks one, UINT_MAX sums them */
            v->nvmlReturn = scope_ret;
            set_field(v, type >= 0 ? (int)type : NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, scope_ret == NVML_SUCCESS, scoped);
        } else if (cJSON_IsObject(recorded)) { /* {"err": N}: this field failed at that moment */
            const cJSON *err = cJSON_GetObjectItemCaseSensitive(recorded, "err");
            v->nvmlReturn = err ? (nvmlReturn_t)error_code_of(err) : NVML_ERROR_UNKNOWN;
            set_field(v, type >= 0 ? (int)type : NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, false, 0);
        } else {
            bool has = json_number(recorded, &x);
            if (has && v->fieldId == 83) { /* the energy counter keeps counting when the trace loops */
                const struct recorded *r = &g.recorded[c.dev->recorded];
                x += laps(r, c.play) * r->energy_field_lap;
            }
            v->nvmlReturn = has ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
            int guessed = has && x == floor(x) ? NVML_VALUE_TYPE_UNSIGNED_LONG_LONG : NVML_VALUE_TYPE_DOUBLE;
            set_field(v, type >= 0 ? (int)type : guessed, has, x);
        }
    }
    return call_end(&c, NVML_SUCCESS);
}

/* Registration with the NVSwitch fabric. The probe may record the answer's fields ({"state": 3,
 * "status": 0, "cliqueId": 1, "healthMask": ..., "healthSummary": 1}) and the struct versions the
 * recorded driver accepted ({"versions": [2]}: one before v3); a capture without it answers as the
 * captured H200 does (nvidia-smi -q: "Fabric State: N/A"): success, state
 * NVML_GPU_FABRIC_STATE_NOT_SUPPORTED. The caller's struct is v2 or v3 (v3 adds healthSummary, 0 "not
 * supported" when the probe has none); another version is refused, as NVML does. */
static bool fabric_version_recorded(const cJSON *item, unsigned int version)
{
    const cJSON *versions = cJSON_GetObjectItemCaseSensitive(item, "versions");
    const cJSON *v;
    if (!cJSON_IsArray(versions))
        return true; /* not recorded: both */
    cJSON_ArrayForEach(v, versions)
        if (cJSON_IsNumber(v) && v->valuedouble == (double)(version >> 24))
            return true;
    return false;
}

nvmlReturn_t DECLDIR nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t device, nvmlGpuFabricInfoV_t *info)
{
    static const char *const MEMBERS[] = {"state", "status", "cliqueId", "healthMask", "healthSummary"};
    double v[5] = {NVML_GPU_FABRIC_STATE_NOT_SUPPORTED, NVML_SUCCESS, 0, 0,
                   NVML_GPU_FABRIC_HEALTH_SUMMARY_NOT_SUPPORTED};
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && info == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && info->version != nvmlGpuFabricInfo_v2 && info->version != nvmlGpuFabricInfo_v3)
        ret = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (ret == NVML_SUCCESS && probe_entry(c.dev, __func__) != NULL) {
        const cJSON *item = NULL;
        ret = answer(&c, NULL, __func__, &item, NULL);
        if (ret == NVML_SUCCESS && !fabric_version_recorded(item, info->version))
            ret = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        for (int i = 0; ret == NVML_SUCCESS && i < 5; i++)
            member_number(item, MEMBERS[i], &v[i]); /* a member not recorded keeps its default */
    }
    if (ret == NVML_SUCCESS) {
        memset(info->clusterUuid, 0, sizeof info->clusterUuid);
        info->status = (nvmlReturn_t)to_uint(v[1]);
        info->cliqueId = to_uint(v[2]);
        /* state is one byte: the padding after it is not NVML's to clear, and a reader that takes it as
         * a 4-byte int (pynvml) must mask it; filled here so that one that does not fails its tests. */
        unsigned char *after_state = (unsigned char *)&info->state + sizeof info->state;
        memset(after_state, 0xA5, (size_t)((unsigned char *)&info->healthMask - after_state));
        info->state = (nvmlGpuFabricState_t)to_uint(v[0]);
        info->healthMask = to_uint(v[3]);
        if (info->version == nvmlGpuFabricInfo_v3)
            info->healthSummary = (unsigned char)to_uint(v[4]);
    }
    return call_end(&c, ret);
}
