/*
 * A C client for the fake libnvidia-ml.so.1, built with AddressSanitizer and UBSan by
 * tests/tools/fakenvml/test_sanitizers.py: every implemented call from parallel threads, the error
 * paths (bad handles, short buffers, NULL pointers), hung calls and event waits cut short by
 * nvmlShutdown, and objects the client never frees. Twice, so that shutdown provably frees what
 * init loaded (leak checking is on). Prints "ok" and exits 0, or names the first failed check.
 *
 * `smoke mig` does the same for the MIG calls, on the MIG capture (tests/fixtures/mig) played
 * fast, so that GPU instances are destroyed and made again while threads use their handles.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <nvml.h>

#define GPUS 4

static int failures;

#define EXPECT(call, want)                                                                         \
    do {                                                                                           \
        nvmlReturn_t got_ = (call);                                                                \
        if (got_ != (want)) {                                                                      \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d\n", __FILE__, __LINE__, #call, \
                    (int)got_, nvmlErrorString(got_), (int)(want));                                \
            __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);                                    \
        }                                                                                          \
    } while (0)

#define OK(call) EXPECT(call, NVML_SUCCESS)

#define CHECK(condition)                                                                           \
    do {                                                                                           \
        if (!(condition)) {                                                                        \
            fprintf(stderr, "%s:%d: not so: %s\n", __FILE__, __LINE__, #condition);                \
            __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);                                    \
        }                                                                                          \
    } while (0)

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Everything gpumon reads from one GPU, and then some. GPU 2 is lost for a while (see the
 * faults in test_sanitizers.py), so its calls may answer GPU_IS_LOST: only memory safety and
 * the other GPUs' answers are checked there. */
