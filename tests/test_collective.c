/* Collectives: the world of one, and Gloo with 2 and 3 ranks as threads (or
 * a forked process) of this test, meeting through an in-memory store that
 * lives in shared memory so a forked rank can use it too.
 *
 * Values are small integers in floats, so every sum is exact and results
 * are compared bit for bit. The failure tests check that a silent peer, a
 * dead peer and a missing peer each turn into an error within the timeout,
 * never a hang. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels/collective.h"
#include "rw_config.h"

#define ERRLEN 512
#define MAX_WORLD 4

/* ---- the test store: a small key-value table in MAP_SHARED memory ---- */

#define TS_KEYS 32
#define TS_KEY 64
#define TS_VAL 4096 // > 3 peers x 192-byte gloo addresses

typedef struct test_store {
    pthread_mutex_t mu;
    pthread_cond_t cv; // broadcast on every set
    int n;
    struct {
        char key[TS_KEY];
        size_t len;
        char val[TS_VAL];
    } e[TS_KEYS];
} test_store;

static test_store *ts_new(void)
{
    test_store *ts = mmap(NULL, sizeof *ts, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                          -1, 0);
    cr_assert_neq(ts, MAP_FAILED);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&ts->mu, &ma);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ts->cv, &ca);
    ts->n = 0;
    return ts;
}

static void ts_free(test_store *ts)
{
    munmap(ts, sizeof *ts);
}

static int ts_find(test_store *ts, const char *key)
{
    for (int i = 0; i < ts->n; i++)
        if (strcmp(ts->e[i].key, key) == 0)
            return i;
    return -1;
}

static int ts_set(void *ud, const char *key, const void *value, size_t len)
{
    test_store *ts = ud;
    if (strlen(key) >= TS_KEY || len > TS_VAL)
        return -1;
    pthread_mutex_lock(&ts->mu);
    int i = ts_find(ts, key);
    if (i < 0 && ts->n < TS_KEYS) {
        i = ts->n++;
        strcpy(ts->e[i].key, key);
    }
    if (i >= 0) {
        if (len) /* a zero-length value may come as NULL */
            memcpy(ts->e[i].val, value, len);
        ts->e[i].len = len;
        pthread_cond_broadcast(&ts->cv);
    }
    pthread_mutex_unlock(&ts->mu);
    return i >= 0 ? 0 : -1;
}

static int ts_get(void *ud, const char *key, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    test_store *ts = ud;
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (dl.tv_nsec >= 1000000000) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&ts->mu);
    int i;
    while ((i = ts_find(ts, key)) < 0)
        if (pthread_cond_timedwait(&ts->cv, &ts->mu, &dl) == ETIMEDOUT)
            break;
    if (i >= 0) {
        // Reports the full length even when it does not fit, so the caller
        // can come back with a larger buffer.
        *len = ts->e[i].len;
        memcpy(buf, ts->e[i].val, ts->e[i].len < cap ? ts->e[i].len : cap);
    }
    pthread_mutex_unlock(&ts->mu);
    return i >= 0 ? 0 : -1;
}

static kb_store ts_store(test_store *ts)
{
    return (kb_store){.ud = ts, .set = ts_set, .get = ts_get};
}

/* ---- ranks as threads ---- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct rank_ctx rank_ctx;
typedef void (*rank_fn)(rank_ctx *r);

struct rank_ctx {
    test_store *ts;
    int rank, world, timeout_ms;
    rank_fn fn;
    void *shared; // per-test state shared by the ranks
    kb_comm *comm;
    char err[ERRLEN];
    int failed; // set by the rank body; checked on the main thread
    char why[ERRLEN + 128];
};

static void need_gloo(void)
{
    if (!RW_HAVE_GLOO)
        cr_skip_test("built without Gloo");
}

/* Criterion asserts only work on the test's main thread, so rank bodies
 * record their first failure here and the main thread reports it. */
#define RANK_CHECK(r, cond, ...)                                                           \
    do {                                                                                   \
        if (!(cond) && !(r)->failed) {                                                     \
            (r)->failed = 1;                                                               \
            snprintf((r)->why, sizeof(r)->why, __VA_ARGS__);                               \
        }                                                                                  \
    } while (0)

