/* An in-process communicator for tests: ranks are threads of one process,
 * meeting at a barrier with a timeout. Reductions add the ranks' buffers in
 * rank order, so every rank gets identical bits, as NCCL and Gloo give. A
 * rank that never arrives makes the others' calls fail after the timeout,
 * which is how the tests play a dead peer. */
#ifndef RUNAWAY_TESTS_THREAD_COMM_H
#define RUNAWAY_TESTS_THREAD_COMM_H

#include <errno.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/collective.h"

#define TC_MAX 8

typedef struct tc_world {
    int world, timeout_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    long generation;
    int broken;
    void *slot[TC_MAX];
    size_t bytes;
} tc_world;

static inline void tc_world_init(tc_world *w, int world, int timeout_ms)
{
    memset(w, 0, sizeof *w);
    w->world = world;
    w->timeout_ms = timeout_ms;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

/* 0 when all ranks arrived, -1 after the timeout (and for ever after). */
static inline int tc_barrier(tc_world *w)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += w->timeout_ms / 1000;
    dl.tv_nsec += (long)(w->timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    long gen = w->generation;
    if (++w->arrived == w->world) {
        w->arrived = 0;
        w->generation++;
        pthread_cond_broadcast(&w->cv);
    } else {
        while (gen == w->generation && !w->broken)
            if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT) {
                w->broken = 1;
                pthread_cond_broadcast(&w->cv);
            }
    }
    int rc = w->broken ? -1 : 0;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

typedef struct tc_rank {
    kb_comm c;
    tc_world *w;
} tc_rank;

static inline int tc_fail(char *err, size_t errlen)
{
    snprintf(err, errlen, "thread comm: a peer did not arrive within the timeout");
    return -1;
}

static inline int tc_allreduce(kb_comm *c, float *buf, size_t n, kb_reduce_op op, char *err,
                        size_t errlen)
{
    tc_world *w = ((tc_rank *)c)->w;
    float *mine = malloc(n * sizeof(float));
    memcpy(mine, buf, n * sizeof(float));
    w->slot[c->rank] = mine;
    if (tc_barrier(w) != 0) {
        free(mine);
        return tc_fail(err, errlen);
    }
    for (size_t i = 0; i < n; i++) {
        float s = 0.0f;
        for (int r = 0; r < w->world; r++)
            s += ((float *)w->slot[r])[i];
        buf[i] = op == KB_REDUCE_AVG ? s / (float)w->world : s;
    }
    int rc = tc_barrier(w);
    free(mine);
    return rc ? tc_fail(err, errlen) : 0;
}

static inline float tc_float_of(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t tc_bf16_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* bf16 numbers summed in rank order, each addition in fp32 and rounded. */
static inline int tc_allreduce_bf16(kb_comm *c, uint16_t *buf, size_t n, char *err, size_t errlen)
{
    tc_world *w = ((tc_rank *)c)->w;
    uint16_t *mine = malloc(n * sizeof *mine);
    memcpy(mine, buf, n * sizeof *mine);
    w->slot[c->rank] = mine;
    if (tc_barrier(w) != 0) {
        free(mine);
        return tc_fail(err, errlen);
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t s = ((uint16_t *)w->slot[0])[i];
        for (int r = 1; r < w->world; r++)
            s = tc_bf16_of(tc_float_of(s) + tc_float_of(((uint16_t *)w->slot[r])[i]));
        buf[i] = s;
    }
    int rc = tc_barrier(w);
    free(mine);
    return rc ? tc_fail(err, errlen) : 0;
}

static inline int tc_broadcast(kb_comm *c, void *buf, size_t bytes, int root, char *err, size_t errlen)
{
    tc_world *w = ((tc_rank *)c)->w;
    if (c->rank == root)
        w->slot[root] = buf;
    if (tc_barrier(w) != 0)
        return tc_fail(err, errlen);
    if (c->rank != root)
        memcpy(buf, w->slot[root], bytes);
    return tc_barrier(w) ? tc_fail(err, errlen) : 0;
}

static inline int tc_barrier_op(kb_comm *c, char *err, size_t errlen)
{
    return tc_barrier(((tc_rank *)c)->w) ? tc_fail(err, errlen) : 0;
}

static inline void tc_destroy(kb_comm *c) { (void)c; }

static inline void tc_rank_init(tc_rank *r, tc_world *w, int rank)
{
    memset(r, 0, sizeof *r);
    r->w = w;
    r->c.rank = rank;
    r->c.world = w->world;
    r->c.name = "threads";
    r->c.allreduce = tc_allreduce;
    r->c.broadcast = tc_broadcast;
    r->c.barrier = tc_barrier_op;
    r->c.destroy = tc_destroy;
    r->c.allreduce_bf16 = tc_allreduce_bf16;
}

/* A key-value store shared by threads, for rendezvous in tests. */
#define TS_KEYS 64
typedef struct tc_store {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    char key[TS_KEYS][64];
    void *val[TS_KEYS];
    size_t len[TS_KEYS];
} tc_store;

static inline int ts_set(void *ud, const char *key, const void *value, size_t len)
{
    tc_store *s = ud;
    pthread_mutex_lock(&s->mu);
    int i = 0;
    while (i < s->n && strcmp(s->key[i], key) != 0)
        i++;
    if (i == TS_KEYS) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    if (i == s->n)
        snprintf(s->key[s->n++], 64, "%s", key);
    free(s->val[i]);
    s->val[i] = malloc(len ? len : 1);
    memcpy(s->val[i], value, len);
    s->len[i] = len;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static inline int ts_get(void *ud, const char *key, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    tc_store *s = ud;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000 + 1;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        for (int i = 0; i < s->n; i++)
            if (strcmp(s->key[i], key) == 0 && s->len[i] <= cap) {
                memcpy(buf, s->val[i], s->len[i]);
                *len = s->len[i];
                pthread_mutex_unlock(&s->mu);
                return 0;
            }
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) {
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
    }
}

static inline void tc_store_init(tc_store *s, kb_store *out)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    *out = (kb_store){.ud = s, .set = ts_set, .get = ts_get};
}

#endif
