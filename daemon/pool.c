/* Worker slots and their processes (pool.h). A crashed process is
 * restarted with exponential backoff; one that never connects is killed
 * (then restarted). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/pool.h"
#include "proto/msg.h"

extern char **environ;

#define BACKOFF_MIN_S 1.0
#define BACKOFF_MAX_S 60.0
#define STABLE_S 60.0 /* a worker up this long has its backoff reset */

static void spawn_worker(rd_worker *w);

static rd_pool *pool_of(rd_worker *w)
{
    return (rd_pool *)((char *)(w - w->slot) - offsetof(rd_pool, workers));
}

/* ------------------------------------------------------------------------ */
/* Processes */

static void restart_cb(uv_timer_t *t)
{
    rd_worker *w = t->data;
    if (!pool_of(w)->life->shutting_down)
        spawn_worker(w);
}

static void proc_close_cb(uv_handle_t *h)
{
    rd_worker *w = h->data;
    rd_pool *d = pool_of(w);
    w->proc_alive = 0;
    if (d->proc_gone)
        d->proc_gone(d->proc_gone_arg);
}

static void exit_cb(uv_process_t *p, int64_t status, int sig)
{
    rd_worker *w = p->data;
    rd_pool *d = pool_of(w);
    char ev[160];
    snprintf(ev, sizeof ev, "worker %d (%s, pid %d) exited with status %lld%s%s", w->slot,
             w->device, p->pid, (long long)status, sig ? ", signal " : "", sig ? strsignal(sig) : "");
    rd_log("%s", ev);
    rd_db_event(d->store, 0, "worker", ev);
    /* its connection may outlive it by a moment; the job is requeued there */
    if (w->conn)
        rd_conn_close(w->conn);
    uv_close((uv_handle_t *)p, proc_close_cb);
    if (d->life->shutting_down)
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
    rd_pool *d = pool_of(w);
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

int rd_pool_start(rd_pool *d, char *err, size_t errlen)
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

rd_worker *rd_pool_remote_slot(rd_pool *p, const char *device)
{
    /* the slot of a remote worker that left, else a new one: the cap
     * counts the workers connected, not all that ever were */
    rd_worker *w = NULL;
    for (int i = 0; i < p->nworkers && !w; i++)
        if (p->workers[i].remote && p->workers[i].dead && !p->workers[i].conn)
            w = &p->workers[i];
    if (!w && p->nworkers == RD_WORKERS_MAX)
        return NULL;
    int slot = w ? w->slot : p->nworkers++;
    w = &p->workers[slot];
    memset(w, 0, sizeof *w);
    w->slot = slot;
    w->remote = 1;
    w->device_index = 1000 + w->slot;
    snprintf(w->device, sizeof w->device, "%s", device ? device : "remote");
    return w;
}

void rd_pool_tick(rd_pool *p, double now)
{
    for (int i = 0; i < p->nworkers; i++) {
        rd_worker *w = &p->workers[i];
        if (!w->conn && w->proc_alive && now - w->last_seen > p->heartbeat_timeout_s &&
            !p->life->shutting_down) {
            rd_log("worker %d never connected; killing it", w->slot);
            uv_process_kill(&w->proc, SIGKILL);
            w->last_seen = now;
        }
    }
    if (p->life->shutting_down && now - p->life->shutdown_started > p->life->shutdown_timeout_s) {
        for (int i = 0; i < p->nworkers; i++)
            if (p->workers[i].proc_alive)
                uv_process_kill(&p->workers[i].proc, SIGKILL);
    }
}

void rd_pool_stop_all(rd_pool *d)
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

int rd_pool_alive(const rd_pool *d)
{
    int n = 0;
    for (int i = 0; i < d->nworkers; i++)
        n += d->workers[i].proc_alive;
    return n;
}

json_t *rd_pool_json(const rd_pool *d)
{
    json_t *a = json_array();
    double now = rd_mono();
    for (int i = 0; i < d->nworkers; i++) {
        const rd_worker *w = &d->workers[i];
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

int rd_pool_ndevices(const rd_pool *d)
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
