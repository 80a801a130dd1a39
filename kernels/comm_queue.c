/* A communicator whose operations run on a thread of its own
 * (kb_comm_queued in collective.h): what lets a CPU rank all-reduce a
 * bucket of gradients while its backward pass computes the next one.
 *
 * One FIFO of operations, one thread taking them in order: every rank posts
 * the same operations in the same program order, so the inner
 * communicator sees one order on every rank, as collectives need. After a
 * failure the later operations are not run; each of them reports the first
 * failure, and so does every wait past it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/bf16.h"
#include "kernels/collective.h"

typedef enum { Q_ALLREDUCE, Q_ALLREDUCE_BF16, Q_BROADCAST, Q_BARRIER, Q_QUIT } q_kind;

typedef struct q_op {
    q_kind kind;
    void *buf;
    size_t n;        /* floats (all-reduce) or bytes (broadcast) */
    kb_reduce_op op;
    kb_wire wire;
    int root;
} q_op;

typedef struct queued {
    kb_comm c; /* first: the public face */
    kb_comm *inner;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t posted_cv, done_cv;
    q_op *fifo;       /* ring of cap */
    long cap, head;   /* head: the ticket of fifo's oldest entry, less one */
    long posted, done; /* tickets: the last posted, the last finished */
    long failed_at;   /* ticket of the first failure; 0: none */
    char first_error[512];
    double busy_s;
    uint16_t *stage;  /* bf16 copy of the bucket on the wire */
    size_t stage_cap;
} queued;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int run_allreduce(queued *q, const q_op *o, char *err, size_t errlen)
{
    kb_comm *in = q->inner;
    if (o->wire == KB_WIRE_FP32)
        return in->allreduce(in, o->buf, o->n, o->op, err, errlen);
    if (o->n > q->stage_cap) {
        uint16_t *s = realloc(q->stage, o->n * sizeof *s);
        if (!s) {
            snprintf(err, errlen, "out of memory for a bf16 bucket of %zu numbers", o->n);
            return -1;
        }
        q->stage = s;
        q->stage_cap = o->n;
    }
    float *b = o->buf;
    for (size_t i = 0; i < o->n; i++)
        q->stage[i] = kb_bf16_from_float(b[i]);
    if (in->allreduce_bf16(in, q->stage, o->n, err, errlen) != 0)
        return -1;
    /* the average divides in fp32, as the fp32 wire's does */
    float w = o->op == KB_REDUCE_AVG ? (float)in->world : 1.0f;
    for (size_t i = 0; i < o->n; i++)
        b[i] = kb_float_from_bf16(q->stage[i]) / w;
    return 0;
}

static void *worker(void *arg)
{
    queued *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (q->head == q->posted)
            pthread_cond_wait(&q->posted_cv, &q->mu);
        q_op o = q->fifo[q->head % q->cap];
        int skip = q->failed_at != 0;
        pthread_mutex_unlock(&q->mu);
        if (o.kind == Q_QUIT)
            return NULL;
        char err[512] = "";
        int rc = 0;
        double t0 = mono_s();
        if (!skip) {
            kb_comm *in = q->inner;
            switch (o.kind) {
            case Q_ALLREDUCE: rc = run_allreduce(q, &o, err, sizeof err); break;
            case Q_BROADCAST: rc = in->broadcast(in, o.buf, o.n, o.root, err, sizeof err); break;
            case Q_BARRIER: rc = in->barrier(in, err, sizeof err); break;
            case Q_ALLREDUCE_BF16: rc = in->allreduce_bf16(in, o.buf, o.n, err, sizeof err); break;
            case Q_QUIT: break;
            }
        }
        double t1 = mono_s();
        pthread_mutex_lock(&q->mu);
        q->busy_s += t1 - t0;
        q->head++;
        q->done = q->head;
        if (rc != 0 && !q->failed_at) {
            q->failed_at = q->done;
            snprintf(q->first_error, sizeof q->first_error, "%s", err);
        }
        q->c.broken = q->inner->broken;
        pthread_cond_broadcast(&q->done_cv);
        pthread_mutex_unlock(&q->mu);
    }
}

static long post(queued *q, const q_op *o, char *err, size_t errlen)
{
    pthread_mutex_lock(&q->mu);
    if (q->posted - q->head == q->cap) {
        /* full: unroll the ring into one twice its size */
        q_op *f = malloc((size_t)(2 * q->cap) * sizeof *f);
        if (!f) {
            pthread_mutex_unlock(&q->mu);
            snprintf(err, errlen, "out of memory queueing a collective");
            return -1;
        }
        for (long t = q->head; t < q->posted; t++)
            f[t % (2 * q->cap)] = q->fifo[t % q->cap];
        free(q->fifo);
        q->fifo = f;
        q->cap *= 2;
    }
    q->fifo[q->posted % q->cap] = *o;
    long ticket = ++q->posted;
    pthread_cond_signal(&q->posted_cv);
    pthread_mutex_unlock(&q->mu);
    return ticket;
}