static void *rank_main(void *arg)
{
    rank_ctx *r = arg;
    kb_store s = ts_store(r->ts);
    r->comm = kb_gloo_create(&s, r->rank, r->world, "127.0.0.1", r->timeout_ms, r->err, ERRLEN);
    if (!r->comm) {
        r->failed = 1;
        snprintf(r->why, sizeof r->why, "create: %s", r->err);
        return NULL;
    }
    RANK_CHECK(r, r->comm->rank == r->rank && r->comm->world == r->world, "rank/world");
    r->fn(r);
    kb_comm_destroy(r->comm);
    return NULL;
}

static void run_ranks(int world, int timeout_ms, rank_fn fn, void *shared)
{
    test_store *ts = ts_new();
    rank_ctx r[MAX_WORLD];
    pthread_t th[MAX_WORLD];
    for (int i = 0; i < world; i++) {
        r[i] = (rank_ctx){.ts = ts, .rank = i, .world = world, .timeout_ms = timeout_ms,
                          .fn = fn, .shared = shared};
        cr_assert_eq(pthread_create(&th[i], NULL, rank_main, &r[i]), 0);
    }
    for (int i = 0; i < world; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < world; i++)
        cr_expect_eq(r[i].failed, 0, "rank %d of %d: %s", i, world, r[i].why);
    ts_free(ts);
}

/* ---- world of one ---- */

Test(collective, single_is_noop)
{
    kb_comm *c = kb_comm_single();
    cr_assert_not_null(c);
    cr_assert_eq(c->rank, 0);
    cr_assert_eq(c->world, 1);
    cr_assert_str_eq(c->name, "single");
    char err[ERRLEN] = "";
    float v[3] = {1.5f, -2.0f, 3.25f};
    cr_assert_eq(c->allreduce(c, v, 3, KB_REDUCE_SUM, err, sizeof err), 0);
    cr_assert_eq(c->allreduce(c, v, 3, KB_REDUCE_AVG, err, sizeof err), 0);
    cr_assert(v[0] == 1.5f && v[1] == -2.0f && v[2] == 3.25f);
    char b[4] = "abc";
    cr_assert_eq(c->broadcast(c, b, sizeof b, 0, err, sizeof err), 0);
    cr_assert_str_eq(b, "abc");
    cr_assert_eq(c->broadcast(c, b, sizeof b, 1, err, sizeof err), -1);
    cr_assert(strstr(err, "root 1"), "%s", err);
    cr_assert_eq(c->barrier(c, err, sizeof err), 0);
    kb_comm_destroy(c);

    /* a world in name only: rank 1 of 3 that sends nothing */
    c = kb_comm_silent(1, 3);
    cr_assert(c && c->rank == 1 && c->world == 3);
    cr_assert_eq(c->allreduce(c, v, 3, KB_REDUCE_AVG, err, sizeof err), 0);
    cr_assert(v[0] == 1.5f && v[1] == -2.0f && v[2] == 3.25f);
    cr_assert_eq(c->broadcast(c, b, sizeof b, 2, err, sizeof err), 0);
    cr_assert_eq(c->broadcast(c, b, sizeof b, 3, err, sizeof err), -1);
    cr_assert(strstr(err, "root 3 outside world of 3"), "%s", err);
    kb_comm_destroy(c);
    cr_assert_null(kb_comm_silent(3, 3));
}

/* ---- allreduce ---- */

static const size_t sizes[] = {1, 1000, 3000000};

/* Rank r contributes (i % 1000) + 7 r: sums stay below 2^24, exact in float. */
static float contrib(size_t i, int r)
{
    return (float)(i % 1000) + 7.0f * (float)r;
}

static void allreduce_body(rank_ctx *r)
{
    int W = r->world;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        float *v = malloc(n * sizeof *v);
        for (int avg = 0; avg < 2; avg++) {
            for (size_t i = 0; i < n; i++)
                v[i] = contrib(i, r->rank);
            int rc = r->comm->allreduce(r->comm, v, n, avg ? KB_REDUCE_AVG : KB_REDUCE_SUM, r->err,
                                        ERRLEN);
            RANK_CHECK(r, rc == 0, "allreduce n=%zu: %s", n, r->err);
            size_t bad = 0;
            float got = 0, want = 0;
            for (size_t i = 0; i < n; i++) {
                float s = 0;
                for (int q = 0; q < W; q++)
                    s += contrib(i, q);
                float e = avg ? s / (float)W : s;
                if (v[i] != e && bad++ == 0)
                    got = v[i], want = e;
            }
            RANK_CHECK(r, bad == 0, "%s n=%zu: %zu wrong, first %g want %g", avg ? "avg" : "sum",
                       n, bad, got, want);
        }
        free(v);
    }
}

