/* runaway-worker serve: the protocol side of a worker.
 *
 * Threads: the main thread trains (rw_train, blocking, for minutes); an I/O
 * thread reads the daemon's frames (assign, cancel_job, stop) and sends a
 * heartbeat every period, so a long step never silences the worker. Writes
 * from both threads go through one mutex; the training hooks only send
 * frames and read flags. Losing the daemon stops training at the next step
 * (the checkpoint is written) and ends the process: the daemon restarts
 * workers, not the other way round. */
#include "worker/agent.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kernels/backend.h"
#include "proto/frame.h"
#include "proto/msg.h"
#include "proto/spec.h"
#include "worker/train.h"

typedef struct agent {
    int fd;
    pthread_mutex_t wmu; /* one writer at a time */
    pthread_mutex_t mu;  /* guards the fields below */
    pthread_cond_t cv;
    json_t *pending;     /* an assign not yet taken by the main thread */
    long long job, attempt; /* what is training now (0: idle) */
    atomic_int cancel;   /* the current job was cancelled */
    atomic_int stop;     /* the daemon asked us to stop, or is gone */
    atomic_int lost;
    rw_frame_reader r;   /* one reader for hello and the I/O thread: the daemon may
                          * send an assign right behind its hello reply */
    double heartbeat_s;
    int threads;
    const char *backend;
} agent;

