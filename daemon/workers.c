/* Worker supervision and scheduling.
 *
 * One runaway-worker process per slot: per GPU (times slots_per_gpu) or a
 * number of CPU slots. A slot's process connects back over the Unix socket
 * and says hello with its slot number. A crashed process is restarted with
 * exponential backoff; one whose connection goes silent for longer than the
 * heartbeat timeout is killed (then restarted). Either way its job is
 * requeued, up to max_retries, and resumes from the checkpoint in its run
 * directory; so is a job whose worker reports a failure as worth another
 * attempt (retry: a hung training thread, a broken collective), while the
 * job's own failures (bad data, a loss that is not finite) end it. The scheduler is FIFO within priority and strict: the head job
 * waits for its N devices rather than being overtaken, so N-device jobs
 * cannot starve. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/eta.h"
#include "daemon/scheduler.h"
#include "daemon/rd.h"
#include "proto/msg.h"
#include "proto/spec.h"

extern char **environ;

#define BACKOFF_MIN_S 1.0
#define BACKOFF_MAX_S 60.0
#define STABLE_S 60.0 /* a worker up this long has its backoff reset */

static void spawn_worker(rd_worker *w);
static void drain_end(rd_worker *w);

static rd_daemon *daemon_of(rd_worker *w)
{
    return (rd_daemon *)((char *)(w - w->slot) - offsetof(rd_daemon, workers));
}

/* ------------------------------------------------------------------------ */
/* Processes */

static void restart_cb(uv_timer_t *t)
{
    rd_worker *w = t->data;
    if (!daemon_of(w)->shutting_down)
        spawn_worker(w);
}

static void proc_close_cb(uv_handle_t *h)
{
    rd_worker *w = h->data;
    rd_daemon *d = daemon_of(w);
    w->proc_alive = 0;
    rd_shutdown_check(d);
}

static void exit_cb(uv_process_t *p, int64_t status, int sig)
{
    rd_worker *w = p->data;
    rd_daemon *d = daemon_of(w);
    char ev[160];
    snprintf(ev, sizeof ev, "worker %d (%s, pid %d) exited with status %lld%s%s", w->slot,
             w->device, p->pid, (long long)status, sig ? ", signal " : "", sig ? strsignal(sig) : "");
    rd_log("%s", ev);
    rd_db_event(d, 0, "worker", ev);
    /* its connection may outlive it by a moment; the job is requeued there */
    if (w->conn)
        rd_conn_close(w->conn);
    uv_close((uv_handle_t *)p, proc_close_cb);
    if (d->shutting_down)
        return;
    double up = rd_mono() - w->spawned_at;
    if (up > STABLE_S)
        w->backoff_s = BACKOFF_MIN_S;
    rd_log("restarting worker %d in %.0f s", w->slot, w->backoff_s);
    uv_timer_start(&w->restart_timer, restart_cb, (uint64_t)(w->backoff_s * 1000), 0);
    w->backoff_s = fmin(w->backoff_s * 2, BACKOFF_MAX_S);
}

static void spawn_worker(rd_worker *w)
{
    rd_daemon *d = daemon_of(w);
    char slot[16], threads[16], hb[32], stall[32], log[PATH_MAX + 64];
    snprintf(slot, sizeof slot, "%d", w->slot);
    snprintf(threads, sizeof threads, "%d", d->threads_per_worker);
    snprintf(hb, sizeof hb, "%g", d->heartbeat_s);
    snprintf(stall, sizeof stall, "%g", d->stall_timeout_s);
    char *args[] = {d->worker_path, "serve", "--socket", d->sock_path, "--slot", slot,
                    "--device", w->device, "--threads", threads, "--heartbeat", hb,
                    "--stall-timeout", stall, NULL};
    /* environment: ours, plus the GPU this slot owns */
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    char cvd[64];
    size_t k = 0;
    for (size_t i = 0; env && i < n; i++)
        if (strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21) != 0 || strncmp(w->device, "cuda", 4))
            env[k++] = environ[i];
    if (env && !strncmp(w->device, "cuda", 4)) {
        snprintf(cvd, sizeof cvd, "CUDA_VISIBLE_DEVICES=%d", w->device_index);
        env[k++] = cvd;
    }
    snprintf(log, sizeof log, "%s/workers/slot%d.log", d->state_dir, w->slot);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = fd >= 0 ? UV_INHERIT_FD : UV_IGNORE, .data.fd = fd},
        {.flags = fd >= 0 ? UV_INHERIT_FD : UV_IGNORE, .data.fd = fd},
    };
    uv_process_options_t o = {
        .exit_cb = exit_cb, .file = d->worker_path, .args = args, .env = env,
        .stdio_count = 3, .stdio = stdio,
    };
    memset(&w->proc, 0, sizeof w->proc);
    w->proc.data = w;
    int rc = uv_spawn(d->loop, &w->proc, &o);
    free(env);
    if (fd >= 0)
        close(fd);
    w->spawned_at = rd_mono();
    w->last_seen = rd_mono();
    if (rc != 0) {
        rd_log("cannot start %s: %s; retrying in %.0f s", d->worker_path, uv_strerror(rc),
               w->backoff_s);
        uv_close((uv_handle_t *)&w->proc, NULL); /* uv_spawn initialized it */
        uv_timer_start(&w->restart_timer, restart_cb, (uint64_t)(w->backoff_s * 1000), 0);
        w->backoff_s = fmin(w->backoff_s * 2, BACKOFF_MAX_S);
        return;
    }
    w->proc_alive = 1;
    w->pid = w->proc.pid;
    w->restarts++;
    rd_log("worker %d (%s) started, pid %d", w->slot, w->device, w->proc.pid);
}

