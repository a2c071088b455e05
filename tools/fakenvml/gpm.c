/*
 * GPU Performance Monitoring: a sample remembers which GPU (and, taken by nvmlGpmMigSampleGet, which
 * MIG GPU instance) and which moment of the trace it was taken at; nvmlGpmMetricsGet averages the
 * recorded metrics (a GPU instance's: its `mig.gpu_instances[].gpm`) over the trace records between
 * two samples, as gpumon/sources/capture_nvml.py does.
 */
#include "fakenvml.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* The trace's name for each NVML_GPM_METRIC_* it recorded; other ids answer from probe.json. */
static const char *trace_metric(unsigned int id)
{
    switch (id) {
    case NVML_GPM_METRIC_GRAPHICS_UTIL: return "graphics_util";
    case NVML_GPM_METRIC_SM_UTIL: return "sm_util";
    case NVML_GPM_METRIC_SM_OCCUPANCY: return "sm_occupancy";
    case NVML_GPM_METRIC_ANY_TENSOR_UTIL: return "any_tensor_util";
    case NVML_GPM_METRIC_HMMA_TENSOR_UTIL: return "hmma_tensor_util";
    case NVML_GPM_METRIC_DRAM_BW_UTIL: return "dram_bw_util";
    case NVML_GPM_METRIC_FP32_UTIL: return "fp32_util";
    case NVML_GPM_METRIC_FP16_UTIL: return "fp16_util";
    case NVML_GPM_METRIC_PCIE_TX_PER_SEC: return "pcie_tx_mibps";
    case NVML_GPM_METRIC_PCIE_RX_PER_SEC: return "pcie_rx_mibps";
    case NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: return "nvlink_rx_mibps";
    case NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: return "nvlink_tx_mibps";
    default: return NULL;
    }
}

/* Per-link NVLink rates (NVML_GPM_METRIC_NVLINK_L<n>_{RX,TX}_PER_SEC) are kept in the trace as one
 * list per direction, element n for link n (as capture.py TRACE_GPM_LINK_KEYS): 36 named keys per
 * record would make an 8-GPU trace several times larger. Sets *link; NULL for other ids. */
static const char *trace_link_metric(unsigned int id, int *link)
{
    unsigned int offset;
    if (id >= NVML_GPM_METRIC_NVLINK_L0_RX_PER_SEC && id <= NVML_GPM_METRIC_NVLINK_L17_TX_PER_SEC)
        offset = id - NVML_GPM_METRIC_NVLINK_L0_RX_PER_SEC;
    else if (id >= NVML_GPM_METRIC_NVLINK_L18_RX_PER_SEC && id <= NVML_GPM_METRIC_NVLINK_L35_TX_PER_SEC)
        offset = id - NVML_GPM_METRIC_NVLINK_L18_RX_PER_SEC + 36;
    else
        return NULL;
    *link = (int)(offset / 2);
    return offset % 2 ? "nvlink_tx_mibps_per_link" : "nvlink_rx_mibps_per_link";
}

nvmlReturn_t DECLDIR nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *gpmSupport)
{
    struct call c;
    double supported = 0;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && gpmSupport == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && gpmSupport->version != NVML_GPM_SUPPORT_VERSION)
        ret = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (ret == NVML_SUCCESS) {
        const cJSON *gpm = cJSON_GetObjectItemCaseSensitive(g.recorded[c.dev->recorded].probe, "gpm");
        const cJSON *support = cJSON_GetObjectItemCaseSensitive(gpm, "support");
        /* A probe without GPM support recorded: the driver predates GPM. */
        if (member_number(support, "isSupportedDevice", &supported) != NVML_SUCCESS)
            ret = NVML_ERROR_NOT_SUPPORTED;
        else
            gpmSupport->isSupportedDevice = to_uint(supported);
    }
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlGpmSampleAlloc(nvmlGpmSample_t *gpmSample)
{
    struct call c;
    nvmlReturn_t ret = call_begin_system(&c, __func__);
    if (ret == NVML_SUCCESS && gpmSample == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        struct nvmlGpmSample_st *s = calloc(1, sizeof *s);
        if (s == NULL) {
            ret = NVML_ERROR_MEMORY;
        } else {
            pthread_mutex_lock(&g.lock);
            s->next = g.samples;
            g.samples = s;
            pthread_mutex_unlock(&g.lock);
            *gpmSample = s;
        }
    }
    return call_end(&c, ret);
}

/* Samples live in a list we own, so a stale or foreign pointer is refused rather than used.
 * Returns the link pointing at `s`, or NULL. Call with g.lock held. */
static struct nvmlGpmSample_st **find_sample(nvmlGpmSample_t s)
{
    for (struct nvmlGpmSample_st **p = &g.samples; *p != NULL; p = &(*p)->next)
        if (*p == s)
            return p;
    return NULL;
}