static void *poll_gpu(void *arg)
{
    unsigned index = (unsigned)(size_t)arg;
    nvmlDevice_t dev, again;
    OK(nvmlDeviceGetHandleByIndex_v2(index, &dev));
    bool strict = index != 2;
    for (int round = 0; round < 30; round++) {
        char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE], uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE], tiny[4];
        unsigned u, u2, u3, u4;
        unsigned long long ull;
        int major, minor;
        nvmlPciInfo_t pci;
        nvmlMemory_t mem;
        nvmlMemory_v2_t mem2 = {.version = nvmlMemory_v2};
        nvmlUtilization_t util;
        nvmlViolationTime_t violation;
        nvmlPstates_t pstate;
        nvmlReturn_t r[24];
        int k = 0;
        r[k++] = nvmlDeviceGetName(dev, name, sizeof name);
        r[k++] = nvmlDeviceGetUUID(dev, uuid, sizeof uuid);
        r[k++] = nvmlDeviceGetPciInfo_v3(dev, &pci);
        r[k++] = nvmlDeviceGetMemoryInfo(dev, &mem);
        r[k++] = nvmlDeviceGetMemoryInfo_v2(dev, &mem2);
        r[k++] = nvmlDeviceGetUtilizationRates(dev, &util);
        r[k++] = nvmlDeviceGetTemperature(dev, NVML_TEMPERATURE_GPU, &u);
        r[k++] = nvmlDeviceGetTemperatureThreshold(dev, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN, &u);
        r[k++] = nvmlDeviceGetPowerUsage(dev, &u);
        r[k++] = nvmlDeviceGetPowerManagementLimitConstraints(dev, &u, &u2);
        r[k++] = nvmlDeviceGetTotalEnergyConsumption(dev, &ull);
        r[k++] = nvmlDeviceGetClockInfo(dev, NVML_CLOCK_SM, &u);
        r[k++] = nvmlDeviceGetMaxClockInfo(dev, NVML_CLOCK_MEM, &u);
        r[k++] = nvmlDeviceGetCurrentClocksEventReasons(dev, &ull);
        r[k++] = nvmlDeviceGetPerformanceState(dev, &pstate);
        r[k++] = nvmlDeviceGetViolationStatus(dev, NVML_PERF_POLICY_POWER, &violation);
        r[k++] = nvmlDeviceGetTotalEccErrors(dev, NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_AGGREGATE_ECC, &ull);
        r[k++] = nvmlDeviceGetRemappedRows(dev, &u, &u2, &u3, &u4);
        r[k++] = nvmlDeviceGetCudaComputeCapability(dev, &major, &minor);
        r[k++] = nvmlDeviceGetCurrPcieLinkWidth(dev, &u);
        r[k++] = nvmlDeviceGetPcieThroughput(dev, NVML_PCIE_UTIL_RX_BYTES, &u);
        for (int i = 0; strict && i < k; i++)
            if (r[i] != NVML_SUCCESS) {
                fprintf(stderr, "GPU %u: query %d returned %d\n", index, i, (int)r[i]);
                __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);
            }
        if (strict) {
            OK(nvmlDeviceGetHandleByUUID(uuid, &again));
            OK(nvmlDeviceGetHandleByPciBusId_v2(pci.busIdLegacy, &again));
            EXPECT(nvmlDeviceGetName(dev, tiny, sizeof tiny), NVML_ERROR_INSUFFICIENT_SIZE);
            EXPECT(nvmlDeviceGetFanSpeed(dev, &u), NVML_ERROR_NOT_SUPPORTED);
            EXPECT(nvmlDeviceGetClockInfo(dev, (nvmlClockType_t)99, &u), NVML_ERROR_INVALID_ARGUMENT);
            EXPECT(nvmlDeviceGetPowerUsage(dev, NULL), NVML_ERROR_INVALID_ARGUMENT);
            EXPECT(nvmlDeviceGetUUID(dev, NULL, 0), NVML_ERROR_INVALID_ARGUMENT);
        }
        EXPECT(nvmlDeviceGetPowerUsage((nvmlDevice_t)&u, &u), NVML_ERROR_INVALID_ARGUMENT);

        /* Processes: NVML's two calls, sizing then reading. */
        unsigned count = 0;
        nvmlReturn_t pr = nvmlDeviceGetComputeRunningProcesses_v3(dev, &count, NULL);
        if (pr == NVML_ERROR_INSUFFICIENT_SIZE) {
            unsigned cap = count * 2 + 5;
            nvmlProcessInfo_t *infos = calloc(cap, sizeof *infos);
            count = cap;
            pr = nvmlDeviceGetComputeRunningProcesses_v3(dev, &count, infos);
            free(infos);
        }
        if (strict && pr != NVML_SUCCESS && pr != NVML_ERROR_INSUFFICIENT_SIZE)
            EXPECT(pr, NVML_SUCCESS);

        /* Field values, one of them unknown to the probe. */
        nvmlFieldValue_t fields[5] = {{.fieldId = 186}, {.fieldId = 83}, {.fieldId = 82}, {.fieldId = 138},
                                      {.fieldId = 9999}};
        nvmlReturn_t fr = nvmlDeviceGetFieldValues(dev, 5, fields);
        if (strict) {
            OK(fr);
            EXPECT(fields[3].nvmlReturn, NVML_ERROR_NOT_SUPPORTED);
            EXPECT(fields[4].nvmlReturn, NVML_ERROR_NOT_SUPPORTED);
        }
        EXPECT(nvmlDeviceGetFieldValues(dev, -1, fields), strict ? NVML_ERROR_INVALID_ARGUMENT : fr);

        /* GPM: two samples and the metrics between them; the heap-allocated struct is big. */
        nvmlGpmSample_t s1, s2;
        OK(nvmlGpmSampleAlloc(&s1));
        OK(nvmlGpmSampleAlloc(&s2));
        nvmlReturn_t g1 = nvmlGpmSampleGet(dev, s1);
        sleep_ms(2);
        nvmlReturn_t g2 = nvmlGpmSampleGet(dev, s2);
        nvmlGpmMetricsGet_t *mg = calloc(1, sizeof *mg);
        mg->version = NVML_GPM_METRICS_GET_VERSION;
        mg->sample1 = s1;
        mg->sample2 = s2;
        unsigned ids[] = {1, 2, 3, 5, 10, 11, 20, 21, 60, 99};
        mg->numMetrics = sizeof ids / sizeof *ids;
        for (unsigned i = 0; i < mg->numMetrics; i++)
            mg->metrics[i].metricId = ids[i];
        nvmlReturn_t gm = nvmlGpmMetricsGet(mg);
        if (strict) {
            OK(g1);
            OK(g2);
            OK(gm);
        }
        mg->numMetrics = NVML_GPM_METRIC_MAX + 1;
        EXPECT(nvmlGpmMetricsGet(mg), NVML_ERROR_INVALID_ARGUMENT);
        free(mg);
        OK(nvmlGpmSampleFree(s1));
        EXPECT(nvmlGpmSampleFree(s1), NVML_ERROR_INVALID_ARGUMENT);
        if (round % 2 == 0) /* leave every other one for nvmlShutdown to free */
            OK(nvmlGpmSampleFree(s2));
    }
    return NULL;
}