Test(collective, allreduce_world2, .timeout = 60)
{
    need_gloo();
    run_ranks(2, 10000, allreduce_body, NULL);
}

Test(collective, allreduce_world3, .timeout = 60)
{
    need_gloo();
    run_ranks(3, 10000, allreduce_body, NULL);
}

/* ---- bf16 on the wire, and the queue ---- */

static uint16_t bf16_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float float_of(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Rank r's k-th number: no pattern bf16 keeps exactly. */
static float noisy(size_t k, int r)
{
    return (float)((k * 2654435761u + (size_t)r * 40503u) % 100003u) / 9973.0f - 5.0f;
}

/* Two ranks: each number is bf16(bf16(a) + bf16(b)), the sum in fp32 of
 * the bf16 inputs, rounded once: what "bf16 on the wire, the sum in fp32"
 * means (with two ranks the order of the addition cannot matter). */
static void bf16_body(rank_ctx *r)
{
    size_t n = 100001;
    uint16_t *v = malloc(n * sizeof *v);
    for (size_t k = 0; k < n; k++)
        v[k] = bf16_of(noisy(k, r->rank));
    int rc = r->comm->allreduce_bf16(r->comm, v, n, r->err, ERRLEN);
    RANK_CHECK(r, rc == 0, "allreduce_bf16: %s", r->err);
    size_t bad = 0, inexact = 0;
    for (size_t k = 0; k < n; k++) {
        float a = float_of(bf16_of(noisy(k, 0))), b = float_of(bf16_of(noisy(k, 1)));
        bad += v[k] != bf16_of(a + b);
        inexact += float_of(bf16_of(a + b)) != a + b;
    }
    RANK_CHECK(r, bad == 0, "%zu of %zu sums are not bf16(bf16(a) + bf16(b))", bad, n);
    RANK_CHECK(r, inexact > n / 4, "only %zu sums needed rounding: the test proves little",
               inexact);
    free(v);
}

Test(collective, bf16_allreduce_sums_in_fp32_and_rounds_once_world2, .timeout = 60)
{
    need_gloo();
    run_ranks(2, 10000, bf16_body, NULL);
}

/* Exact sums: bucket 4 goes as bf16, whose integers are exact below 2^8. */
static float small(int b, size_t i, int r)
{
    return b == 4 ? (float)(i % 32) + (float)r : contrib(i + (size_t)b, r);
}

/* A queue over Gloo: several all-reduces posted at once (fp32 and bf16,
 * sum and average), a blocking broadcast behind them, then one wait: every
 * result is the unqueued one's, and the queue counts its busy time. */
static void queued_body(rank_ctx *r)
{
    kb_comm *q = kb_comm_queued(r->comm, r->err, ERRLEN);
    RANK_CHECK(r, q != NULL, "queue: %s", r->err);
    if (!q)
        return;
    r->comm = q; /* destroyed with the queue */
    int W = r->world;
    enum { NB = 5 };
    size_t n[NB] = {1, 1000, 300000, 7, 50000};
    float *v[NB];
    long last = 0;
    for (int b = 0; b < NB; b++) {
        v[b] = malloc(n[b] * sizeof(float));
        for (size_t i = 0; i < n[b]; i++)
            v[b][i] = small(b, i, r->rank);
        kb_wire wire = b == 4 ? KB_WIRE_BF16 : KB_WIRE_FP32;
        last = q->start(q, v[b], n[b], b % 2 ? KB_REDUCE_AVG : KB_REDUCE_SUM, wire, r->err,
                        ERRLEN);
        RANK_CHECK(r, last > 0, "start %d: %s", b, r->err);
    }
    char word[8] = "";
    if (r->rank == 1)
        snprintf(word, sizeof word, "queued");
    RANK_CHECK(r, q->broadcast(q, word, sizeof word, 1, r->err, ERRLEN) == 0, "bcast: %s",
               r->err);
    RANK_CHECK(r, strcmp(word, "queued") == 0, "broadcast gave '%s'", word);
    RANK_CHECK(r, q->wait(q, last, r->err, ERRLEN) == 0, "wait: %s", r->err);
    for (int b = 0; b < NB; b++) {
        size_t bad = 0;
        for (size_t i = 0; i < n[b]; i++) {
            float s = 0;
            for (int k = 0; k < W; k++)
                s += small(b, i, k);
            float e = b % 2 ? s / (float)W : s;
            bad += v[b][i] != e;
        }
        RANK_CHECK(r, bad == 0, "queued all-reduce %d: %zu of %zu wrong", b, bad, n[b]);
        free(v[b]);
    }
    /* raw bf16 bits through the queue: the inner communicator's sum */
    uint16_t h[3];
    for (int i = 0; i < 3; i++)
        h[i] = bf16_of((float)(i + r->rank));
    RANK_CHECK(r, q->allreduce_bf16(q, h, 3, r->err, ERRLEN) == 0, "bf16: %s", r->err);
    for (int i = 0; i < 3; i++)
        RANK_CHECK(r, float_of(h[i]) == (float)(W * i + W * (W - 1) / 2), "bf16 sum %d: %g", i,
                   float_of(h[i]));
    RANK_CHECK(r, kb_comm_busy_s(q) > 0, "no busy time counted");
}

Test(collective, queued_operations_run_in_order_beside_the_caller_world3, .timeout = 60)
{
    need_gloo();
    run_ranks(3, 10000, queued_body, NULL);
}

/* ---- broadcast ---- */

#define BC_BYTES 100003 // odd size: no element-size assumptions

static void broadcast_body(rank_ctx *r)
{
    unsigned char *b = malloc(BC_BYTES);
    for (int root = 0; root < 2; root++) {
        for (size_t i = 0; i < BC_BYTES; i++)
            b[i] = (unsigned char)(i * 31 + (size_t)r->rank * 101);
        int rc = r->comm->broadcast(r->comm, b, BC_BYTES, root, r->err, ERRLEN);
        RANK_CHECK(r, rc == 0, "broadcast root %d: %s", root, r->err);
        size_t bad = 0;
        for (size_t i = 0; i < BC_BYTES; i++)
            bad += b[i] != (unsigned char)(i * 31 + (size_t)root * 101);
        RANK_CHECK(r, bad == 0, "broadcast root %d: %zu bytes differ from the root's", root, bad);
    }
    int rc = r->comm->broadcast(r->comm, b, BC_BYTES, r->world, r->err, ERRLEN);
    RANK_CHECK(r, rc == -1 && strstr(r->err, "root"), "root out of range accepted: %s", r->err);
    free(b);
}

Test(collective, broadcast_world3, .timeout = 60)
{
    need_gloo();
    run_ranks(3, 10000, broadcast_body, NULL);
}

/* ---- barrier: nobody leaves before the last rank arrives ---- */

static void barrier_body(rank_ctx *r)
{
    atomic_int *arrived = r->shared;
    if (r->rank == r->world - 1)
        usleep(300 * 1000); // the late rank
    atomic_fetch_add(arrived, 1);
    int rc = r->comm->barrier(r->comm, r->err, ERRLEN);
    RANK_CHECK(r, rc == 0, "barrier: %s", r->err);
    int n = atomic_load(arrived);
    RANK_CHECK(r, n == r->world, "left the barrier with %d of %d arrived", n, r->world);
}

Test(collective, barrier_world3, .timeout = 60)
{
    need_gloo();
    atomic_int arrived = 0;
    run_ranks(3, 10000, barrier_body, &arrived);
}

/* ---- failures ---- */

/* Rank 1 connects, then never calls allreduce (it waits until rank 0 has
 * given up): rank 0 must time out, and the communicator stays broken. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    double elapsed, second;
} silent_state;

static void silent_body(rank_ctx *r)
{
    silent_state *st = r->shared;
    if (r->rank == 1) {
        pthread_mutex_lock(&st->mu);
        while (!st->done)
            pthread_cond_wait(&st->cv, &st->mu);
        pthread_mutex_unlock(&st->mu);
        return;
    }
    float v[1000] = {0};
    double t0 = now_s();
    int rc = r->comm->allreduce(r->comm, v, 1000, KB_REDUCE_SUM, r->err, ERRLEN);
    st->elapsed = now_s() - t0;
    RANK_CHECK(r, rc == -1 && r->err[0], "allreduce with a silent peer: rc %d", rc);
    cr_log_info("silent peer: allreduce failed after %.2f s: %s", st->elapsed, r->err);
    t0 = now_s();
    rc = r->comm->barrier(r->comm, r->err, ERRLEN);
    st->second = now_s() - t0;
    RANK_CHECK(r, rc == -1 && strstr(r->err, "broken"), "barrier after an error: rc %d %s", rc,
               r->err);
    pthread_mutex_lock(&st->mu);
    st->done = 1;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

Test(collective, silent_peer_times_out, .timeout = 30)
{
    need_gloo();
    silent_state st = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    run_ranks(2, 1000, silent_body, &st);
    cr_expect(st.elapsed >= 0.9 && st.elapsed < 5.0, "timeout 1 s, failed after %.2f s",
              st.elapsed);
    cr_expect(st.second < 0.1, "a broken communicator took %.2f s to fail", st.second);
}

/* Rank 1 is a forked process that takes part in one allreduce and is then
 * killed while rank 0 is in the middle of the next one (a 12 MB buffer, so
 * rank 0 is still sending): rank 0 must fail on the closed connection, well
 * before the timeout, and not die of SIGPIPE. The store is in shared memory
 * so the child can use it. */
#define DEAD_N 3000000

Test(collective, dead_peer_fails, .timeout = 30)
{
    need_gloo();
    test_store *ts = ts_new();
    kb_store s = ts_store(ts);
    const int timeout_ms = 4000;
    float *v = malloc(DEAD_N * sizeof *v);
    cr_assert_not_null(v);
    for (size_t i = 0; i < DEAD_N; i++)
        v[i] = 1;
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        char err[ERRLEN];
        kb_comm *c = kb_gloo_create(&s, 1, 2, "127.0.0.1", timeout_ms, err, sizeof err);
        if (!c)
            _exit(2);
        if (c->allreduce(c, v, 1000, KB_REDUCE_SUM, err, sizeof err) != 0)
            _exit(3);
        usleep(300 * 1000); // rank 0 is now waiting in its second allreduce
        kill(getpid(), SIGKILL); // no destroy, no goodbye: a crash
        _exit(4);
    }
    char err[ERRLEN] = "";
    kb_comm *c = kb_gloo_create(&s, 0, 2, "127.0.0.1", timeout_ms, err, sizeof err);
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->allreduce(c, v, 1000, KB_REDUCE_SUM, err, sizeof err), 0, "%s", err);
    cr_assert(v[0] == 2.0f && v[999] == 2.0f);
    /* a caller's mistake is not the transport's failure: not broken */
    cr_assert_eq(c->broadcast(c, v, 4, 5, err, sizeof err), -1);
    cr_assert_eq(c->broken, 0, "bad arguments marked the communicator broken");
    double t0 = now_s();
    int rc = c->allreduce(c, v, DEAD_N, KB_REDUCE_SUM, err, sizeof err);
    double dt = now_s() - t0;
    cr_log_info("dead peer: allreduce failed after %.2f s: %s", dt, err);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
    cr_assert_eq(rc, -1);
    cr_assert(err[0]);
    cr_assert_lt(dt, timeout_ms / 1000.0 - 1.0, "failed after %.2f s: not on the closed socket",
                 dt);
    cr_assert_eq(c->broadcast(c, v, 4, 0, err, sizeof err), -1);
    cr_assert(strstr(err, "broken"), "%s", err);
    /* what the worker reads to ask the daemon for another attempt */
    cr_assert_eq(c->broken, 1);
    kb_comm_destroy(c);
    free(v);
    ts_free(ts);
}