int rd_workers_start(rd_daemon *d, char *err, size_t errlen)
{
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/workers", d->state_dir);
    mkdir(dir, 0700);
    snprintf(dir, sizeof dir, "%s/runs", d->state_dir);
    mkdir(dir, 0700);
    if (access(d->worker_path, X_OK) != 0) {
        snprintf(err, errlen, "worker program %s: %s (give --worker PATH)", d->worker_path,
                 strerror(errno));
        return -1;
    }
    int n = d->gpus > 0 ? d->gpus * d->slots_per_gpu : d->cpu_slots;
    if (n > RD_WORKERS_MAX / 2)
        n = RD_WORKERS_MAX / 2; /* the rest is for remote workers */
    for (int i = 0; i < n; i++) {
        rd_worker *w = &d->workers[i];
        w->slot = i;
        if (d->gpus > 0) {
            w->device_index = i / d->slots_per_gpu;
            snprintf(w->device, sizeof w->device, "cuda:%d", w->device_index);
        } else {
            w->device_index = i;
            snprintf(w->device, sizeof w->device, "cpu%d", i);
        }
        w->backoff_s = BACKOFF_MIN_S;
        uv_timer_init(d->loop, &w->restart_timer);
        w->restart_timer.data = w;
    }
    d->nworkers = n;
    for (int i = 0; i < n; i++)
        spawn_worker(&d->workers[i]);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Connections */

int rd_worker_hello(rd_conn *c, json_t *m, char *err, size_t errlen)
{
    rd_daemon *d = c->d;
    json_t *sv = json_object_get(m, "slot");
    rd_worker *w = NULL;
    if (sv && !c->is_tcp) {
        json_int_t s = json_integer_value(sv);
        if (s < 0 || s >= d->nworkers || d->workers[s].remote) {
            snprintf(err, errlen, "hello: slot %lld is not one of this daemon's slots", (long long)s);
            return -1;
        }
        w = &d->workers[s];
        if (w->conn) {
            snprintf(err, errlen, "hello: slot %lld already has a connected worker", (long long)s);
            return -1;
        }
    } else {
        /* a worker started elsewhere (another host): a new remote slot */
        if (d->nworkers == RD_WORKERS_MAX) {
            snprintf(err, errlen, "hello: too many workers");
            return -1;
        }
        w = &d->workers[d->nworkers];
        memset(w, 0, sizeof *w);
        w->slot = d->nworkers++;
        w->remote = 1;
        w->device_index = 1000 + w->slot;
        const char *dev = json_string_value(json_object_get(m, "device"));
        snprintf(w->device, sizeof w->device, "%s", dev ? dev : "remote");
    }
    w->dead = 0;
    w->conn = c;
    c->worker = w;
    w->last_seen = rd_mono();
    w->job = w->attempt = 0;
    drain_end(w);
    w->stopping = 0;
    const char *host = json_string_value(json_object_get(m, "host"));
    const char *be = json_string_value(json_object_get(m, "backend"));
    snprintf(w->host, sizeof w->host, "%s", host ? host : "?");
    snprintf(w->backend, sizeof w->backend, "%s", be ? be : "?");
    if (json_object_get(m, "pid"))
        w->pid = json_integer_value(json_object_get(m, "pid"));
    char ev[400];
    snprintf(ev, sizeof ev, "worker %d connected: host %s, device %s, backend %s, pid %lld", w->slot,
             w->host, w->device, w->backend, w->pid);
    rd_log("%s", ev);
    rd_db_event(d, 0, "worker", ev);
    if (d->shutting_down)
        rd_conn_send(c, rw_msg_new("stop", -1));
    return 0;
}

static void set_attempt(rd_daemon *d, int64_t attempt, const char *outcome, const char *error)
{
    sqlite3_stmt *st = rd_db_prep(d, "UPDATE attempts SET outcome=?, ended=?, error=? WHERE id=? "
                                     "AND outcome='running'");
    if (!st)
        return;
    sqlite3_bind_text(st, 1, outcome, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 2, rd_now());
    if (error)
        sqlite3_bind_text(st, 3, error, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, attempt);
    rd_db_write(d, st, 0);
}

/* The job's new state; `why` (or NULL) tells its watchers what moved it. */
static void set_job_state_why(rd_daemon *d, int64_t job, const char *state, const char *error,
                              const char *why)
{
    sqlite3_stmt *st = rd_db_prep(d, "UPDATE jobs SET state=?, error=?, finished=CASE WHEN ? IN "
                                     "('done','failed','cancelled') THEN ? ELSE NULL END WHERE id=?");
    if (!st)
        return;
    sqlite3_bind_text(st, 1, state, -1, SQLITE_TRANSIENT);
    if (error)
        sqlite3_bind_text(st, 2, error, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_text(st, 3, state, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 4, rd_now());
    sqlite3_bind_int64(st, 5, job);
    rd_db_write(d, st, 0);
    char ev[1200];
    snprintf(ev, sizeof ev, "state %s%s%s", state, error ? ": " : "", error ? error : "");
    rd_db_event(d, job, "state", ev);
    if (rd_db_down(d))
        rd_db_backlog_job(d, job); /* the rows say the old state until written */
    else
        rd_watch_job_state(d, job, why);
}

static void set_job_state(rd_daemon *d, int64_t job, const char *state, const char *error)
{
    set_job_state_why(d, job, state, error, NULL);
}

/* ------------------------------------------------------------------------ */
/* Running attempts and their rendezvous stores */

static rd_run *run_find(rd_daemon *d, int64_t attempt)
{
    for (rd_run *r = d->runs; r; r = r->next)
        if (r->attempt == attempt)
            return r;
    return NULL;
}

static rd_run *run_new(rd_daemon *d, int64_t job, int64_t attempt, int world)
{
    rd_run *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->job = job;
    r->attempt = attempt;
    r->world = world;
    r->t0 = rd_mono();
    r->epoch0 = -1;
    r->pace_s = r->left_s = -1;
    r->next = d->runs;
    d->runs = r;
    return r;
}

/* The worker's drained attempt is over (or forgotten with its process). */
static void drain_end(rd_worker *w)
{
    w->drain_job = w->drain_attempt = 0;
    if (w->drain_run) {
        free(w->drain_run->tb_path);
        free(w->drain_run);
        w->drain_run = NULL;
    }
}

/* Told cancel_job for `attempt`: no new work until it reports the attempt's
 * end. What rank 0 reports until then is still the job's (the epochs its
 * last checkpoint will hold), so it takes over the attempt's TensorBoard
 * file from the run, which ends now. */
static void drain_begin(rd_daemon *d, rd_worker *w, int64_t job, int64_t attempt)
{
    drain_end(w);
    w->drain_job = job;
    w->drain_attempt = attempt;
    rd_run *r = run_find(d, attempt);
    if (w->rank != 0 || !r || !(w->drain_run = calloc(1, sizeof *w->drain_run)))
        return;
    w->drain_run->job = job;
    w->drain_run->attempt = attempt;
    w->drain_run->world = r->world;
    w->drain_run->tb_path = r->tb_path;
    w->drain_run->tb_failed = r->tb_failed;
    w->drain_run->tb_retry = r->tb_retry;
    w->drain_run->tb_skipped = r->tb_skipped;
    r->tb_path = NULL;
}

static void waiter_free(rd_kv_waiter *w)
{
    if (w->c && w->c->kv_waiting > 0)
        w->c->kv_waiting--;
    free(w->key);
    free(w);
}

/* The attempt has ended: its store goes, and whoever still waits on a key
 * hears so (a rank in a rendezvous fails at once instead of timing out). */
static void run_end(rd_daemon *d, int64_t attempt)
{
    for (rd_run **p = &d->runs; *p; p = &(*p)->next) {
        rd_run *r = *p;
        if (r->attempt != attempt)
            continue;
        *p = r->next;
        while (r->waiters) {
            rd_kv_waiter *w = r->waiters;
            r->waiters = w->next;
            char msg[96];
            snprintf(msg, sizeof msg, "kv_get: attempt %lld has ended", (long long)attempt);
            rd_conn_send(w->c, rw_msg_error(w->id, RW_E_STATE, msg));
            waiter_free(w);
        }
        while (r->kv) {
            rd_kv_entry *e = r->kv;
            r->kv = e->next;
            free(e->key);
            free(e->value);
            free(e);
        }
        free(r->tb_path);
        free(r);
        return;
    }
}

void rd_runs_free(rd_daemon *d)
{
    for (int i = 0; i < d->nworkers; i++)
        drain_end(&d->workers[i]);
    while (d->runs)
        run_end(d, d->runs->attempt);
}

/* A closing connection's waiters go without a reply. */
static void kv_purge_conn(rd_daemon *d, rd_conn *c)
{
    for (rd_run *r = d->runs; r; r = r->next) {
        for (rd_kv_waiter **p = &r->waiters; *p;) {
            rd_kv_waiter *w = *p;
            if (w->c == c) {
                *p = w->next;
                waiter_free(w);
            } else {
                p = &w->next;
            }
        }
    }
}

static void kv_tick(rd_daemon *d)
{
    double now = rd_mono();
    for (rd_run *r = d->runs; r; r = r->next) {
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
            waiter_free(w);
        }
    }
}

static void kv_reject(rd_conn *c, long long id, const char *code, const char *msg)
{
    rd_log("worker %d: %s: %s", c->worker ? c->worker->slot : -1, code, msg);
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
static void kv_request(rd_conn *c, const char *type, json_t *m)
{
    rd_daemon *d = c->d;
    rd_worker *w = c->worker;
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
    rd_run *r = w->job && job == w->job && attempt == w->attempt ? run_find(d, w->attempt) : NULL;
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
            waiter_free(q);
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
    if (c->kv_waiting >= RD_KV_WAITERS_PER_CONN) {
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
    c->kv_waiting++;
}

/* ------------------------------------------------------------------------ */
/* The end of an attempt */

/* Frees every worker holding `job`; those other than `except` that are
 * still connected are told cancel_job and drain: no new work until they
 * report that attempt's end. The attempt's store goes. */
static void release_job(rd_daemon *d, int64_t job, int64_t attempt, rd_worker *except)
{
    for (int i = 0; i < d->nworkers; i++) {
        rd_worker *w = &d->workers[i];
        if (w->job != job)
            continue;
        /* shutting down: every worker was told stop, and stops on its own
         * (a rank 0 still writing its checkpoint must not be hurried) */
        if (w != except && w->conn && !d->shutting_down) {
            json_t *m = rw_msg_new("cancel_job", -1);
            json_object_set_new(m, "job", json_integer(job));
            rd_conn_send(w->conn, m);
            drain_begin(d, w, job, w->attempt);
        }
        w->job = w->attempt = 0;
    }
    run_end(d, attempt);
}

/* The attempt cannot go on, but another may (a worker lost; a failure its
 * worker marks retry: a hang, a collective error behind a peer's death):
 * the other ranks are cancelled, the job requeued to resume from rank 0's
 * checkpoint, up to max_retries. */
static void attempt_lost(rd_daemon *d, int64_t job, int64_t attempt, rd_worker *except,
                         const char *outcome, const char *why)
{
    release_job(d, job, attempt, except);
    set_attempt(d, attempt, outcome, why);
    sqlite3_stmt *st = rd_db_prep(d, "SELECT state, lost FROM jobs WHERE id=?");
    char cur[16] = "";
    int lost = 0;
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        if (sqlite3_step(st) == SQLITE_ROW) {
            snprintf(cur, sizeof cur, "%s", (const char *)sqlite3_column_text(st, 0));
            lost = sqlite3_column_int(st, 1);
        }
        sqlite3_finalize(st);
    }
    if (strcmp(cur, "running") != 0)
        return; /* cancelled meanwhile: stays so */
    rd_db_int(d, "UPDATE jobs SET lost=lost+1 WHERE id=? RETURNING lost", job, 0);
    char msg[1400];
    if (d->shutting_down) {
        set_job_state(d, job, "queued", NULL);
    } else if (lost + 1 > d->max_retries) {
        snprintf(msg, sizeof msg, "%s; gave up after %d lost attempts", why, lost + 1);
        set_job_state(d, job, "failed", msg);
    } else {
        snprintf(msg, sizeof msg, "%s; requeued (resumes from its checkpoint)", why);
        rd_db_event(d, job, "state", msg);
        rd_log("job j%lld: %s", (long long)job, msg);
        set_job_state_why(d, job, "queued", NULL, msg);
    }
}

/* A rank finished its part (done, or gone after rank 0's result): once all
 * have, the attempt and the job are done. */
static void rank_finished(rd_daemon *d, rd_worker *w, rd_run *r)
{
    int64_t job = w->job, attempt = w->attempt;
    w->job = w->attempt = 0;
    if (r && ++r->ndone < r->world) {
        rd_log("job j%lld: rank %d finished; %d of %d", (long long)job, w->rank, r->ndone, r->world);
        return;
    }
    set_attempt(d, attempt, "done", NULL);
    release_job(d, job, attempt, NULL);
    if (rd_db_int(d, "SELECT state='running' FROM jobs WHERE id=?", job, 0))
        set_job_state(d, job, "done", NULL);
    rd_log("job j%lld done", (long long)job);
}

static void job_lost(rd_daemon *d, rd_worker *w, const char *why)
{
    rd_run *r = run_find(d, w->attempt);
    if (r && r->world > 1 && r->have_result && w->rank > 0) {
        /* rank 0 has the result: this rank's part was over */
        rank_finished(d, w, r);
        return;
    }
    char msg[512];
    if (r && r->world > 1)
        snprintf(msg, sizeof msg, "rank %d (worker %d): %s", w->rank, w->slot, why);
    else
        snprintf(msg, sizeof msg, "%s", why);
    attempt_lost(d, w->job, w->attempt, w, "lost", msg);
}

void rd_worker_conn_lost(rd_conn *c)
{
    rd_worker *w = c->worker;
    if (!w)
        return;
    rd_daemon *d = c->d;
    kv_purge_conn(d, c);
    w->conn = NULL;
    c->worker = NULL;
    drain_end(w);
    char ev[128];
    snprintf(ev, sizeof ev, "worker %d disconnected", w->slot);
    rd_log("%s", ev);
    if (w->job)
        job_lost(d, w, "worker lost");
    if (w->remote)
        w->dead = 1;
    rd_schedule(d);
}

/* The worker's report must be about the assignment it holds now. */
static int current(rd_worker *w, json_t *m)
{
    return w->job && json_integer_value(json_object_get(m, "job")) == w->job &&
           json_integer_value(json_object_get(m, "attempt")) == w->attempt;
}

/* K, where the job's epochs 1..K all have a row, and the step of its
 * newest step row: a resumed attempt reports those of its checkpoint past
 * them again. A daemon killed (or stopped for good) while its database
 * took no writes never stored them, and the attempt resumes after them.
 * -1 if the database cannot say. */
static int64_t steps_stored(rd_daemon *d, int64_t job)
{
    return rd_db_int(d, "SELECT COALESCE(MAX(step), 0) FROM metrics WHERE job_id=? AND "
                        "kind='step'", job, -1);
}

static int64_t epochs_stored(rd_daemon *d, int64_t job)
{
    sqlite3_stmt *st = rd_db_prep(d, "SELECT DISTINCT epoch FROM metrics WHERE job_id=? AND "
                                     "kind='epoch' AND epoch >= 1 ORDER BY epoch");
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    int64_t k = 0;
    while (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) == k + 1)
        k++;
    sqlite3_finalize(st);
    return k;
}

static void bind_num(sqlite3_stmt *st, int i, json_t *m, const char *k)
{
    double v = rw_json_get_num(m, k);
    if (isfinite(v))
        sqlite3_bind_double(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

static void store_metric(rd_daemon *d, int64_t job, int64_t attempt, json_t *m, const char *kind)
{
    sqlite3_stmt *st = rd_db_prep(d, "INSERT INTO metrics(job_id, attempt_id, kind, epoch, step, "
                                     "loss, align, uniform, collapse, knn, pairs_per_s, tau, lr, "
                                     "rank, linear, w_cos_i, w_asym, t) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    if (!st)
        return;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, attempt);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, json_integer_value(json_object_get(m, "epoch")));
    sqlite3_bind_int64(st, 5, json_integer_value(json_object_get(m, "step")));
    const char *k[] = {"loss", "align", "uniform", "collapse", "knn", "pairs_per_s", "tau", "lr",
                       "rank", "linear", "w_cos_i", "w_asym"};
    const int nk = (int)(sizeof k / sizeof *k);
    for (int i = 0; i < nk; i++)
        bind_num(st, 6 + i, m, k[i]);
    sqlite3_bind_double(st, 6 + nk, rd_now());
    rd_db_write(d, st, strcmp(kind, "final") != 0); /* a job's result is kept whatever it costs */
}

/* An epoch report of the attempt's: its pace, and the training time left
 * (with the epochs it will train) into the watchers' event. */
static void run_pace(rd_run *r, json_t *ev)
{
    json_int_t epoch = json_integer_value(json_object_get(ev, "epoch"));
    json_int_t step = json_integer_value(json_object_get(ev, "step"));
    if (epoch < 1)
        return;
    if (r->epoch0 < 0)
        r->epoch0 = (int)epoch - 1; /* resumed after epoch0 (or within the next) */
    double now = rd_mono();
    int done = (int)epoch - r->epoch0;
    r->epochs_total = rd_eta_epochs_total(r->epochs_spec, r->max_steps, step / epoch);
    r->left_s = rd_eta_job_left(now - r->t0, done, (int)epoch, r->epochs_total);
    r->left_at = now;
    r->pace_s = done > 0 ? (now - r->t0) / done : -1;
    json_object_set_new(ev, "epochs", json_integer(r->epochs_total));
    if (r->left_s >= 0)
        json_object_set_new(ev, "left_s", json_real(r->left_s));
}

/* A metric or log line of `attempt` (the worker's current one, or the one
 * it drains). */
static void report(rd_daemon *d, rd_worker *w, int64_t job, int64_t attempt, rd_run *run,
                   const char *type, json_t *m)
{
    if (!strcmp(type, "log")) {
        const char *line = json_string_value(json_object_get(m, "line"));
        if (w->rank > 0) {
            char buf[RW_LINE_MAX + 32];
            snprintf(buf, sizeof buf, "rank %d: %s", w->rank, line);
            rd_db_event(d, job, "log", buf);
        } else {
            rd_db_event(d, job, "log", line);
        }
        return;
    }
    const char *kind = json_string_value(json_object_get(m, "kind"));
    if (!kind || (strcmp(kind, "step") && strcmp(kind, "epoch")) || w->rank != 0)
        return; /* rank 0 speaks for the job */
    store_metric(d, job, attempt, m, kind);
    /* TensorBoard too: the attempt's restart marker, at the first of them,
     * drops what an earlier attempt wrote from there (the same points,
     * unless the disk was full then) */
    rd_tb_metric(d, run, kind, m);
    /* a report made again from a checkpoint (epochs_stored): the watchers
     * had it the first time, and it says nothing of this attempt's pace */
    if (json_is_true(json_object_get(m, "replay")))
        return;
    json_t *ev = json_deep_copy(m);
    if (!strcmp(kind, "epoch") && run && run->epochs_spec > 0)
        run_pace(run, ev);
    json_object_set_new(ev, "type", json_string("event"));
    json_object_set_new(ev, "metric", json_string(kind));
    json_object_set_new(ev, "kind", json_string("metric"));
    rd_watch_job_event(d, job, ev);
}

/* A drained worker's report of the attempt it was told to drop. */
static void drained(rd_daemon *d, rd_worker *w, const char *type, json_t *m)
{
    const char *e = json_string_value(json_object_get(m, "error"));
    char ev[RW_LINE_MAX + 160];
    snprintf(ev, sizeof ev, "attempt %lld: worker %d (rank %d) ended after cancel_job: %s%s%s",
             (long long)w->drain_attempt, w->slot, w->rank, type, e ? ": " : "", e ? e : "");
    rd_db_event(d, w->drain_job, "worker", ev);
    rd_log("%s", ev);
    /* a process replacing itself stays drained until its successor's hello */
    if (!json_is_true(json_object_get(m, "restart")))
        drain_end(w);
}

void rd_worker_message(rd_conn *c, const char *type, json_t *m)
{
    rd_daemon *d = c->d;
    rd_worker *w = c->worker;
    if (!w)
        return;
    w->last_seen = rd_mono();
    if (!strcmp(type, "heartbeat")) {
        /* a heartbeat naming no job (or another): the drained attempt is over */
        json_t *hj = json_object_get(m, "job");
        if (w->drain_attempt && (!hj || json_integer_value(hj) != w->drain_job)) {
            drain_end(w);
            rd_schedule(d);
        }
        return;
    }
    if (!strcmp(type, "kv_set") || !strcmp(type, "kv_get")) {
        kv_request(c, type, m);
        return;
    }
    if (!current(w, m)) {
        /* a late report of a job taken away (cancelled, requeued) */
        if (w->drain_attempt && json_integer_value(json_object_get(m, "job")) == w->drain_job &&
            json_integer_value(json_object_get(m, "attempt")) == w->drain_attempt) {
            if (!strcmp(type, "done") || !strcmp(type, "failed") || !strcmp(type, "stopped")) {
                drained(d, w, type, m);
                rd_schedule(d);
            } else if (!strcmp(type, "metric") || !strcmp(type, "log")) {
                /* epochs it finished before it heard cancel_job are in the
                 * checkpoint it writes as it stops: a resumed attempt
                 * starts after them, so they are recorded here or never */
                report(d, w, w->drain_job, w->drain_attempt, w->drain_run, type, m);
            }
        }
        return;
    }
    int64_t job = w->job, attempt = w->attempt;
    rd_run *run = run_find(d, attempt);
    int world = run ? run->world : 1;
    if (!strcmp(type, "metric") || !strcmp(type, "log")) {
        report(d, w, job, attempt, run, type, m);
    } else if (!strcmp(type, "done")) {
        if (w->rank == 0) {
            store_metric(d, job, attempt, m, "final");
            rd_tb_metric(d, run, "final", m);
            sqlite3_stmt *st = rd_db_prep(d, "UPDATE jobs SET linear_acc=?, align_last10=?, "
                                             "uniform_last10=?, result=? WHERE id=?");
            if (st) {
                bind_num(st, 1, m, "linear_acc");
                bind_num(st, 2, m, "align_last10");
                bind_num(st, 3, m, "uniform_last10");
                char *res = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);
                sqlite3_bind_text(st, 4, res ? res : "{}", -1, SQLITE_TRANSIENT);
                free(res);
                sqlite3_bind_int64(st, 5, job);
                rd_db_write(d, st, 0);
            }
            if (run)
                run->have_result = 1;
        }
        rank_finished(d, w, run);
    } else if (!strcmp(type, "failed")) {
        const char *e = json_string_value(json_object_get(m, "error"));
        /* The worker says whether another attempt may go better (a hang, a
         * broken collective: a peer or the network); the job's own failures
         * (bad data, a loss that is not finite) would repeat on every rank
         * and every attempt. */
        int retry = json_is_true(json_object_get(m, "retry"));
        char why[RW_LINE_MAX + 64];
        if (world > 1)
            snprintf(why, sizeof why, "rank %d (worker %d) failed: %s", w->rank, w->slot, e);
        else
            snprintf(why, sizeof why, "%s", e);
        if (world > 1 && run->have_result && w->rank > 0) {
            rd_log("job j%lld: %s", (long long)job, why);
            rd_db_event(d, job, "worker", why);
            rank_finished(d, w, run);
        } else if (retry) {
            rd_log("job j%lld: %s", (long long)job, why);
            attempt_lost(d, job, attempt, w, "failed", why);
        } else {
            set_attempt(d, attempt, "failed", why);
            release_job(d, job, attempt, w); /* the other ranks are cancelled */
            if (rd_db_int(d, "SELECT state='running' FROM jobs WHERE id=?", job, 0))
                set_job_state(d, job, "failed", why);
            rd_log("job j%lld failed: %s", (long long)job, why);
        }
        /* The process is replacing itself (its training thread hung): no
         * work until the new one says hello, as for a drained attempt. */
        if (json_is_true(json_object_get(m, "restart")) && w->conn)
            drain_begin(d, w, job, attempt);
    } else if (!strcmp(type, "stopped")) {
        set_attempt(d, attempt, "stopped", NULL);
        release_job(d, job, attempt, w);
        if (rd_db_int(d, "SELECT state='running' FROM jobs WHERE id=?", job, 0))
            set_job_state(d, job, "queued", NULL); /* stopped by shutdown: resumes next time */
    }
    if (!w->job)
        rd_schedule(d);
}

/* ------------------------------------------------------------------------ */
/* Heartbeats */

/* The loop itself stalled (a long rm, a slow disk under SQLite, the daemon
 * stopped or its machine suspended): timers run before the frames that
 * arrived meanwhile are read, so every worker would look silent. The time
 * the loop did not run is not counted against anyone. */
static void forgive_stall(rd_daemon *d, double now)
{
    double period = d->heartbeat_s < 1 ? d->heartbeat_s : 1;
    double gap = now - d->last_tick; /* the first from the timer's start */
    d->last_tick = now;
    if (gap < 2 * period + 1)
        return;
    double lost = gap - period;
    rd_log("the event loop did not run for %.1f s; the workers' silence in that time "
           "is not counted", lost);
    for (int i = 0; i < d->nworkers; i++)
        d->workers[i].last_seen += lost;
    for (rd_run *r = d->runs; r; r = r->next)
        for (rd_kv_waiter *w = r->waiters; w; w = w->next)
            w->deadline += lost; /* the value may be in a frame not read yet */
    rd_conns_forgive(d, lost);
}

void rd_tick(rd_daemon *d)
{
    double now = rd_mono();
    forgive_stall(d, now);
    kv_tick(d);
    if (rd_db_retry(d))
        rd_schedule(d);
    for (int i = 0; i < d->nworkers; i++) {
        rd_worker *w = &d->workers[i];
        int silent = now - w->last_seen > d->heartbeat_timeout_s;
        if (w->conn && silent) {
            char ev[160];
            snprintf(ev, sizeof ev, "worker %d: no heartbeat for %.0f s; killing it", w->slot,
                     now - w->last_seen);
            rd_log("%s", ev);
            rd_db_event(d, w->job, "worker", ev);
            if (w->job)
                job_lost(d, w, "worker stopped sending heartbeats");
            if (w->proc_alive)
                uv_process_kill(&w->proc, SIGKILL);
            rd_conn_close(w->conn);
        } else if (!w->conn && w->proc_alive && silent && !d->shutting_down) {
            rd_log("worker %d never connected; killing it", w->slot);
            uv_process_kill(&w->proc, SIGKILL);
            w->last_seen = now;
        }
    }
    if (d->shutting_down && now - d->shutdown_started > d->shutdown_timeout_s) {
        for (int i = 0; i < d->nworkers; i++)
            if (d->workers[i].proc_alive)
                uv_process_kill(&d->workers[i].proc, SIGKILL);
    }
}

/* ------------------------------------------------------------------------ */
/* Scheduling */

int rd_ndevices(rd_daemon *d)
{
    int seen[RD_WORKERS_MAX], n = 0;
    for (int i = 0; i < d->nworkers; i++) {
        if (d->workers[i].dead)
            continue;
        int dup = 0;
        for (int j = 0; j < n; j++)
            dup |= seen[j] == d->workers[i].device_index;
        if (!dup)
            seen[n++] = d->workers[i].device_index;
    }
    return n;
}

/* What the estimates of the time left need from the attempt's spec. */
static void run_spec_pace(rd_run *r, const char *yaml)
{
    rw_spec *spec = r && yaml ? malloc(sizeof *spec) : NULL;
    char err[512];
    if (spec && rw_spec_parse(yaml, strlen(yaml), "stored spec", "", spec, err, sizeof err) == 0) {
        r->epochs_spec = spec->optim.epochs;
        r->max_steps = spec->optim.max_steps;
    }
    free(spec);
}

/* The workers as the scheduler sees them (scheduler.h). A local worker between
 * processes is coming back, as a draining one is about to be free. */
static void sched_view(rd_daemon *d, rd_sched_worker *sw)
{
    for (int i = 0; i < d->nworkers; i++) {
        rd_worker *w = &d->workers[i];
        sw[i] = (rd_sched_worker){.device = w->device_index, .state = RD_W_OFF};
        if (w->dead || w->stopping || (!w->conn && w->remote))
            continue;
        if (!w->conn || w->conn->closing || w->drain_attempt) {
            sw[i].state = RD_W_DRAINING;
        } else if (w->job) {
            rd_run *r = run_find(d, w->attempt);
            sw[i].state = RD_W_BUSY;
            sw[i].job = w->job;
            sw[i].prio = rd_db_int(d, "SELECT priority FROM jobs WHERE id=?", w->job, 0);
            sw[i].backfill = r && r->backfill;
        } else {
            sw[i].state = RD_W_IDLE;
        }
    }
}

/* The queued jobs in the scheduler's order; NULL on a database error. */
static rd_sched_job *sched_queue(rd_daemon *d, int *n)
{
    *n = 0;
    sqlite3_stmt *st = rd_db_prep(d, "SELECT id, priority, devices FROM jobs WHERE "
                                     "state='queued' ORDER BY priority DESC, id");
    if (!st)
        return NULL;
    size_t cap = 16;
    rd_sched_job *q = malloc(cap * sizeof *q);
    while (q && sqlite3_step(st) == SQLITE_ROW) {
        if ((size_t)*n == cap) {
            rd_sched_job *nq = realloc(q, 2 * cap * sizeof *q);
            if (!nq) {
                free(q);
                q = NULL;
                break;
            }
            q = nq;
            cap *= 2;
        }
        rd_sched_job *j = &q[(*n)++];
        *j = (rd_sched_job){sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
                            sqlite3_column_int(st, 2), 1};
        /* A worker still stopping an earlier attempt of this job may yet
         * write its checkpoint into the run folder: the next attempt starts
         * once it has stopped, so it never resumes from, or is overwritten
         * by, a checkpoint written behind its back. */
        for (int i = 0; i < d->nworkers; i++)
            if (d->workers[i].drain_job == j->id)
                j->ready = 0;
    }
    sqlite3_finalize(st);
    return q;
}

/* Assigns `job` to the picked workers, rank by rank; `ahead_of`: the job it
 * goes ahead of (backfill), or 0. */
static void start_job(rd_daemon *d, int64_t job, rd_worker **pick, int np, int64_t ahead_of)
{
    sqlite3_stmt *st = rd_db_prep(d, "SELECT name, spec, attempts FROM jobs WHERE id=?");
    if (!st)
        return;
    sqlite3_bind_int64(st, 1, job);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        return;
    }
    json_t *name = json_string((const char *)sqlite3_column_text(st, 0));
    json_t *spec = json_string((const char *)sqlite3_column_text(st, 1));
    int attempts = sqlite3_column_int(st, 2);
    sqlite3_finalize(st);
    char wname[256];
    snprintf(wname, sizeof wname, "%d:%s", pick[0]->slot, pick[0]->device);
    int64_t attempt = rd_db_next_id(d, "attempts");
    st = attempt ? rd_db_prep(d, "INSERT INTO attempts(id, job_id, worker, started, outcome) "
                                 "VALUES(?,?,?,?,'running')")
                 : NULL;
    if (!st) {
        json_decref(name);
        json_decref(spec);
        return;
    }
    sqlite3_bind_int64(st, 1, attempt);
    sqlite3_bind_int64(st, 2, job);
    sqlite3_bind_text(st, 3, wname, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 4, rd_now());
    rd_db_write(d, st, 0);
    rd_run *run = run_new(d, job, attempt, np); /* its rendezvous store */
    run_spec_pace(run, json_string_value(spec));
    if (run)
        run->backfill = ahead_of != 0;
    st = rd_db_prep(d, "UPDATE jobs SET state='running', attempts=attempts+1, "
                       "started=COALESCE(started, ?) WHERE id=?");
    if (st) {
        sqlite3_bind_double(st, 1, rd_now());
        sqlite3_bind_int64(st, 2, job);
        rd_db_write(d, st, 0);
    }
    /* recorded before the workers hear of it: what a worker does next is
     * never older than the record */
    char ev[400], ahead[96] = "";
    if (ahead_of)
        snprintf(ahead, sizeof ahead, ", ahead of j%lld, which waits for workers (it yields to it)",
                 (long long)ahead_of);
    snprintf(ev, sizeof ev, "attempt %lld on worker %s%s%s", (long long)attempt, wname,
             attempts > 0 ? " (resuming)" : "", ahead);
    rd_db_event(d, job, "state", ev);
    rd_log("job j%lld %s: %s", (long long)job, json_string_value(name), ev);
    char out[PATH_MAX + 64];
    snprintf(out, sizeof out, "%s/runs/%lld", d->state_dir, (long long)job);
    int64_t stored = attempts > 0 ? epochs_stored(d, job) : -1;
    int64_t stored_steps = attempts > 0 ? steps_stored(d, job) : -1;
    for (int r = 0; r < np; r++) {
        json_t *m = rw_msg_new("assign", -1);
        json_object_set_new(m, "job", json_integer(job));
        json_object_set_new(m, "attempt", json_integer(attempt));
        json_object_set(m, "name", name);
        json_object_set(m, "spec", spec);
        json_object_set_new(m, "out_dir", json_string(out));
        json_object_set_new(m, "resume", json_boolean(attempts > 0));
        if (stored >= 0 && stored_steps >= 0) {
            json_object_set_new(m, "epochs_stored", json_integer(stored));
            json_object_set_new(m, "steps_stored", json_integer(stored_steps));
        }
        json_object_set_new(m, "rank", json_integer(r));
        json_object_set_new(m, "world", json_integer(np));
        json_object_set_new(m, "threads", json_integer(d->threads_per_worker));
        pick[r]->job = job;
        pick[r]->attempt = attempt;
        pick[r]->rank = r;
        rd_conn_send(pick[r]->conn, m);
    }
    json_decref(name);
    json_decref(spec);
    rd_watch_job_state(d, job, ev);
}

