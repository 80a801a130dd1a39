/* runawayd assembled (daemon.h): the parts wired, the tick, the shutdown. */
#include <stdio.h>
#include <string.h>

#include "daemon/daemon.h"
#include "daemon/dbcheck.h"
#include "daemon/kv.h"

/* Once shutdown has begun and every worker process is gone, the loop stops. */
static void shutdown_check(void *arg)
{
    rd_daemon *d = arg;
    if (!d->life.shutting_down || rd_pool_alive(&d->pool) > 0)
        return;
    if (d->life.shutting_down == 1) {
        d->life.shutting_down = 2;
        rd_log("all workers stopped");
        uv_stop(d->loop);
    }
}

void rd_shutdown_begin(rd_daemon *d)
{
    if (d->life.shutting_down)
        return;
    d->life.shutting_down = 1;
    d->life.shutdown_started = rd_mono();
    rd_log("shutting down: asking workers to checkpoint and stop");
    rd_db_event(&d->store, 0, "daemon", "shutdown requested");
    rd_net_stop_listening(&d->net);
    rd_pool_stop_all(&d->pool);
    rd_sphere_stop_all(&d->spheres);
    shutdown_check(d);
}

/* The worker layer behind the transport's handlers */
static int worker_hello(void *arg, rd_conn *c, json_t *m, char *err, size_t errlen)
{
    return rd_wconn_hello(&((rd_daemon *)arg)->wc, c, m, err, errlen);
}

static void worker_ready(void *arg, rd_conn *c)
{
    (void)c;
    rd_schedule(&((rd_daemon *)arg)->jobs);
}

static void worker_message(void *arg, rd_conn *c, const char *type, json_t *m)
{
    rd_wconn_message(&((rd_daemon *)arg)->wc, c, type, m);
}

static void worker_lost(void *arg, rd_conn *c)
{
    rd_wconn_lost(&((rd_daemon *)arg)->wc, c);
}

void rd_daemon_wire(rd_daemon *d)
{
    d->store.ev = &d->ev;
    snprintf(d->store.path, sizeof d->store.path, "%s/runaway.db", d->state_dir);
    snprintf(d->store.state_dir, sizeof d->store.state_dir, "%s", d->state_dir);
    d->store.tb_dir = d->tb.dir;

    d->net.loop = d->loop;
    d->net.life = &d->life;
    snprintf(d->net.sock_path, sizeof d->net.sock_path, "%s/runawayd.sock", d->state_dir);
    d->net.h.arg = d;
    d->net.h.worker_hello = worker_hello;
    d->net.h.worker_ready = worker_ready;
    d->net.h.worker_message = worker_message;
    d->net.h.worker_lost = worker_lost;
    d->net.h.conn_freed = shutdown_check;

    d->pool.loop = d->loop;
    d->pool.life = &d->life;
    d->pool.store = &d->store;
    snprintf(d->pool.sock_path, sizeof d->pool.sock_path, "%s", d->net.sock_path);
    snprintf(d->pool.state_dir, sizeof d->pool.state_dir, "%s", d->state_dir);
    d->pool.proc_gone = shutdown_check;
    d->pool.proc_gone_arg = d;

    d->tb.store = &d->store;

    d->jobs.store = &d->store;
    d->jobs.pool = &d->pool;
    d->jobs.runs = &d->runs;
    d->jobs.ev = &d->ev;
    d->jobs.life = &d->life;
    snprintf(d->jobs.state_dir, sizeof d->jobs.state_dir, "%s", d->state_dir);

    d->wc.jobs = &d->jobs;
    d->wc.tb = &d->tb;

    d->watch.jobs = &d->jobs;
    d->watch.net = &d->net;

    d->notify.loop = d->loop;
    d->notify.store = &d->store;
    snprintf(d->notify.state_dir, sizeof d->notify.state_dir, "%s", d->state_dir);

    d->spheres.loop = d->loop;
    d->spheres.life = &d->life;
    d->spheres.store = &d->store;
    d->spheres.net = &d->net;
    snprintf(d->spheres.state_dir, sizeof d->spheres.state_dir, "%s", d->state_dir);
    snprintf(d->spheres.worker_path, sizeof d->spheres.worker_path, "%s", d->pool.worker_path);

    /* the watchers hear of a change before --notify runs for it */
    rd_watch_listen(&d->watch, &d->ev);
    rd_notify_listen(&d->notify, &d->ev);
}

/* The loop itself stalled (a long rm, a slow disk under SQLite, the daemon
 * stopped or its machine suspended): timers run before the frames that
 * arrived meanwhile are read, so every worker would look silent. The time
 * the loop did not run is not counted against anyone. */
static void forgive_stall(rd_daemon *d, double now)
{
    double hb = d->pool.heartbeat_s, period = hb < 1 ? hb : 1;
    double gap = now - d->last_tick; /* the first from the timer's start */
    d->last_tick = now;
    if (gap < 2 * period + 1)
        return;
    double lost = gap - period;
    rd_log("the event loop did not run for %.1f s; the workers' silence in that time "
           "is not counted", lost);
    rd_wconn_forgive(&d->wc, lost);
    rd_kv_forgive(&d->runs, lost);
    rd_net_forgive(&d->net, lost);
}

static void tick_cb(uv_timer_t *t)
{
    rd_daemon *d = t->data;
    double now = rd_mono();
    rd_db_backup_tick(&d->store, d->life.shutting_down);
    forgive_stall(d, now);
    rd_kv_tick(&d->runs);
    if (rd_db_retry(&d->store))
        rd_schedule(&d->jobs);
    rd_pool_tick(&d->pool, now);
    rd_wconn_watchdog(&d->wc, now);
    rd_net_tick(&d->net);
    rd_sphere_tick(&d->spheres);
}

void rd_daemon_tick_start(rd_daemon *d)
{
    uv_timer_init(d->loop, &d->tick);
    d->tick.data = d;
    double hb = d->pool.heartbeat_s, period = hb < 1 ? hb : 1;
    d->last_tick = rd_mono();
    uv_timer_start(&d->tick, tick_cb, (uint64_t)(period * 1000), (uint64_t)(period * 1000));
}