/* World 2 with only rank 0: the rendezvous gives up within its timeout. */
Test(collective, rendezvous_timeout, .timeout = 30)
{
    need_gloo();
    test_store *ts = ts_new();
    kb_store s = ts_store(ts);
    char err[ERRLEN] = "";
    double t0 = now_s();
    kb_comm *c = kb_gloo_create(&s, 0, 2, "127.0.0.1", 1000, err, sizeof err);
    double dt = now_s() - t0;
    cr_log_info("missing peer: create failed after %.2f s: %s", dt, err);
    cr_assert_null(c);
    cr_assert(strstr(err, "rendezvous"), "%s", err);
    cr_assert(dt >= 0.9 && dt < 5.0, "timeout 1 s, gave up after %.2f s", dt);
    ts_free(ts);
}

Test(collective, bad_arguments)
{
    test_store *ts = ts_new();
    kb_store s = ts_store(ts);
    char err[ERRLEN] = "";
    cr_assert_null(kb_gloo_create(&s, 2, 2, "127.0.0.1", 1000, err, sizeof err));
    cr_assert(err[0]);
    err[0] = 0;
    cr_assert_null(kb_gloo_create(NULL, 0, 1, "127.0.0.1", 1000, err, sizeof err));
    cr_assert(err[0]);
    err[0] = 0;
    cr_assert_null(kb_gloo_create(&s, 0, 2, "127.0.0.1", 0, err, sizeof err));
    cr_assert(err[0]);
    if (!RW_HAVE_GLOO)
        cr_assert_str_eq(err, "built without Gloo");
    ts_free(ts);
}