struct waiter {
    nvmlEventSet_t set;
    nvmlReturn_t last;
    unsigned long long xids[4];
    int count;
};

static void *wait_events(void *arg)
{
    struct waiter *w = arg;
    nvmlEventData_t data;
    while ((w->last = nvmlEventSetWait_v2(w->set, &data, 5000)) == NVML_SUCCESS && w->count < 4)
        w->xids[w->count++] = data.eventData;
    return NULL;
}

static void *hung_call(void *arg)
{
    nvmlReturn_t *ret = arg;
    nvmlDevice_t dev;
    nvmlBrandType_t brand;
    if (nvmlDeviceGetHandleByIndex_v2(3, &dev) == NVML_SUCCESS)
        *ret = nvmlDeviceGetBrand(dev, &brand); /* scripted to hang for a minute */
    return NULL;
}

static void session(void)
{
    unsigned count;
    OK(nvmlInit_v2());
    OK(nvmlInitWithFlags(0)); /* nested: counted */
    OK(nvmlShutdown());
    OK(nvmlDeviceGetCount_v2(&count));
    if (count != GPUS) {
        fprintf(stderr, "expected %d GPUs, got %u\n", GPUS, count);
        failures++;
    }
    char version[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
    OK(nvmlSystemGetDriverVersion(version, sizeof version));
    EXPECT(nvmlSystemGetDriverVersion(version, 3), NVML_ERROR_INSUFFICIENT_SIZE);

    nvmlEventSet_t kept, freed;
    OK(nvmlEventSetCreate(&kept));
    OK(nvmlEventSetCreate(&freed));
    for (unsigned i = 0; i < count; i++) {
        nvmlDevice_t dev;
        OK(nvmlDeviceGetHandleByIndex_v2(i, &dev));
        if (i != 2) /* lost at this moment */
            OK(nvmlDeviceRegisterEvents(dev, nvmlEventTypeXidCriticalError, kept));
        EXPECT(nvmlDeviceRegisterEvents(dev, 1ULL << 40, kept), i == 2 ? NVML_ERROR_GPU_IS_LOST
                                                                       : NVML_ERROR_NOT_SUPPORTED);
    }
    struct waiter w = {.set = kept};
    pthread_t events, hung, pollers[GPUS];
    nvmlReturn_t hung_ret = NVML_SUCCESS;
    pthread_create(&events, NULL, wait_events, &w);
    pthread_create(&hung, NULL, hung_call, &hung_ret);
    for (unsigned i = 0; i < GPUS; i++)
        pthread_create(&pollers[i], NULL, poll_gpu, (void *)(size_t)i);
    for (unsigned i = 0; i < GPUS; i++)
        pthread_join(pollers[i], NULL);
    OK(nvmlEventSetFree(freed));
    EXPECT(nvmlEventSetFree(freed), NVML_ERROR_INVALID_ARGUMENT);
    sleep_ms(300); /* both scripted XIDs are due by now */
    /* The event thread is still waiting and the hung call still hangs: shutdown must release
     * both, then free the event set and GPM samples nobody freed. */
    OK(nvmlShutdown());
    pthread_join(events, NULL);
    pthread_join(hung, NULL);
    EXPECT(w.last, NVML_ERROR_UNINITIALIZED);
    EXPECT(hung_ret, NVML_ERROR_UNINITIALIZED);
    if (w.count != 2 || w.xids[0] != 79 || w.xids[1] != 48) {
        fprintf(stderr, "expected XIDs 79 then 48, got %d events\n", w.count);
        failures++;
    }
    EXPECT(nvmlDeviceGetCount_v2(&count), NVML_ERROR_UNINITIALIZED);
    EXPECT(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
}

/* --- MIG ------------------------------------------------------------------------------------ */

#define MIG_GPUS 2

/* A MIG device destroyed since its handle was got answers NOT_FOUND; GPU 1 is lost at first. */
#define MIG_EXPECT(call, lost)                                                                     \
    do {                                                                                           \
        nvmlReturn_t got_ = (call);                                                                \
        if (got_ != NVML_SUCCESS && got_ != NVML_ERROR_NOT_FOUND && !((lost) && got_ == NVML_ERROR_GPU_IS_LOST)) { \
            fprintf(stderr, "%s:%d: %s returned %d (%s)\n", __FILE__, __LINE__, #call, (int)got_,      \
                    nvmlErrorString(got_));                                                        \
            __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);                                    \
        }                                                                                          \
    } while (0)

static void mig_gpm(nvmlDevice_t gpu, unsigned gi, bool lost)
{
    nvmlGpmSample_t s1, s2;
    OK(nvmlGpmSampleAlloc(&s1));
    OK(nvmlGpmSampleAlloc(&s2));
    nvmlReturn_t g1 = nvmlGpmMigSampleGet(gpu, gi, s1);
    sleep_ms(1);
    nvmlReturn_t g2 = nvmlGpmMigSampleGet(gpu, gi, s2);
    MIG_EXPECT(g1, lost);
    MIG_EXPECT(g2, lost);
    nvmlGpmMetricsGet_t *mg = calloc(1, sizeof *mg);
    mg->version = NVML_GPM_METRICS_GET_VERSION;
    mg->sample1 = s1;
    mg->sample2 = s2;
    unsigned ids[] = {1, 2, 3, 5, 10, 12, 13, 20, 60};
    mg->numMetrics = sizeof ids / sizeof *ids;
    for (unsigned i = 0; i < mg->numMetrics; i++)
        mg->metrics[i].metricId = ids[i];
    if (g1 == NVML_SUCCESS && g2 == NVML_SUCCESS)
        MIG_EXPECT(nvmlGpmMetricsGet(mg), lost);
    free(mg);
    OK(nvmlGpmSampleFree(s1));
    if (gi % 2 == 0) /* leave some for nvmlShutdown to free */
        OK(nvmlGpmSampleFree(s2));
}

static void *poll_mig(void *arg)
{
    unsigned index = (unsigned)(size_t)arg;
    bool lost = index == 1;
    nvmlDevice_t gpu, parent;
    OK(nvmlDeviceGetHandleByIndex_v2(index, &gpu));
    for (int round = 0; round < 100; round++) {
        unsigned current = 0, pending = 0, max = 0, u, is_mig = 2, gi = 0, ci;
        nvmlDeviceAttributes_t attributes;
        MIG_EXPECT(nvmlDeviceGetMigMode(gpu, &current, &pending), lost);
        MIG_EXPECT(nvmlDeviceGetMaxMigDeviceCount(gpu, &max), lost);
        if (!lost) {
            EXPECT(nvmlDeviceGetAttributes_v2(gpu, &attributes), NVML_ERROR_NOT_SUPPORTED);
            EXPECT(nvmlDeviceGetGpuInstanceId(gpu, &u), NVML_ERROR_INVALID_ARGUMENT);
            OK(nvmlDeviceIsMigDeviceHandle(gpu, &is_mig));
            CHECK(is_mig == 0);
            EXPECT(nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0, NULL), NVML_ERROR_INVALID_ARGUMENT);
            EXPECT(nvmlDeviceGetMigDeviceHandleByIndex(gpu, 99, &parent), NVML_ERROR_NOT_FOUND);
        }
        for (unsigned i = 0; i < max + 1; i++) {
            nvmlDevice_t mig;
            nvmlReturn_t r = nvmlDeviceGetMigDeviceHandleByIndex(gpu, i, &mig);
            MIG_EXPECT(r, lost);
            if (r != NVML_SUCCESS)
                continue;
            char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE], name[NVML_DEVICE_NAME_V2_BUFFER_SIZE], tiny[4];
            nvmlMemory_t mem;
            nvmlMemory_v2_t mem2 = {.version = nvmlMemory_v2};
            MIG_EXPECT(nvmlDeviceGetUUID(mig, uuid, sizeof uuid), lost);
            MIG_EXPECT(nvmlDeviceGetName(mig, name, sizeof name), lost);
            MIG_EXPECT(nvmlDeviceGetMemoryInfo(mig, &mem), lost);
            MIG_EXPECT(nvmlDeviceGetMemoryInfo_v2(mig, &mem2), lost);
            MIG_EXPECT(nvmlDeviceGetAttributes_v2(mig, &attributes), lost);
            MIG_EXPECT(nvmlDeviceGetComputeInstanceId(mig, &ci), lost);
            MIG_EXPECT(nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig, &parent), lost);
            CHECK(nvmlDeviceGetName(mig, tiny, sizeof tiny) != NVML_SUCCESS);
            if (nvmlDeviceIsMigDeviceHandle(mig, &is_mig) == NVML_SUCCESS) /* even once destroyed */
                CHECK(is_mig == 1);
            if (!lost) { /* calls a MIG device handle is not an argument of */
                EXPECT(nvmlDeviceGetPowerUsage(mig, &u), NVML_ERROR_INVALID_ARGUMENT);
                EXPECT(nvmlDeviceGetMigMode(mig, &current, &pending), NVML_ERROR_INVALID_ARGUMENT);
                EXPECT(nvmlGpmMigSampleGet(mig, 0, NULL), NVML_ERROR_INVALID_ARGUMENT);
            }
            unsigned count = 0;
            nvmlReturn_t pr = nvmlDeviceGetComputeRunningProcesses_v3(mig, &count, NULL);
            if (pr == NVML_ERROR_INSUFFICIENT_SIZE) {
                unsigned cap = count * 2 + 5;
                nvmlProcessInfo_t *infos = calloc(cap, sizeof *infos);
                count = cap;
                pr = nvmlDeviceGetComputeRunningProcesses_v3(mig, &count, infos);
                free(infos);
            }
            MIG_EXPECT(pr, lost);
            if (nvmlDeviceGetGpuInstanceId(mig, &gi) != NVML_SUCCESS)
                continue;
            nvmlGpuInstance_t instance;
            nvmlGpuInstanceInfo_t info;
            r = nvmlDeviceGetGpuInstanceById(gpu, gi, &instance);
            MIG_EXPECT(r, lost);
            if (r == NVML_SUCCESS)
                MIG_EXPECT(nvmlGpuInstanceGetInfo(instance, &info), lost);
            mig_gpm(gpu, gi, lost);
        }
        nvmlGpuInstanceInfo_t info;
        EXPECT(nvmlGpuInstanceGetInfo((nvmlGpuInstance_t)&u, &info), NVML_ERROR_INVALID_ARGUMENT);
    }
    return NULL;
}

static void mig_session(void)
{
    OK(nvmlInit_v2());
    pthread_t pollers[2 * MIG_GPUS];
    for (unsigned i = 0; i < 2 * MIG_GPUS; i++) /* two threads per GPU */
        pthread_create(&pollers[i], NULL, poll_mig, (void *)(size_t)(i % MIG_GPUS));
    for (unsigned i = 0; i < 2 * MIG_GPUS; i++)
        pthread_join(pollers[i], NULL);
    OK(nvmlShutdown());
}

int main(int argc, char **argv)
{
    bool mig = argc > 1 && strcmp(argv[1], "mig") == 0;
    for (int i = 0; i < 2; i++) {
        if (mig)
            mig_session();
        else
            session();
    }
    for (int code = 0; code < 1000; code++)
        if (nvmlErrorString((nvmlReturn_t)code) == NULL)
            failures++;
    if (failures != 0) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    puts("ok");
    return 0;
}
