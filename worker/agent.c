/* runaway-worker serve: the protocol side of a worker.
 *
 * Threads: the main thread trains (rw_train, blocking, for minutes); an I/O
 * thread reads the daemon's frames (assign, cancel_job, stop) and sends a
 * heartbeat every period, so a long step never silences the worker; it is
 * also the watchdog of the training thread, whose silence past
 * --stall-timeout means a hang (the job is reported failed and the process
 * starts afresh). Writes
 * from both threads go through one mutex; the training hooks only send
 * frames and read flags. Losing the daemon stops training at the next step
 * (the checkpoint is written) and ends the process: the daemon restarts
 * workers, not the other way round. */
#include "worker/agent.h"
#include "worker/agent_internal.h"

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
#include "kernels/collective.h"
#include "proto/frame.h"
#include "proto/msg.h"
#include "proto/spec.h"
#include "worker/connect.h"
#include "worker/train.h"

static void restart_self(agent *a);

static void *io_main(void *arg)
{
    agent *a = arg;
    double next_hb = rw_agent_mono() + a->heartbeat_s;
    while (!atomic_load(&a->lost)) {
        /* A rank told to drop a multi-rank attempt stops at its next step,
         * or fails in its next collective when a peer died. Gloo does not
         * always see a dead peer while it waits to send, though (it would
         * wait out the collective timeout): past the grace period, report
         * the failure and start afresh, so the job's next attempt does not
         * wait on this process. */
        pthread_mutex_lock(&a->mu);
        int stuck = a->job && a->cancelled_at && rw_agent_mono() - a->cancelled_at > a->cancel_grace_s;
        int stalled = !stuck && a->job && a->stall_s > 0 && rw_agent_mono() - a->progress_at > a->stall_s;
        long long sj = a->job, sa = a->attempt;
        int sr = a->rank;
        double ca = a->cancelled_at;
        pthread_mutex_unlock(&a->mu);
        if (stuck || stalled) {
            /* The training thread cannot be interrupted where it hangs:
             * report, then start afresh (the daemon requeues or fails the
             * job by its retry rules). */
            char e[256];
            if (stuck)
                snprintf(e, sizeof e, "rank %d: still training %.0f s after cancel_job (blocked in "
                         "a collective with a lost peer); the worker restarts", sr,
                         a->cancel_grace_s);
            else
                snprintf(e, sizeof e, "no training progress for %.0f s (a hung GPU or library "
                         "call, or a blocked data read); the worker restarts", a->stall_s);
            fprintf(stderr, "runaway-worker: j%lld: %s\n", sj, e);
            json_t *f = rw_msg_new("failed", -1);
            json_object_set_new(f, "job", json_integer(sj));
            json_object_set_new(f, "attempt", json_integer(sa));
            json_object_set_new(f, "error", json_string(e));
            /* a hang (a GPU, a library, a file system) need not recur */
            json_object_set_new(f, "retry", json_true());
            json_object_set_new(f, "restart", json_true()); /* no new work for this process */
            rw_agent_send(a, f);
            restart_self(a);
        }
        int wait = (int)((next_hb - rw_agent_mono()) * 1000);
        if (ca && wait > 200)
            wait = 200;
        if (sj && wait > 500) /* the watchdog looks twice a second */
            wait = 500;
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
            /* an assignment not yet started counts: the daemon must not take
             * this worker for idle while it holds one */
            long long hj = a->job ? a->job
                                  : a->pending ? json_integer_value(json_object_get(a->pending, "job"))
                                               : 0;
            if (hj)
                json_object_set_new(hb, "job", json_integer(hj));
            pthread_mutex_unlock(&a->mu);
            rw_agent_send(a, hb);
            next_hb = rw_agent_mono() + a->heartbeat_s;
            continue;
        }
        const char *type, *code;
        /* the reply to the kv request in flight (ok, error or kv_value) */
        const char *mt = json_string_value(json_object_get(m, "type"));
        pthread_mutex_lock(&a->mu);
        int is_kv = a->kv_id && rw_msg_id(m) == a->kv_id && mt &&
                    (!strcmp(mt, "ok") || !strcmp(mt, "error") || !strcmp(mt, "kv_value"));
        if (is_kv) {
            json_decref(a->kv_reply);
            a->kv_reply = json_incref(m);
            pthread_cond_broadcast(&a->cv);
        }
        pthread_mutex_unlock(&a->mu);
        if (is_kv) {
            json_decref(m);
            continue;
        }
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
            json_int_t j = json_integer_value(json_object_get(m, "job"));
            if (j == a->job) {
                atomic_store(&a->cancel, 1);
                if (a->world > 1 && !a->cancelled_at)
                    a->cancelled_at = rw_agent_mono();
            } else if (a->pending && json_integer_value(json_object_get(a->pending, "job")) == j) {
                /* cancelled before it started: say so, the daemon waits for it */
                json_t *st = rw_msg_new("stopped", -1);
                json_object_set_new(st, "job", json_integer(j));
                json_object_set(st, "attempt", json_object_get(a->pending, "attempt"));
                json_decref(a->pending);
                a->pending = NULL;
                pthread_mutex_unlock(&a->mu);
                rw_agent_send(a, st);
                pthread_mutex_lock(&a->mu);
            }
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
    long progress_calls;
    long stall_at; /* tests: hang the training thread at this progress call (0: never) */
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
    json_object_set_new(m, "lr", rw_json_num(x->lr));
    json_object_set_new(m, "rank", rw_json_num(x->rank));
    json_object_set_new(m, "linear", rw_json_num(x->linear));
    json_object_set_new(m, "w_cos_i", rw_json_num(x->w_cos_i));
    json_object_set_new(m, "w_asym", rw_json_num(x->w_asym));
}