/* Every worker of `job`'s attempt is told cancel_job (it stops after its
 * step, with a checkpoint) and drains; the attempt ends as `outcome`. */
static void stop_attempt(rd_daemon *d, int64_t job, const char *outcome)
{
    int64_t attempt = 0;
    for (int i = 0; i < d->nworkers; i++) {
        rd_worker *w = &d->workers[i];
        if (w->job == job) {
            attempt = w->attempt;
            set_attempt(d, w->attempt, outcome, NULL);
            if (w->conn) {
                json_t *m = rw_msg_new("cancel_job", -1);
                json_object_set_new(m, "job", json_integer(job));
                rd_conn_send(w->conn, m);
                drain_begin(d, w, job, w->attempt);
            }
            w->job = w->attempt = 0;
        }
    }
    if (attempt) /* after every rank: rank 0 takes its TensorBoard file from it */
        run_end(d, attempt);
}

void rd_schedule(rd_daemon *d)
{
    /* a job's start is recorded before its workers hear of it (its attempt
     * id comes from the database): none starts while it takes no writes */
    if (d->shutting_down || rd_db_down(d))
        return;
    /* each round starts a job or stops one: bounded by the workers */
    for (int round = 0; round < 2 * RD_WORKERS_MAX + 2; round++) {
        rd_sched_worker sw[RD_WORKERS_MAX];
        sched_view(d, sw);
        int nq;
        rd_sched_job *q = sched_queue(d, &nq);
        if (!q)
            return;
        rd_sched_action a;
        rd_sched_next(sw, d->nworkers, q, nq, &a);
        if (a.kind == RD_SCHED_START) {
            rd_worker *pick[RD_SCHED_MAX_DEVICES];
            for (int k = 0; k < a.nworkers; k++)
                pick[k] = &d->workers[a.workers[k]];
            int64_t ahead_of = 0;
            int ndev = a.backfill ? rd_ndevices(d) : 0;
            for (int k = 0; k < a.job && !ahead_of; k++)
                if (q[k].devices <= ndev)
                    ahead_of = q[k].id; /* the one that waits */
            start_job(d, q[a.job].id, pick, a.nworkers, ahead_of);
        } else if (a.kind == RD_SCHED_PREEMPT) {
            int need = 0;
            for (int k = 0; k < nq; k++)
                if (q[k].id == a.for_job)
                    need = q[k].devices;
            char ev[256];
            snprintf(ev, sizeof ev, "yields to j%lld, which needs %d worker%s: stops at its next "
                     "step with a checkpoint and resumes from it", (long long)a.for_job, need,
                     need == 1 ? "" : "s");
            rd_db_event(d, a.victim, "state", ev);
            rd_log("job j%lld %s", (long long)a.victim, ev);
            stop_attempt(d, a.victim, "preempted");
            set_job_state_why(d, a.victim, "queued", NULL, ev);
        }
        free(q);
        if (a.kind == RD_SCHED_NONE)
            return;
    }
}