static int q_wait(kb_comm *c, long ticket, char *err, size_t errlen)
{
    queued *q = (queued *)c;
    pthread_mutex_lock(&q->mu);
    while (q->done < ticket)
        pthread_cond_wait(&q->done_cv, &q->mu);
    int rc = q->failed_at && q->failed_at <= ticket ? -1 : 0;
    if (rc)
        snprintf(err, errlen, "%s", q->first_error);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static long q_start(kb_comm *c, float *buf, size_t n, kb_reduce_op op, kb_wire wire, char *err,
                    size_t errlen)
{
    queued *q = (queued *)c;
    if (op != KB_REDUCE_SUM && op != KB_REDUCE_AVG) {
        snprintf(err, errlen, "allreduce: unknown reduce op %d", (int)op);
        return -1;
    }
    if (wire == KB_WIRE_BF16 && !q->inner->allreduce_bf16) {
        snprintf(err, errlen, "%s has no bf16 all-reduce", q->inner->name);
        return -1;
    }
    q_op o = {.kind = Q_ALLREDUCE, .buf = buf, .n = n, .op = op, .wire = wire};
    return post(q, &o, err, errlen);
}

static int q_allreduce(kb_comm *c, float *buf, size_t n, kb_reduce_op op, char *err,
                       size_t errlen)
{
    long t = q_start(c, buf, n, op, KB_WIRE_FP32, err, errlen);
    return t < 0 ? -1 : q_wait(c, t, err, errlen);
}

static int q_broadcast(kb_comm *c, void *buf, size_t bytes, int root, char *err, size_t errlen)
{
    q_op o = {.kind = Q_BROADCAST, .buf = buf, .n = bytes, .root = root};
    long t = post((queued *)c, &o, err, errlen);
    return t < 0 ? -1 : q_wait(c, t, err, errlen);
}

static int q_barrier(kb_comm *c, char *err, size_t errlen)
{
    q_op o = {.kind = Q_BARRIER};
    long t = post((queued *)c, &o, err, errlen);
    return t < 0 ? -1 : q_wait(c, t, err, errlen);
}

/* Raw bf16 numbers, as the inner communicator sums them, through the queue. */
static int q_allreduce_bf16(kb_comm *c, uint16_t *buf, size_t n, char *err, size_t errlen)
{
    q_op o = {.kind = Q_ALLREDUCE_BF16, .buf = buf, .n = n};
    long t = post((queued *)c, &o, err, errlen);
    return t < 0 ? -1 : q_wait(c, t, err, errlen);
}

static void q_destroy(kb_comm *c)
{
    queued *q = (queued *)c;
    q_op o = {.kind = Q_QUIT};
    char err[64];
    if (post(q, &o, err, sizeof err) > 0)
        pthread_join(q->thread, NULL);
    kb_comm_destroy(q->inner);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->posted_cv);
    pthread_cond_destroy(&q->done_cv);
    free(q->fifo);
    free(q->stage);
    free(q);
}

kb_comm *kb_comm_queued(kb_comm *inner, char *err, size_t errlen)
{
    if (!inner || inner->device_memory || inner->start) {
        snprintf(err, errlen, "a queue of collectives needs a host-memory communicator%s",
                 inner && inner->start ? " not queued already" : "");
        return NULL;
    }
    queued *q = calloc(1, sizeof *q);
    if (q)
        q->fifo = malloc(16 * sizeof *q->fifo);
    if (!q || !q->fifo) {
        free(q);
        snprintf(err, errlen, "out of memory for a queue of collectives");
        return NULL;
    }
    q->cap = 16;
    q->inner = inner;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->posted_cv, NULL);
    pthread_cond_init(&q->done_cv, NULL);
    q->c = (kb_comm){
        .rank = inner->rank, .world = inner->world, .name = inner->name, .impl = inner->impl,
        .allreduce = q_allreduce, .broadcast = q_broadcast, .barrier = q_barrier,
        .destroy = q_destroy, .allreduce_bf16 = inner->allreduce_bf16 ? q_allreduce_bf16 : NULL,
        .start = q_start, .wait = q_wait,
    };
    if (pthread_create(&q->thread, NULL, worker, q) != 0) {
        snprintf(err, errlen, "cannot start the collectives' thread");
        free(q->fifo);
        free(q);
        return NULL;
    }
    return &q->c;
}

double kb_comm_busy_s(const kb_comm *c)
{
    if (!c || !c->start)
        return 0;
    queued *q = (queued *)c;
    pthread_mutex_lock(&q->mu);
    double s = q->busy_s;
    pthread_mutex_unlock(&q->mu);
    return s;
}