/* replay: a report made again from the checkpoint (rw_train_opts.replay) */
static void send_metric(run_ctx *r, const rw_metrics *x, const char *kind, int replay)
{
    json_t *m = job_msg(r, "metric");
    json_object_set_new(m, "kind", json_string(kind));
    if (replay)
        json_object_set_new(m, "replay", json_true());
    put_metrics(m, x);
    rw_agent_send(r->a, m);
}

static void hook_progress(void *ud)
{
    run_ctx *r = ud;
    pthread_mutex_lock(&r->a->mu);
    r->a->progress_at = rw_agent_mono();
    pthread_mutex_unlock(&r->a->mu);
    if (r->stall_at && ++r->progress_calls == r->stall_at)
        for (;;)
            pause(); /* a hang only the watchdog ends */
}

/* Tests of the watchdog: RW_TEST_STALL=NAME:N hangs the training thread of
 * the job named NAME (e.g. grid/variant/seed0) at its Nth sign of progress,
 * in its first attempt only (a hang that the retry does not meet). */
static long test_stall_at(const char *job_name)
{
    const char *e = getenv("RW_TEST_STALL");
    const char *colon = e ? strrchr(e, ':') : NULL;
    if (!colon || !job_name || strlen(job_name) != (size_t)(colon - e) ||
        strncmp(e, job_name, (size_t)(colon - e)) != 0)
        return 0;
    return strtol(colon + 1, NULL, 10);
}

static void hook_step(void *ud, const rw_metrics *m)
{
    hook_progress(ud);
    send_metric(ud, m, "step", 0);
}

static void hook_epoch(void *ud, const rw_metrics *m)
{
    hook_progress(ud);
    send_metric(ud, m, "epoch", 0);
}

static void hook_replay(void *ud, const rw_metrics *m, const char *kind)
{
    send_metric(ud, m, kind, 1);
}

/* The collapse alarm: the daemon makes it an event (watch, the log,
 * TensorBoard, --notify); a stop's result follows in `done`. */
static void hook_collapse(void *ud, const rw_collapse_alarm *c)
{
    json_t *m = job_msg(ud, "collapse");
    json_object_set_new(m, "epoch", json_integer(c->epoch));
    json_object_set_new(m, "step", json_integer(c->step));
    json_object_set_new(m, "action", json_string(c->stop ? "stop" : "warn"));
    json_object_set_new(m, "why", json_string(c->why));
    json_object_set_new(m, "rank", rw_json_num(c->rank));
    json_object_set_new(m, "rank_peak", rw_json_num(c->rank_peak));
    json_object_set_new(m, "uniform", rw_json_num(c->uniform));
    json_object_set_new(m, "collapse", rw_json_num(c->collapse));
    rw_agent_send(((run_ctx *)ud)->a, m);
}

static int hook_stop(void *ud)
{
    run_ctx *r = ud;
    return atomic_load(&r->a->cancel) || atomic_load(&r->a->stop) || atomic_load(&r->a->lost);
}