void rd_cancel_job(rd_daemon *d, int64_t job)
{
    stop_attempt(d, job, "cancelled");
    set_job_state(d, job, "cancelled", "cancelled by user");
}

int rd_requeue_job(rd_daemon *d, int64_t job)
{
    if (!rd_db_int(d, "SELECT state IN ('failed','cancelled') FROM jobs WHERE id=?", job, 0))
        return 0;
    /* a fresh budget of retries; the result columns are empty for a job
     * that did not finish */
    sqlite3_stmt *st = rd_db_prep(d, "UPDATE jobs SET lost=0 WHERE id=?");
    if (!st)
        return 0;
    sqlite3_bind_int64(st, 1, job);
    rd_db_write(d, st, 0);
    rd_db_event(d, job, "state", "requeued by user (resumes from its checkpoint, if any)");
    set_job_state(d, job, "queued", NULL);
    return 1;
}

int rd_job_busy(rd_daemon *d, int64_t job)
{
    for (int i = 0; i < d->nworkers; i++)
        if (d->workers[i].job == job || d->workers[i].drain_job == job)
            return 1;
    return 0;
}

void rd_job_forget(rd_daemon *d, int64_t job)
{
    for (rd_run *r = d->runs, *next; r; r = next) {
        next = r->next;
        if (r->job == job)
            run_end(d, r->attempt);
    }
}

