/* The rendezvous store's requests (kv.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/kv.h"
#include "proto/msg.h"

/* kv_get requests of connection c still waiting, over every attempt */
static int waiting_of(rd_runs *rs, rd_conn *c)
{
    int n = 0;
    for (rd_run *r = rs->list; r; r = r->next)
        for (rd_kv_waiter *w = r->waiters; w; w = w->next)
            n += w->c == c;
    return n;
}

/* A closing connection's waiters go without a reply. */
void rd_kv_purge_conn(rd_runs *rs, rd_conn *c)
{
    for (rd_run *r = rs->list; r; r = r->next) {
        for (rd_kv_waiter **p = &r->waiters; *p;) {
            rd_kv_waiter *w = *p;
            if (w->c == c) {
                *p = w->next;
                rd_kv_waiter_free(w);
            } else {
                p = &w->next;
            }
        }
    }
}

void rd_kv_tick(rd_runs *rs)
{
    double now = rd_mono();
    for (rd_run *r = rs->list; r; r = r->next) {
        for (rd_kv_waiter **p = &r->waiters; *p;) {
            rd_kv_waiter *w = *p;
            if (w->deadline > now) {
                p = &w->next;
                continue;
            }
            *p = w->next;
            char msg[256];
            snprintf(msg, sizeof msg, "kv_get: no value for '%s' in time", w->key);
            rd_conn_send(w->c, rw_msg_error(w->id, RW_E_TIMEOUT, msg));
            rd_kv_waiter_free(w);
        }
    }
}

static void kv_reject(rd_conn *c, long long id, const char *code, const char *msg)
{
    const rd_worker *w = c->peer;
    rd_log("worker %d: %s: %s", w ? w->slot : -1, code, msg);
    rd_conn_send(c, rw_msg_error(id, code, msg));
    if (strcmp(code, RW_E_STATE) != 0 && strcmp(code, RW_E_TIMEOUT) != 0)
        rd_conn_close(c); /* a malformed request: the stream is not to be trusted */
}

static void kv_value_reply(rd_conn *c, long long id, const char *value)
{
    json_t *m = rw_msg_new("kv_value", id);
    json_object_set_new(m, "value", json_string(value));
    rd_conn_send(c, m);
}

/* kv_set / kv_get of a worker: the store of its current attempt only. */
void rd_kv_request(rd_runs *rs, rd_conn *c, rd_worker *w, const char *type, json_t *m)
{
    long long id = rw_msg_id(m);
    const char *key = json_string_value(json_object_get(m, "key"));
    char msg[512];
    if (!rw_kv_key_ok(key)) {
        snprintf(msg, sizeof msg, "%s: key: must be 1..%d printable ASCII bytes without spaces",
                 type, RW_KV_KEY_MAX);
        kv_reject(c, id, RW_E_BAD_MESSAGE, msg);
        return;
    }
    if (!strcmp(type, "kv_set")) {
        json_t *v = json_object_get(m, "value");
        size_t n;
        if (rw_hex_decode(json_string_value(v), json_string_length(v), NULL, 0, &n) != 0) {
            kv_reject(c, id, RW_E_BAD_MESSAGE,
                      "kv_set: value: must be hex (an even number of hex digits)");
            return;
        }
    }
    json_int_t job = json_integer_value(json_object_get(m, "job"));
    json_int_t attempt = json_integer_value(json_object_get(m, "attempt"));
    rd_run *r = w->job && job == w->job && attempt == w->attempt ? rd_run_find(rs, w->attempt) : NULL;
    if (!r) {
        snprintf(msg, sizeof msg, "%s: job %lld attempt %lld is not this worker's assignment", type,
                 (long long)job, (long long)attempt);
        kv_reject(c, id, RW_E_STATE, msg);
        return;
    }
    rd_kv_entry *e = r->kv;
    while (e && strcmp(e->key, key) != 0)
        e = e->next;
    if (!strcmp(type, "kv_set")) {
        json_t *v = json_object_get(m, "value");
        const char *hex = json_string_value(v);
        size_t len = json_string_length(v);
        /* per attempt: a few keys per rank, a few values' worth of bytes */
        size_t max_keys = 16 + 4 * (size_t)r->world;
        size_t max_bytes = (size_t)(r->world + 1) * 2 * RW_KV_VALUE_MAX;
        size_t bytes = r->kv_bytes - (e ? strlen(e->value) : 0) + len;
        if ((!e && r->nkv >= max_keys) || bytes > max_bytes) {
            snprintf(msg, sizeof msg, "kv_set: the store of attempt %lld is full (%zu keys, %zu bytes)",
                     (long long)attempt, r->nkv, r->kv_bytes);
            kv_reject(c, id, RW_E_STATE, msg);
            return;
        }
        char *val = strdup(hex);
        if (!val || (!e && !(e = calloc(1, sizeof *e)))) {
            free(val);
            kv_reject(c, id, RW_E_STATE, "kv_set: out of memory");
            return;
        }
        if (!e->key) {
            e->key = strdup(key);
            if (!e->key) {
                free(val);
                free(e);
                kv_reject(c, id, RW_E_STATE, "kv_set: out of memory");
                return;
            }
            e->next = r->kv;
            r->kv = e;
            r->nkv++;
        } else {
            free(e->value);
        }
        e->value = val;
        r->kv_bytes = bytes;
        rd_conn_send(c, rw_msg_new("ok", id));
        for (rd_kv_waiter **p = &r->waiters; *p;) {
            rd_kv_waiter *q = *p;
            if (strcmp(q->key, key) != 0) {
                p = &q->next;
                continue;
            }
            *p = q->next;
            kv_value_reply(q->c, q->id, e->value);
            rd_kv_waiter_free(q);
        }
        return;
    }
    /* kv_get */
    if (e) {
        kv_value_reply(c, id, e->value);
        return;
    }
    json_int_t ms = json_integer_value(json_object_get(m, "timeout_ms"));
    if (ms == 0) {
        snprintf(msg, sizeof msg, "kv_get: no value for '%s'", key);
        kv_reject(c, id, RW_E_TIMEOUT, msg);
        return;
    }
    if (waiting_of(rs, c) >= RD_KV_WAITERS_PER_CONN) {
        snprintf(msg, sizeof msg, "kv_get: %d requests of this worker wait already",
                 RD_KV_WAITERS_PER_CONN);
        kv_reject(c, id, RW_E_STATE, msg);
        return;
    }
    rd_kv_waiter *q = calloc(1, sizeof *q);
    if (!q || !(q->key = strdup(key))) {
        free(q);
        kv_reject(c, id, RW_E_STATE, "kv_get: out of memory");
        return;
    }
    q->c = c;
    q->id = id;
    q->deadline = rd_mono() + ms / 1000.0;
    q->next = r->waiters;
    r->waiters = q;
}

void rd_kv_forgive(rd_runs *rs, double secs)
{
    for (rd_run *r = rs->list; r; r = r->next)
        for (rd_kv_waiter *w = r->waiters; w; w = w->next)
            w->deadline += secs;
}