static void hook_log(void *ud, const char *line)
{
    run_ctx *r = ud;
    hook_progress(ud);
    printf("[j%lld] %s\n", r->job, line);
    fflush(stdout);
    json_t *m = job_msg(r, "log");
    char buf[RW_LINE_MAX];
    snprintf(buf, sizeof buf, "%s", line);
    json_t *s = json_string(buf);
    json_object_set_new(m, "line", s ? s : json_string("(line not valid UTF-8)"));
    rw_agent_send(r->a, m);
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
                 json_integer_value(json_object_get(m, "attempt")), 0, 0};
    int rank = (int)json_integer_value(json_object_get(m, "rank"));
    int world = (int)json_integer_value(json_object_get(m, "world"));
    const char *yaml = json_string_value(json_object_get(m, "spec"));
    const char *name = json_string_value(json_object_get(m, "name"));
    char err[1024] = "";
    rw_spec s;
    if (rw_spec_parse(yaml, strlen(yaml), name, "", &s, err, sizeof err) != 0) {
        json_t *f = job_msg(&r, "failed");
        json_object_set_new(f, "error", json_string(err));
        return f;
    }
    if (!json_is_true(json_object_get(m, "resume")))
        r.stall_at = test_stall_at(name);
    /* the spec's threads, else this host's share: serve --threads, else
     * (the daemon's own slots) the daemon's split of its cores among them;
     * a worker of another host without --threads takes all of its own */
    json_t *th = json_object_get(m, "threads");
    if (s.threads == 0 && a->threads > 0)
        s.threads = a->threads;
    else if (s.threads == 0 && !a->remote && json_integer_value(th) > 0)
        s.threads = (int)json_integer_value(th);
    kb_backend *be = make_backend(a->backend, s.threads, err, sizeof err);
    /* CUDA workers talk NCCL (this process sees its one GPU as device 0:
     * the daemon sets CUDA_VISIBLE_DEVICES per slot), CPU workers Gloo */
    int nccl = be && !strcmp(be->name, "cuda");
    if (be && world > 1 && rank == 0) {
        char line[320];
        snprintf(line, sizeof line, "world size %d: data-parallel over %s, global batch %d "
                 "(%d per rank)%s", world, nccl ? "NCCL" : "Gloo", s.optim.batch_size,
                 s.optim.batch_size / world, s.sync_bn ? ", synchronized BatchNorm" : "");
        hook_log(&r, line);
    }
    rw_train_result res;
    memset(&res, 0, sizeof res);
    int rc = -1;
    /* Whether another attempt may succeed: a failed rendezvous or a broken
     * collective (a peer died, the network failed) yes; the job's own
     * failures (its data, its weights, a loss that is not finite) would
     * repeat. */
    int retry = 0;
    kb_comm *comm = NULL;
    if (be && world > 1) {
        /* rendezvous through the daemon's store of this attempt: fresh per
         * attempt, so no rank ever meets a dead attempt's addresses */
        rw_agent_kv kc = {a, r.job, r.attempt};
        kb_store store = {.ud = &kc, .set = rw_agent_kv_set, .get = rw_agent_kv_get};
        comm = nccl ? kb_nccl_create(&store, rank, world, 0, a->coll_timeout_ms, err, sizeof err)
                    : kb_gloo_create(&store, rank, world, a->host, a->coll_timeout_ms, err,
                                     sizeof err);
        /* Gloo's calls on a thread of their own: gradient buckets leave
         * while the backward pass runs (without it, the step waits) */
        kb_comm *q = comm && !nccl ? kb_comm_queued(comm, err, sizeof err) : NULL;
        comm = q ? q : comm;
        fprintf(stderr, "runaway-worker: j%lld attempt %lld: rank %d of %d (%s, %s): %s\n", r.job,
                r.attempt, rank, world, nccl ? "nccl" : "gloo", a->host, comm ? "connected" : err);
        if (!comm && rw_agent_aborted(a)) {
            kb_destroy(be);
            return job_msg(&r, "stopped");
        }
        retry = !comm;
    }
    if (be && (world == 1 || comm)) {
        rw_train_hooks hooks = {.ud = &r, .on_step = hook_step, .on_epoch = hook_epoch,
                                .should_stop = hook_stop, .on_log = hook_log,
                                .on_progress = hook_progress,
                                .on_replay = hook_replay, .on_collapse = hook_collapse};
        /* bounded by the message's validation */
        json_t *se = json_object_get(m, "epochs_stored"), *ss = json_object_get(m, "steps_stored");
        rw_train_opts opts = {.out_dir = json_string_value(json_object_get(m, "out_dir")),
                              .resume = json_is_true(json_object_get(m, "resume")),
                              .replay = se && ss,
                              .replay_epochs_after = (int)json_integer_value(se),
                              .replay_steps_after = (long)json_integer_value(ss),
                              .comm = comm, .check_every = 100, .test_perturb_rank = -1};
        rc = rw_train(&s, be, &opts, &hooks, &res, err, sizeof err);
        if (rc != 0 && comm)
            fprintf(stderr, "runaway-worker: j%lld rank %d: %s\n", r.job, rank, err);
        retry = rc != 0 && comm && comm->broken;
    }
    kb_comm_destroy(comm);
    if (be)
        kb_destroy(be);
    if (rc != 0) {
        json_t *f = job_msg(&r, "failed");
        json_t *e = json_string(err);
        json_object_set_new(f, "error", e ? e : json_string("training failed"));
        if (retry)
            json_object_set_new(f, "retry", json_true());
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
        if (res.collapsed.epoch > 0) { /* the alarm ended it: the job is collapsed */
            json_object_set_new(d, "collapsed_epoch", json_integer(res.collapsed.epoch));
            json_object_set_new(d, "collapsed", json_string(res.collapsed.why));
            json_object_set_new(d, "rank_peak", rw_json_num(res.collapsed.rank_peak));
        }
        return d;
    }
}