/* Gloo with a world of one works too (nothing to connect), and an address
 * this host does not have fails at device creation with a message. */
Test(collective, gloo_world1_and_foreign_address, .timeout = 30)
{
    need_gloo();
    test_store *ts = ts_new();
    kb_store s = ts_store(ts);
    char err[ERRLEN] = "";
    kb_comm *c = kb_gloo_create(&s, 0, 1, "127.0.0.1", 1000, err, sizeof err);
    cr_assert_not_null(c, "%s", err);
    cr_assert_str_eq(c->name, "gloo");
    float v[2] = {3, 5};
    cr_assert_eq(c->allreduce(c, v, 2, KB_REDUCE_AVG, err, sizeof err), 0, "%s", err);
    cr_assert(v[0] == 3.0f && v[1] == 5.0f);
    cr_assert_eq(c->barrier(c, err, sizeof err), 0, "%s", err);
    kb_comm_destroy(c);
    // 192.0.2.1 is TEST-NET-1: documentation only, never a local address.
    cr_assert_null(kb_gloo_create(&s, 0, 2, "192.0.2.1", 1000, err, sizeof err));
    cr_log_info("foreign address: %s", err);
    cr_assert(strstr(err, "192.0.2.1"), "%s", err);
    ts_free(ts);
}

/* ---- bandwidth: ResNet-18's gradient buffer (~11.2M floats), 2 ranks ---- */

