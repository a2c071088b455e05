/*
 * Events: the XIDs scripted in the faults file, delivered through nvmlEventSetWait to every
 * event set that registered the GPU for nvmlEventTypeXidCriticalError.
 */
#include "fakenvml.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int by_time(const void *a, const void *b)
{
    const struct xid_event *x = a, *y = b;
    return (x->at > y->at) - (x->at < y->at);
}

static void set_free(struct nvmlEventSet_st *set)
{
    free(set->registered);
    free(set->xids);
    free(set);
}

nvmlReturn_t DECLDIR nvmlEventSetCreate(nvmlEventSet_t *set)
{
    struct call c;
    nvmlReturn_t ret = call_begin_system(&c, __func__);
    if (ret == NVML_SUCCESS && set == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret != NVML_SUCCESS)
        return call_end(&c, ret);
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    size_t xids = 0;
    for (size_t i = 0; i < g.faults.count; i++)
        xids += g.faults.items[i].kind == FAULT_XID;
    if (s != NULL) {
        s->registered = calloc(g.device_count, sizeof *s->registered);
        s->xids = calloc(xids ? xids : 1, sizeof *s->xids);
    }
    if (s == NULL || s->registered == NULL || s->xids == NULL) {
        if (s != NULL)
            set_free(s);
        return call_end(&c, NVML_ERROR_MEMORY);
    }
    /* Each set gets its own copy: two clients (or two sets) both see every XID, as with NVML. */
    for (size_t i = 0; i < g.faults.count; i++) {
        const struct fault *f = &g.faults.items[i];
        if (f->kind == FAULT_XID) /* faults_check made sure the GPU exists */
            s->xids[s->xid_count++] = (struct xid_event){.gpu = (unsigned)f->gpu, .at = f->at, .xid = f->xid};
    }
    qsort(s->xids, s->xid_count, sizeof *s->xids, by_time);
    pthread_mutex_lock(&g.lock);
    s->next = g.event_sets;
    g.event_sets = s;
    pthread_mutex_unlock(&g.lock);
    *set = s;
    return call_end(&c, NVML_SUCCESS);
}

/* Event sets live in a list we own, so a stale pointer is refused. Call with g.lock held. */
static struct nvmlEventSet_st **find_set(nvmlEventSet_t set)
{
    for (struct nvmlEventSet_st **p = &g.event_sets; *p != NULL; p = &(*p)->next)
        if (*p == set)
            return p;
    return NULL;
}

nvmlReturn_t DECLDIR nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set)
{
    struct call c;
    double supported = 0;
    nvmlReturn_t ret = call_begin(&c, __func__, device);
    if (ret == NVML_SUCCESS) {
        const cJSON *events = cJSON_GetObjectItemCaseSensitive(g.recorded[c.dev->recorded].probe, "events");
        member_number(events, "supported_mask", &supported);
        /* NVML refuses the whole registration if any type asked for cannot be delivered. */
        unsigned long long mask = to_ull(supported);
        if (eventTypes == 0 || (eventTypes & ~mask) != 0)
            ret = NVML_ERROR_NOT_SUPPORTED;
    }
    if (ret == NVML_SUCCESS) {
        pthread_mutex_lock(&g.lock);
        if (find_set(set) == NULL || set->closing)
            ret = NVML_ERROR_INVALID_ARGUMENT;
        else
            set->registered[c.dev->index] |= eventTypes;
        pthread_mutex_unlock(&g.lock);
    }
    return call_end(&c, ret);
}

/* The first undelivered XID, in time order, on a GPU registered for XIDs; NULL if none. */
static struct xid_event *next_xid(struct nvmlEventSet_st *set)
{
    for (size_t i = 0; i < set->xid_count; i++) {
        struct xid_event *x = &set->xids[i];
        if (!x->delivered && (set->registered[x->gpu] & nvmlEventTypeXidCriticalError))
            return x;
    }
    return NULL;
}

nvmlReturn_t DECLDIR nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    struct call c;
    nvmlReturn_t ret = call_begin_system(&c, __func__);
    if (ret == NVML_SUCCESS && data == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret != NVML_SUCCESS)
        return call_end(&c, ret);
    double deadline = monotonic_s() + timeoutms / 1e3;
    pthread_mutex_lock(&g.lock);
    if (find_set(set) == NULL || set->closing) {
        pthread_mutex_unlock(&g.lock);
        return call_end(&c, NVML_ERROR_INVALID_ARGUMENT);
    }
    set->waiters++;
    ret = NVML_ERROR_TIMEOUT;
    for (;;) {
        if (g.closing || set->closing) { /* shutdown or nvmlEventSetFree: stop waiting now */
            ret = NVML_ERROR_UNINITIALIZED;
            break;
        }
        struct xid_event *x = next_xid(set);
        double now = monotonic_s();
        if (x != NULL && g.started + x->at <= now) {
            x->delivered = true;
            memset(data, 0, sizeof *data);
            data->device = &g.devices[x->gpu];
            data->eventType = nvmlEventTypeXidCriticalError;
            data->eventData = x->xid;
            data->gpuInstanceId = 0xFFFFFFFFu; /* no MIG */
            data->computeInstanceId = 0xFFFFFFFFu;
            ret = NVML_SUCCESS;
            break;
        }
        if (now >= deadline)
            break; /* NVML_ERROR_TIMEOUT, as a real wait with nothing to report */
        double wake = x != NULL && g.started + x->at < deadline ? g.started + x->at : deadline;
        wait_until_locked(wake);
    }
    if (--set->waiters == 0)
        pthread_cond_broadcast(&g.changed);
    pthread_mutex_unlock(&g.lock);
    return call_end(&c, ret);
}

nvmlReturn_t DECLDIR nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    return nvmlEventSetWait_v2(set, data, timeoutms);
}

nvmlReturn_t DECLDIR nvmlEventSetFree(nvmlEventSet_t set)
{
    struct call c;
    nvmlReturn_t ret = call_begin_system(&c, __func__);
    if (ret != NVML_SUCCESS)
        return call_end(&c, ret);
    pthread_mutex_lock(&g.lock);
    struct nvmlEventSet_st **link = find_set(set);
    if (link == NULL || set->closing) {
        ret = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        /* A thread may still be inside nvmlEventSetWait on this set: wake it and let it leave
         * before the memory it is reading goes away. */
        set->closing = true;
        pthread_cond_broadcast(&g.changed);
        while (set->waiters > 0)
            pthread_cond_wait(&g.changed, &g.lock);
        *find_set(set) = set->next;
        set_free(set);
    }
    pthread_mutex_unlock(&g.lock);
    return call_end(&c, ret);
}

void event_sets_free(void)
{
    while (g.event_sets != NULL) {
        struct nvmlEventSet_st *next = g.event_sets->next;
        set_free(g.event_sets);
        g.event_sets = next;
    }
}