void rd_workers_stop_all(rd_daemon *d)
{
    for (int i = 0; i < d->nworkers; i++) {
        rd_worker *w = &d->workers[i];
        if (!w->remote)
            uv_timer_stop(&w->restart_timer);
        w->stopping = 1;
        if (w->conn)
            rd_conn_send(w->conn, rw_msg_new("stop", -1));
        else if (w->proc_alive)
            uv_process_kill(&w->proc, SIGTERM);
    }
}

int rd_workers_alive(rd_daemon *d)
{
    int n = 0;
    for (int i = 0; i < d->nworkers; i++)
        n += d->workers[i].proc_alive;
    return n;
}

json_t *rd_workers_json(rd_daemon *d)
{
    json_t *a = json_array();
    double now = rd_mono();
    for (int i = 0; i < d->nworkers; i++) {
        rd_worker *w = &d->workers[i];
        if (w->dead)
            continue;
        json_t *o = json_object();
        json_object_set_new(o, "slot", json_integer(w->slot));
        json_object_set_new(o, "device", json_string(w->device));
        json_object_set_new(o, "host", json_string(w->host[0] ? w->host : "-"));
        json_object_set_new(o, "backend", json_string(w->backend[0] ? w->backend : "-"));
        json_object_set_new(o, "pid", json_integer(w->conn || w->proc_alive ? w->pid : 0));
        json_object_set_new(o, "state", json_string(!w->conn ? (w->proc_alive ? "starting" : "down")
                                                    : w->job ? "busy"
                                                    : w->drain_attempt ? "draining"
                                                                       : "idle"));
        json_object_set_new(o, "job", json_integer(w->job));
        json_object_set_new(o, "rank", json_integer(w->rank));
        json_object_set_new(o, "remote", json_boolean(w->remote));
        json_object_set_new(o, "starts", json_integer(w->restarts));
        json_object_set_new(o, "last_seen_s", w->conn ? json_real(now - w->last_seen) : json_null());
        json_array_append_new(a, o);
    }
    return a;
}