#define BW_N 11200000
#define BW_REPS 5

static void bandwidth_body(rank_ctx *r)
{
    double *best = r->shared;
    float *v = malloc((size_t)BW_N * sizeof *v);
    for (size_t i = 0; i < BW_N; i++)
        v[i] = 1;
    double t_best = 1e9;
    for (int k = 0; k < BW_REPS + 1; k++) {
        r->comm->barrier(r->comm, r->err, ERRLEN);
        double t0 = now_s();
        int rc = r->comm->allreduce(r->comm, v, BW_N, KB_REDUCE_AVG, r->err, ERRLEN);
        double dt = now_s() - t0;
        RANK_CHECK(r, rc == 0, "allreduce: %s", r->err);
        if (k > 0 && dt < t_best) // the first one warms up the buffers
            t_best = dt;
    }
    RANK_CHECK(r, v[0] == 1.0f && v[BW_N - 1] == 1.0f, "average of ones is %g", v[0]);
    if (r->rank == 0)
        *best = t_best;
    free(v);
}

Test(collective, bandwidth_11M_world2, .timeout = 60)
{
    need_gloo();
    double best = 0;
    run_ranks(2, 20000, bandwidth_body, &best);
    double mb = (double)BW_N * sizeof(float) / 1e6;
    // Buffer size over time; with 2 ranks a ring moves the whole buffer once
    // each way per rank, so this is also the bus bandwidth.
    printf("gloo allreduce of %.1f MB, 2 ranks on loopback: best of %d %.1f ms, %.2f GB/s\n", mb,
           BW_REPS, best * 1e3, mb / best / 1e3);
    fflush(stdout);
}