static void send_msg(agent *a, json_t *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&a->wmu);
    if (!atomic_load(&a->lost) && rw_frame_send_fd(a->fd, m) != 0)
        atomic_store(&a->lost, 1);
    pthread_mutex_unlock(&a->wmu);
    json_decref(m);
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *io_main(void *arg)
{
    agent *a = arg;
    double next_hb = mono() + a->heartbeat_s;
    while (!atomic_load(&a->lost)) {
        int wait = (int)((next_hb - mono()) * 1000);
        json_t *m = NULL;
        char err[256];
        int rc = rw_frame_recv_fd(a->fd, &a->r, &m, wait > 0 ? wait : 0, err, sizeof err);
        if (rc < 0) {
            fprintf(stderr, "runaway-worker: daemon connection: %s\n", err);
            atomic_store(&a->lost, 1);
            break;
        }
        if (rc == 0) {
            json_t *hb = rw_msg_new("heartbeat", -1);
            pthread_mutex_lock(&a->mu);
            if (a->job)
                json_object_set_new(hb, "job", json_integer(a->job));
            pthread_mutex_unlock(&a->mu);
            send_msg(a, hb);
            next_hb = mono() + a->heartbeat_s;
            continue;
        }
        const char *type, *code;
        if (rw_msg_check(m, RW_FROM_DAEMON, &type, &code, err, sizeof err) != 0) {
            /* replies to our hello (ok/error) and anything newer: log, go on */
            const char *t = json_string_value(json_object_get(m, "type"));
            if (t && !strcmp(t, "error"))
                fprintf(stderr, "runaway-worker: daemon says: %s\n",
                        json_string_value(json_object_get(m, "message")));
            json_decref(m);
            continue;
        }
        pthread_mutex_lock(&a->mu);
        if (!strcmp(type, "assign")) {
            /* the daemon may assign the next job the moment our report of
             * the last one reaches it: keep one pending */
            if (a->pending)
                fprintf(stderr, "runaway-worker: second pending assignment; ignored\n");
            else
                a->pending = json_incref(m);
        } else if (!strcmp(type, "cancel_job")) {
            if (json_integer_value(json_object_get(m, "job")) == a->job)
                atomic_store(&a->cancel, 1);
        } else if (!strcmp(type, "stop")) {
            atomic_store(&a->stop, 1);
        }
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
        json_decref(m);
    }
    pthread_mutex_lock(&a->mu);
    atomic_store(&a->stop, 1);
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Training hooks */

typedef struct run_ctx {
    agent *a;
    long long job, attempt;
} run_ctx;

static json_t *job_msg(const run_ctx *r, const char *type)
{
    json_t *m = rw_msg_new(type, -1);
    json_object_set_new(m, "job", json_integer(r->job));
    json_object_set_new(m, "attempt", json_integer(r->attempt));
    return m;
}

static void put_metrics(json_t *m, const rw_metrics *x)
{
    json_object_set_new(m, "epoch", json_integer(x->epoch));
    json_object_set_new(m, "step", json_integer(x->step));
    json_object_set_new(m, "loss", rw_json_num(x->loss));
    json_object_set_new(m, "align", rw_json_num(x->align));
    json_object_set_new(m, "uniform", rw_json_num(x->uniform));
    json_object_set_new(m, "collapse", rw_json_num(x->collapse));
    json_object_set_new(m, "knn", rw_json_num(x->knn));
    json_object_set_new(m, "pairs_per_s", rw_json_num(x->pairs_per_s));
    json_object_set_new(m, "tau", rw_json_num(x->tau));
}

static void send_metric(run_ctx *r, const rw_metrics *x, const char *kind)
{
    json_t *m = job_msg(r, "metric");
    json_object_set_new(m, "kind", json_string(kind));
    put_metrics(m, x);
    send_msg(r->a, m);
}

static void hook_step(void *ud, const rw_metrics *m) { send_metric(ud, m, "step"); }
static void hook_epoch(void *ud, const rw_metrics *m) { send_metric(ud, m, "epoch"); }

static int hook_stop(void *ud)
{
    run_ctx *r = ud;
    return atomic_load(&r->a->cancel) || atomic_load(&r->a->stop) || atomic_load(&r->a->lost);
}

static void hook_log(void *ud, const char *line)
{
    run_ctx *r = ud;
    printf("[j%lld] %s\n", r->job, line);
    fflush(stdout);
    json_t *m = job_msg(r, "log");
    char buf[RW_LINE_MAX];
    snprintf(buf, sizeof buf, "%s", line);
    json_t *s = json_string(buf);
    json_object_set_new(m, "line", s ? s : json_string("(line not valid UTF-8)"));
    send_msg(r->a, m);
}

static kb_backend *make_backend(const char *want, int threads, char *err, size_t errlen)
{
    if (strcmp(want, "cpu") != 0) {
        kb_backend *be = kb_cuda_create(0, err, errlen);
        if (be || !strcmp(want, "cuda"))
            return be;
    }
    kb_backend *be = kb_cpu_create(threads);
    if (!be)
        snprintf(err, errlen, "cannot start the CPU backend");
    return be;
}

/* Trains one assignment; returns its final report (done, failed,
 * stopped) for the caller to send once it is idle again, or NULL. */
static json_t *run_assignment(agent *a, json_t *m)
{
    run_ctx r = {a, json_integer_value(json_object_get(m, "job")),
                 json_integer_value(json_object_get(m, "attempt"))};
    int rank = (int)json_integer_value(json_object_get(m, "rank"));
    int world = (int)json_integer_value(json_object_get(m, "world"));
    const char *yaml = json_string_value(json_object_get(m, "spec"));
    const char *name = json_string_value(json_object_get(m, "name"));
    char err[1024] = "";
    if (rank > 0) {
        /* data-parallel training comes with the distribution issue: other
         * ranks hold their device until the job ends */
        pthread_mutex_lock(&a->mu);
        while (!atomic_load(&a->cancel) && !atomic_load(&a->stop))
            pthread_cond_wait(&a->cv, &a->mu);
        pthread_mutex_unlock(&a->mu);
        return NULL;
    }
    rw_spec s;
    if (rw_spec_parse(yaml, strlen(yaml), name, "", &s, err, sizeof err) != 0) {
        json_t *f = job_msg(&r, "failed");
        json_object_set_new(f, "error", json_string(err));
        return f;
    }
    json_t *th = json_object_get(m, "threads");
    if (s.threads == 0 && json_integer_value(th) > 0)
        s.threads = (int)json_integer_value(th); /* share the machine with other slots */
    if (world > 1) {
        char line[160];
        snprintf(line, sizeof line, "world size %d: data-parallel training is not implemented yet; rank 0 trains alone", world);
        hook_log(&r, line);
    }
    kb_backend *be = make_backend(a->backend, s.threads, err, sizeof err);
    rw_train_result res;
    memset(&res, 0, sizeof res);
    int rc = -1;
    if (be) {
        rw_train_hooks hooks = {.ud = &r, .on_step = hook_step, .on_epoch = hook_epoch,
                                .should_stop = hook_stop, .on_log = hook_log};
        rw_train_opts opts = {.out_dir = json_string_value(json_object_get(m, "out_dir")),
                              .resume = json_is_true(json_object_get(m, "resume"))};
        rc = rw_train(&s, be, &opts, &hooks, &res, err, sizeof err);
        kb_destroy(be);
    }
    if (rc != 0) {
        json_t *f = job_msg(&r, "failed");
        json_t *e = json_string(err);
        json_object_set_new(f, "error", e ? e : json_string("training failed"));
        return f;
    }
    if (res.stopped)
        return job_msg(&r, "stopped");
    {
        json_t *d = job_msg(&r, "done");
        put_metrics(d, &res.last);
        json_object_set_new(d, "linear_acc", rw_json_num(res.linear_acc));
        json_object_set_new(d, "align_last10", rw_json_num(res.align_last10));
        json_object_set_new(d, "uniform_last10", rw_json_num(res.uniform_last10));
        return d;
    }
}

/* ------------------------------------------------------------------------ */
/* Connecting */

static int connect_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "%s: path too long", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int connect_tcp(const char *hostport, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || (size_t)(colon - hostport) >= sizeof host) {
        snprintf(err, errlen, "--tcp %s: expected HOST:PORT", hostport);
        return -1;
    }
    snprintf(host, sizeof host, "%.*s", (int)(colon - hostport), hostport);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", hostport, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "%s: cannot connect", hostport);
    return fd;
}