/* ------------------------------------------------------------------------ */
/* Connecting */

/* A fresh process image with the same arguments: every thread (Gloo's
 * too) and socket goes; the new one says hello again for its slot. Works
 * for remote workers too, which nobody else would restart. */
static void restart_self(agent *a)
{
    /* let the daemon drop this connection first, so that the new process's
     * hello finds the slot free: end our side, wait for its close */
    shutdown(a->fd, SHUT_WR);
    char buf[4096];
    for (double t0 = rw_agent_mono(); rw_agent_mono() - t0 < 3;) {
        struct pollfd p = {.fd = a->fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0 && read(a->fd, buf, sizeof buf) <= 0)
            break;
    }
    rw_exec_serve(a->argc, a->argv);
}


/* A batch scheduler's notice (Slurm: SIGTERM at a time limit or
 * preemption, SIGUSR1 with --signal=B:USR1@120): the job checkpoints at
 * its next step, is reported preempted, and the process exits. The signals
 * are blocked in every thread and taken here, where a mutex may be held. */
static void *signal_main(void *arg)
{
    agent *a = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    int sig = 0;
    if (sigwait(&set, &sig) != 0)
        return NULL;
    fprintf(stderr, "runaway-worker: %s: checkpointing at the next step, then exiting\n",
            sig == SIGTERM ? "SIGTERM" : "SIGUSR1");
    pthread_mutex_lock(&a->mu);
    atomic_store(&a->preempted, sig);
    atomic_store(&a->stop, 1);
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

int rw_agent_main(int argc, char **argv)
{
    const char *sock = NULL, *tcp = NULL, *token_file = NULL, *device = "cpu", *backend = "auto";
    const char *host_opt = NULL;
    double coll_timeout = 120, stall = 1800, reconnect = 0;
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
        else if (!strcmp(argv[i], "--host"))
            host_opt = v;
        else if (!strcmp(argv[i], "--collective-timeout"))
            coll_timeout = strtod(v, NULL);
        else if (!strcmp(argv[i], "--stall-timeout"))
            stall = strtod(v, NULL);
        else if (!strcmp(argv[i], "--reconnect"))
            reconnect = strtod(v, NULL);
        else {
            fprintf(stderr, "runaway-worker serve: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (!sock == !tcp || hb <= 0 || hb > 60 || threads < 0 || threads > 1024 ||
        !(coll_timeout >= 1 && coll_timeout <= 3600) || !(stall == 0 || (stall >= 1 && stall <= 1e6)) ||
        (host_opt && (!*host_opt || strlen(host_opt) > 255)) ||
        !(reconnect >= 0 && reconnect <= 1e6) || (reconnect > 0 && (slot >= 0 || !tcp))) {
        fprintf(stderr, "usage: runaway-worker serve (--socket PATH | --tcp HOST:PORT --token-file F)\n"
                        "         [--slot N] [--device NAME] [--backend auto|cpu|cuda] [--threads N]\n"
                        "         [--heartbeat SECONDS] [--host ADDR] [--collective-timeout SECONDS]\n"
                        "         [--stall-timeout SECONDS (0: never)]\n"
                        "         [--reconnect SECONDS (with --tcp, no --slot)]\n");
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
        /* the daemon refuses such a token too: say so here, before connecting */
        char why[512];
        if (rw_token_check(token, why, sizeof why) != 0) {
            fprintf(stderr, "runaway-worker: %s: %s\n", token_file, why);
            return 1;
        }
    }
    int fd = rw_connect_daemon(sock, tcp, reconnect, err, sizeof err);
    if (fd < 0) {
        fprintf(stderr, "runaway-worker: cannot reach runawayd: %s\n", err);
        return 1;
    }
    /* where data-parallel peers reach us: --host, else the local address of
     * our TCP connection to the daemon (the interface that routes there),
     * else (Unix socket: same host) loopback */
    char addr[256] = "127.0.0.1";
    if (host_opt) {
        snprintf(addr, sizeof addr, "%s", host_opt);
    } else if (tcp) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
            getnameinfo((struct sockaddr *)&ss, sl, addr, sizeof addr, NULL, 0, NI_NUMERICHOST) != 0)
            snprintf(addr, sizeof addr, "127.0.0.1");
    }
    agent a = {.fd = fd, .heartbeat_s = hb, .threads = (int)threads, .remote = slot < 0,
               .backend = backend,
               .host = addr, .coll_timeout_ms = (int)(coll_timeout * 1000), .kv_next = 1000,
               .world = 1, .cancel_grace_s = 5, .stall_s = stall, .argv = argv, .argc = argc};
    pthread_mutex_init(&a.wmu, NULL);
    pthread_mutex_init(&a.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* kv waits use monotonic deadlines */
    pthread_cond_init(&a.cv, &ca);
    pthread_condattr_destroy(&ca);

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
    snprintf(err, sizeof err, "%s", rc == 0 ? "no reply to hello within 30 s"
                                            : "cannot send hello: the connection was closed");
    if (rc == 0) {
        int got = rw_frame_recv_fd(fd, &a.r, &reply, 30000, err, sizeof err);
        if (got == 0)
            snprintf(err, sizeof err, "no reply to hello within 30 s");
        rc = got == 1 ? 0 : -1;
    }
    const char *rt = reply ? json_string_value(json_object_get(reply, "type")) : NULL;
    if (rc != 0 && !reply && reconnect > 0) {
        /* no answer (a partition, a daemon starting): not a refusal */
        fprintf(stderr, "runaway-worker: %s; trying again\n", err);
        close(fd);
        sleep(1);
        rw_exec_serve(argc, argv);
    }
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

    /* a worker of another host (no --slot: srun's, or by hand) stops for
     * its scheduler; the daemon's own are killed with the daemon */
    if (slot < 0) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread made from here on */
        pthread_t sigt;
        if (pthread_create(&sigt, NULL, signal_main, &a) == 0)
            pthread_detach(sigt);
    }
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
            a.rank = (int)json_integer_value(json_object_get(m, "rank"));
            a.world = (int)json_integer_value(json_object_get(m, "world"));
            a.cancelled_at = 0;
            a.progress_at = rw_agent_mono();
            atomic_store(&a.cancel, 0);
        }
        pthread_mutex_unlock(&a.mu);
        if (!m)
            break;
        json_t *report = atomic_load(&a.stop) ? NULL : run_assignment(&a, m);
        json_decref(m);
        pthread_mutex_lock(&a.mu);
        a.job = a.attempt = 0;
        a.world = 1;
        a.cancelled_at = 0;
        pthread_mutex_unlock(&a.mu);
        int sig = atomic_load(&a.preempted);
        if (report && sig &&
            !strcmp(json_string_value(json_object_get(report, "type")), "stopped"))
            json_object_set_new(report, "preempted",
                                json_string(sig == SIGTERM ? "SIGTERM" : "SIGUSR1"));
        rw_agent_send(&a, report);
    }
    /* stop: wake the I/O thread (its poll sees the shutdown) and go */
    if (reconnect > 0 && atomic_load(&a.lost) && !atomic_load(&a.preempted)) {
        /* the daemon is gone, not done with us: a fresh process waits for it */
        fprintf(stderr, "runaway-worker: lost runawayd; reconnecting for up to %g s\n",
                reconnect);
        restart_self(&a);
    }
    shutdown(fd, SHUT_RDWR);
    pthread_join(io, NULL);
    json_decref(a.kv_reply);
    rw_frame_reader_free(&a.r);
    close(fd);
    return 0;
}