/* ------------------------------------------------------------------------ */
/* Time left */

/* How long a job of grid `gid` and `variant` runs, start to end: the mean
 * of its finished siblings that ran in one attempt, else the pace of a
 * running one times its epochs; siblings of the same variant first, then
 * any of the grid; -1. */
static double job_duration(rd_daemon *d, int64_t gid, const char *variant)
{
    for (int same = 1; same >= 0; same--) {
        /* of another variant, only one that trained (not the random
         * baseline's one pass) */
        sqlite3_stmt *st = rd_db_prep(d, "SELECT AVG(finished - started) FROM jobs j WHERE "
                                         "grid_id=?1 AND (?2 IS NULL OR variant=?2) AND "
                                         "state='done' AND attempts=1 AND finished >= started AND "
                                         "(?2 IS NOT NULL OR (SELECT MAX(epoch) FROM metrics m "
                                         "WHERE m.job_id=j.id AND m.kind='epoch') > 0)");
        if (!st)
            return -1;
        sqlite3_bind_int64(st, 1, gid);
        if (same)
            sqlite3_bind_text(st, 2, variant, -1, SQLITE_TRANSIENT);
        double v = -1;
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            v = sqlite3_column_double(st, 0);
        sqlite3_finalize(st);
        if (v >= 0)
            return v;
        for (int i = 0; i < d->nworkers; i++) {
            rd_worker *w = &d->workers[i];
            rd_run *r = w->job && w->rank == 0 ? run_find(d, w->attempt) : NULL;
            if (!r || r->pace_s < 0 || r->epochs_total <= 0)
                continue;
            st = rd_db_prep(d, "SELECT grid_id=?1 AND (?2 IS NULL OR variant=?2) FROM jobs "
                               "WHERE id=?3");
            int match = 0;
            if (st) {
                sqlite3_bind_int64(st, 1, gid);
                if (same)
                    sqlite3_bind_text(st, 2, variant, -1, SQLITE_TRANSIENT);
                sqlite3_bind_int64(st, 3, r->job);
                match = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
                sqlite3_finalize(st);
            }
            if (match)
                return r->pace_s * r->epochs_total;
        }
    }
    return -1;
}

