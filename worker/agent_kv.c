/* The rendezvous store of a data-parallel attempt, as the worker reaches
 * it: kv_set / kv_get frames to the daemon, which keeps one store per
 * attempt. The main thread sends and waits (condvar) for the reply that
 * the I/O thread receives (worker/agent.c). */
#include "worker/agent_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/msg.h"

/* Sends req with a fresh id; the reply, or NULL after wait_ms or when the
 * job is cancelled or the daemon gone. */
static json_t *kv_call(agent *a, json_t *req, int wait_ms)
{
    pthread_mutex_lock(&a->mu);
    long long id = ++a->kv_next;
    a->kv_id = id;
    json_decref(a->kv_reply);
    a->kv_reply = NULL;
    pthread_mutex_unlock(&a->mu);
    json_object_set_new(req, "id", json_integer(id));
    rw_agent_send(a, req);
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += wait_ms / 1000;
    dl.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&a->mu);
    while (!a->kv_reply && !rw_agent_aborted(a))
        if (pthread_cond_timedwait(&a->cv, &a->mu, &dl) == ETIMEDOUT)
            break;
    json_t *r = a->kv_reply;
    a->kv_reply = NULL;
    a->kv_id = 0;
    pthread_mutex_unlock(&a->mu);
    return r;
}

static json_t *kv_req(rw_agent_kv *k, const char *type, const char *key)
{
    json_t *m = rw_msg_new(type, -1);
    json_object_set_new(m, "job", json_integer(k->job));
    json_object_set_new(m, "attempt", json_integer(k->attempt));
    json_object_set_new(m, "key", json_string(key));
    return m;
}

static const char *reply_type(const json_t *r)
{
    return r ? json_string_value(json_object_get(r, "type")) : NULL;
}

static void kv_complain(const char *what, const char *key, const json_t *r)
{
    fprintf(stderr, "runaway-worker: %s '%s': %s\n", what, key,
            r ? json_string_value(json_object_get(r, "message")) : "no reply (cancelled, or daemon gone)");
}

int rw_agent_kv_set(void *ud, const char *key, const void *value, size_t len)
{
    rw_agent_kv *k = ud;
    if (len > RW_KV_VALUE_MAX || !rw_kv_key_ok(key)) {
        fprintf(stderr, "runaway-worker: kv_set '%s': %zu bytes (at most %d)\n", key, len,
                RW_KV_VALUE_MAX);
        return -1;
    }
    char *hex = malloc(2 * len + 1);
    if (!hex)
        return -1;
    rw_hex_encode(value, len, hex);
    json_t *m = kv_req(k, "kv_set", key);
    json_object_set_new(m, "value", json_string(hex));
    free(hex);
    json_t *r = kv_call(k->a, m, 30000);
    const char *t = reply_type(r);
    int rc = t && !strcmp(t, "ok") ? 0 : -1;
    if (rc)
        kv_complain("kv_set", key, r);
    json_decref(r);
    return rc;
}

int rw_agent_kv_get(void *ud, const char *key, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    rw_agent_kv *k = ud;
    if (!rw_kv_key_ok(key))
        return -1;
    if (timeout_ms < 0 || timeout_ms > RW_KV_TIMEOUT_MAX_MS)
        timeout_ms = RW_KV_TIMEOUT_MAX_MS;
    json_t *m = kv_req(k, "kv_get", key);
    json_object_set_new(m, "timeout_ms", json_integer(timeout_ms));
    /* the daemon answers timeouts on its tick (<= 1 s late); give it room */
    json_t *r = kv_call(k->a, m, timeout_ms + 10000);
    const char *t = reply_type(r);
    int rc = -1;
    if (t && !strcmp(t, "kv_value")) {
        json_t *v = json_object_get(r, "value");
        const char *hex = json_string_value(v);
        if (hex && rw_hex_decode(hex, json_string_length(v), buf, cap, len) == 0)
            rc = 0;
    }
    if (rc)
        kv_complain("kv_get", key, r);
    json_decref(r);
    return rc;
}