nvmlReturn_t DECLDIR nvmlGpmSampleFree(nvmlGpmSample_t gpmSample)
{
    struct call c;
    nvmlReturn_t ret = call_begin_system(&c, __func__);
    if (ret == NVML_SUCCESS) {
        pthread_mutex_lock(&g.lock);
        struct nvmlGpmSample_st **link = find_sample(gpmSample);
        if (link == NULL) {
            ret = NVML_ERROR_INVALID_ARGUMENT;
        } else {
            *link = gpmSample->next;
            free(gpmSample);
        }
        pthread_mutex_unlock(&g.lock);
    }
    return call_end(&c, ret);
}

void gpm_samples_free(void)
{
    while (g.samples != NULL) {
        struct nvmlGpmSample_st *next = g.samples->next;
        free(g.samples);
        g.samples = next;
    }
}

/* Record in `sample` which GPU (and GPU instance) it is of and the trace time it was taken at. */
static nvmlReturn_t take_sample(struct call *c, nvmlGpmSample_t sample, bool mig, unsigned gpu_instance)
{
    double us = 0;
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(c->rec, "lat_us");
    if (!json_number(cJSON_GetObjectItemCaseSensitive(lat, "gpm_sample"), &us))
        json_number(cJSON_GetObjectItemCaseSensitive(
                        cJSON_GetObjectItemCaseSensitive(g.recorded[c->dev->recorded].probe, "gpm"), "sample_get_us"),
                    &us);
    c->latency_us = isfinite(us) && us > 0 ? us : 0;
    nvmlReturn_t ret = NVML_SUCCESS;
    pthread_mutex_lock(&g.lock);
    if (find_sample(sample) == NULL) {
        ret = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        sample->taken = true;
        sample->gpu = c->dev->index;
        sample->mig = mig;
        sample->gpu_instance = gpu_instance;
        sample->play = c->play;
    }
    pthread_mutex_unlock(&g.lock);
    return ret;
}

nvmlReturn_t DECLDIR nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t gpmSample)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    const cJSON *recorded = cJSON_GetObjectItemCaseSensitive(c.rec, "gpm_sample");
    if (ret == NVML_SUCCESS && is_recorded_error(recorded))
        ret = (nvmlReturn_t)error_code_of(cJSON_GetObjectItemCaseSensitive(recorded, "err"));
    if (ret == NVML_SUCCESS)
        ret = take_sample(&c, gpmSample, false, 0);
    return call_end(&c, ret);
}

/* A GPU instance's sample, taken through its GPU's handle (as DCGM does): NOT_FOUND when the layout
 * playing now has no such GPU instance. A recorded error of the whole GPU's sample (`gpm_sample`)
 * does not apply: the MIG capture refuses that one while the instances answer. */
nvmlReturn_t DECLDIR nvmlGpmMigSampleGet(nvmlDevice_t device, unsigned int gpuInstanceId, nvmlGpmSample_t gpmSample)
{
    struct call c;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS && gpmSample == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && mig_gpu_instance(c.rec, gpuInstanceId) == NULL)
        ret = NVML_ERROR_NOT_FOUND;
    if (ret == NVML_SUCCESS)
        ret = take_sample(&c, gpmSample, true, gpuInstanceId);
    return call_end(&c, ret);
}

/* The trace records whose GPM interval falls in (play1, play2] (a looped trace may wrap in
 * between), as a circular range [*first, *first + *count); the latest one alone if none does. */
static void records_between(const struct recorded *r, double play1, double play2, size_t *first, size_t *count)
{
    size_t n = r->count;
    size_t i1 = record_index_at(r, wrap(r, play1)), i2 = record_index_at(r, wrap(r, play2));
    if (g.config.loop && play2 - play1 >= r->duration) { /* a whole pass or more: every record once */
        *first = (i2 + 1) % n;
        *count = n;
    } else if (i2 > i1) {
        *first = i1 + 1;
        *count = i2 - i1;
    } else if (g.config.loop && play2 > play1 && i2 < i1) { /* wrapped around the end */
        *first = (i1 + 1) % n;
        *count = n - (i1 + 1) + i2 + 1;
    } else {
        *first = i2;
        *count = 1;
    }
}

static void metric_between(const struct recorded *r, size_t first, size_t count, nvmlGpmMetric_t *m)
{
    int link = 0;
    const char *key = trace_metric(m->metricId);
    const char *list = key == NULL ? trace_link_metric(m->metricId, &link) : NULL;
    double sum = 0, v;
    size_t numbers = 0;
    const cJSON *last_error = NULL;
    for (size_t k = 0; (key != NULL || list != NULL) && k < count; k++) {
        const cJSON *gpm = cJSON_GetObjectItemCaseSensitive(r->records[(first + k) % r->count], "gpm");
        const cJSON *value = NULL;
        if (cJSON_IsObject(gpm) && key != NULL) {
            value = cJSON_GetObjectItemCaseSensitive(gpm, key);
        } else if (cJSON_IsObject(gpm)) {
            const cJSON *links = cJSON_GetObjectItemCaseSensitive(gpm, list);
            value = cJSON_IsArray(links) ? cJSON_GetArrayItem(links, link) : NULL;
        }
        if (cJSON_IsObject(value)) {
            last_error = value;
        } else if (json_number(value, &v)) {
            sum += v; /* a NaN stays NaN: NVML returns it with success */
            numbers++;
        }
    }
    m->metricInfo.shortName = m->metricInfo.longName = m->metricInfo.unit = NULL;
    if (numbers > 0) {
        m->nvmlReturn = NVML_SUCCESS;
        m->value = sum / (double)numbers;
        return;
    }
    if (last_error != NULL) {
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(last_error, "err");
        m->nvmlReturn = err ? (nvmlReturn_t)error_code_of(err) : NVML_ERROR_UNKNOWN;
        return;
    }
    /* Not in the trace: the value probe.json measured over its one-second window. */
    char id[16];
    snprintf(id, sizeof id, "%u", m->metricId);
    const cJSON *metrics = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r->probe, "gpm"), "metrics");
    const cJSON *probed = cJSON_GetObjectItemCaseSensitive(metrics, id);
    double ret = NVML_ERROR_NOT_SUPPORTED;
    v = 0;
    if (probed != NULL) {
        ret = 0;
        member_number(probed, "ret", &ret);
        member_number(probed, "value", &v);
    }
    m->nvmlReturn = (nvmlReturn_t)ret;
    m->value = v;
}