/* Training time a running job has left, in seconds; -1 unknown. */
static double job_left(rd_daemon *d, rd_worker *w)
{
    double now = rd_mono();
    rd_run *r = run_find(d, w->attempt);
    if (r && r->left_s >= 0) {
        double f = r->left_s - (now - r->left_at);
        return f > 0 ? f : 0;
    }
    /* no epoch reported yet: a whole run of its kind, less what it ran */
    sqlite3_stmt *st = rd_db_prep(d, "SELECT grid_id, variant FROM jobs WHERE id=?");
    double dur = -1;
    if (st) {
        sqlite3_bind_int64(st, 1, w->job);
        if (sqlite3_step(st) == SQLITE_ROW)
            dur = job_duration(d, sqlite3_column_int64(st, 0),
                               (const char *)sqlite3_column_text(st, 1));
        sqlite3_finalize(st);
    }
    if (dur < 0)
        return -1;
    double f = dur - (r ? now - r->t0 : 0);
    return f > 0 ? f : 0;
}

double rd_grid_left(rd_daemon *d, int64_t gid)
{
    rd_sched_worker sw[RD_WORKERS_MAX];
    sched_view(d, sw);
    size_t n = 0, cap = (size_t)d->nworkers + 64;
    rd_eta_job *q = malloc(cap * sizeof *q);
    if (!q)
        return -1;
    /* the running jobs, once each (rank 0 holds its pace) */
    for (int i = 0; i < d->nworkers; i++) {
        rd_worker *w = &d->workers[i];
        if (sw[i].state != RD_W_BUSY || w->rank != 0)
            continue;
        rd_run *r = run_find(d, w->attempt);
        q[n++] = (rd_eta_job){.id = w->job, .prio = sw[i].prio, .devices = r ? r->world : 1,
                              .dur_s = job_left(d, w),
                              .grid = rd_db_int(d, "SELECT grid_id FROM jobs WHERE id=?", w->job, 0),
                              .running = 1};
    }
    sqlite3_stmt *st = rd_db_prep(d, "SELECT id, priority, grid_id, variant, devices FROM jobs "
                                     "WHERE state='queued'");
    if (!st) {
        free(q);
        return -1;
    }
    int failed = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) {
            rd_eta_job *nq = realloc(q, 2 * cap * sizeof *q);
            if (!nq) {
                failed = 1;
                break;
            }
            q = nq;
            cap *= 2;
        }
        q[n++] = (rd_eta_job){.id = sqlite3_column_int64(st, 0), .prio = sqlite3_column_int64(st, 1),
                              .grid = sqlite3_column_int64(st, 2), .devices = sqlite3_column_int(st, 4)};
        q[n - 1].dur_s = job_duration(d, q[n - 1].grid, (const char *)sqlite3_column_text(st, 3));
    }
    sqlite3_finalize(st);
    double end = failed ? -1 : rd_eta_replay(sw, d->nworkers, q, (int)n, gid);
    free(q);
    return end;
}