int rw_agent_main(int argc, char **argv)
{
    const char *sock = NULL, *tcp = NULL, *token_file = NULL, *device = "cpu", *backend = "auto";
    long slot = -1, threads = 0;
    double hb = 2;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "runaway-worker serve: %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--socket"))
            sock = v;
        else if (!strcmp(argv[i], "--tcp"))
            tcp = v;
        else if (!strcmp(argv[i], "--token-file"))
            token_file = v;
        else if (!strcmp(argv[i], "--device"))
            device = v;
        else if (!strcmp(argv[i], "--backend"))
            backend = v;
        else if (!strcmp(argv[i], "--slot"))
            slot = strtol(v, NULL, 10);
        else if (!strcmp(argv[i], "--threads"))
            threads = strtol(v, NULL, 10);
        else if (!strcmp(argv[i], "--heartbeat"))
            hb = strtod(v, NULL);
        else {
            fprintf(stderr, "runaway-worker serve: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (!sock == !tcp || hb <= 0 || hb > 60 || threads < 0 || threads > 1024) {
        fprintf(stderr, "usage: runaway-worker serve (--socket PATH | --tcp HOST:PORT --token-file F)\n"
                        "         [--slot N] [--device NAME] [--backend auto|cpu|cuda] [--threads N]\n"
                        "         [--heartbeat SECONDS]\n");
        return 2;
    }
    /* spawned by the daemon for a slot: die with it rather than linger */
    if (slot >= 0)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    char err[1024];
    char token[300] = "";
    if (token_file) {
        FILE *f = fopen(token_file, "r");
        if (!f || !fgets(token, sizeof token, f)) {
            fprintf(stderr, "runaway-worker: %s: cannot read the token\n", token_file);
            if (f)
                fclose(f);
            return 1;
        }
        fclose(f);
        token[strcspn(token, "\r\n")] = '\0';
    }
    int fd = sock ? connect_unix(sock, err, sizeof err) : connect_tcp(tcp, err, sizeof err);
    if (fd < 0) {
        fprintf(stderr, "runaway-worker: cannot reach runawayd: %s\n", err);
        return 1;
    }
    agent a = {.fd = fd, .heartbeat_s = hb, .threads = (int)threads, .backend = backend};
    pthread_mutex_init(&a.wmu, NULL);
    pthread_mutex_init(&a.mu, NULL);
    pthread_cond_init(&a.cv, NULL);

    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    json_t *h = rw_msg_new("hello", 1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("worker"));
    json_object_set_new(h, "host", json_string(host));
    json_object_set_new(h, "device", json_string(device));
    json_object_set_new(h, "backend", json_string(backend));
    json_object_set_new(h, "pid", json_integer(getpid()));
    if (slot >= 0)
        json_object_set_new(h, "slot", json_integer(slot));
    if (token[0])
        json_object_set_new(h, "token", json_string(token));
    rw_frame_reader_init(&a.r, RW_FRAME_MAX);
    json_t *reply = NULL;
    int rc = rw_frame_send_fd(fd, h);
    json_decref(h);
    if (rc == 0)
        rc = rw_frame_recv_fd(fd, &a.r, &reply, 30000, err, sizeof err) == 1 ? 0 : -1;
    const char *rt = reply ? json_string_value(json_object_get(reply, "type")) : NULL;
    if (rc != 0 || !rt || strcmp(rt, "ok") != 0) {
        fprintf(stderr, "runaway-worker: hello refused: %s\n",
                reply ? json_string_value(json_object_get(reply, "message")) : err);
        json_decref(reply);
        rw_frame_reader_free(&a.r);
        close(fd);
        return 1;
    }
    json_decref(reply);
    fprintf(stderr, "runaway-worker: connected (slot %ld, device %s)\n", slot, device);

    pthread_t io;
    pthread_create(&io, NULL, io_main, &a);
    for (;;) {
        pthread_mutex_lock(&a.mu);
        while (!a.pending && !atomic_load(&a.stop))
            pthread_cond_wait(&a.cv, &a.mu);
        json_t *m = a.pending;
        a.pending = NULL;
        if (m) {
            a.job = json_integer_value(json_object_get(m, "job"));
            a.attempt = json_integer_value(json_object_get(m, "attempt"));
            atomic_store(&a.cancel, 0);
        }
        pthread_mutex_unlock(&a.mu);
        if (!m)
            break;
        json_t *report = atomic_load(&a.stop) ? NULL : run_assignment(&a, m);
        json_decref(m);
        pthread_mutex_lock(&a.mu);
        a.job = a.attempt = 0;
        pthread_mutex_unlock(&a.mu);
        send_msg(&a, report);
    }
    /* stop: wake the I/O thread (its poll sees the shutdown) and go */
    shutdown(fd, SHUT_RDWR);
    pthread_join(io, NULL);
    rw_frame_reader_free(&a.r);
    close(fd);
    return 0;
}