/* A GPU instance's metric: the mean of its recorded values (`mig.gpu_instances[].gpm`) over the
 * records in between, in those that show the instance. An id it has no reading for is NOT_SUPPORTED
 * (NVLink and PCIe are the whole GPU's), as capture_mig.py answers. */
static void mig_metric_between(const struct recorded *r, size_t first, size_t count, unsigned gi, nvmlGpmMetric_t *m)
{
    const char *key = trace_metric(m->metricId);
    double sum = 0, v;
    size_t numbers = 0;
    for (size_t k = 0; key != NULL && k < count; k++) {
        const cJSON *inst = mig_gpu_instance(r->records[(first + k) % r->count], gi);
        if (json_number(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(inst, "gpm"), key), &v)) {
            sum += v;
            numbers++;
        }
    }
    m->metricInfo.shortName = m->metricInfo.longName = m->metricInfo.unit = NULL;
    if (numbers > 0) {
        m->nvmlReturn = NVML_SUCCESS;
        m->value = sum / (double)numbers;
    } else {
        m->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
    }
}

nvmlReturn_t DECLDIR nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *metricsGet)
{
    struct call c;
    nvmlReturn_t ret = call_enter(&c, __func__);
    if (ret == NVML_SUCCESS && metricsGet == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && metricsGet->version != NVML_GPM_METRICS_GET_VERSION)
        ret = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (ret == NVML_SUCCESS && metricsGet->numMetrics > NVML_GPM_METRIC_MAX)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    unsigned gpu = 0, gi = 0;
    bool mig = false;
    double play1 = 0, play2 = 0;
    if (ret == NVML_SUCCESS) {
        pthread_mutex_lock(&g.lock);
        nvmlGpmSample_t s1 = metricsGet->sample1, s2 = metricsGet->sample2;
        /* Both samples of one GPU, and of one GPU instance or both of the whole GPU. */
        if (find_sample(s1) == NULL || find_sample(s2) == NULL || !s1->taken || !s2->taken || s1->gpu != s2->gpu
            || s1->mig != s2->mig || (s1->mig && s1->gpu_instance != s2->gpu_instance)) {
            ret = NVML_ERROR_INVALID_ARGUMENT;
        } else {
            gpu = s2->gpu;
            mig = s2->mig;
            gi = s2->gpu_instance;
            play1 = s1->play;
            play2 = s2->play;
        }
        pthread_mutex_unlock(&g.lock);
    }
    if (ret == NVML_SUCCESS)
        ret = call_device(&c, &g.devices[gpu]); /* the GPU's faults apply: a lost GPU has no metrics */
    if (ret != NVML_SUCCESS)
        return call_end(&c, ret);

    const struct recorded *r = &g.recorded[c.dev->recorded];
    size_t first, count;
    records_between(r, play1, play2, &first, &count);
    const cJSON *last = r->records[(first + count - 1) % r->count];
    const cJSON *whole = cJSON_GetObjectItemCaseSensitive(last, "gpm");
    double us = 0;
    json_number(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(last, "lat_us"), "gpm"), &us);
    c.latency_us = isfinite(us) && us > 0 ? us : 0;
    if (mig) {
        if (mig_gpu_instance(c.rec, gi) == NULL) /* destroyed since the samples were taken */
            return call_end(&c, NVML_ERROR_NOT_FOUND);
        for (unsigned j = 0; j < metricsGet->numMetrics; j++)
            mig_metric_between(r, first, count, gi, &metricsGet->metrics[j]);
        return call_end(&c, NVML_SUCCESS);
    }
    if (is_recorded_error(whole)) /* the recorded nvmlGpmMetricsGet itself failed */
        return call_end(&c, (nvmlReturn_t)error_code_of(cJSON_GetObjectItemCaseSensitive(whole, "err")));
    for (unsigned j = 0; j < metricsGet->numMetrics; j++)
        metric_between(r, first, count, &metricsGet->metrics[j]);
    return call_end(&c, NVML_SUCCESS);
}
