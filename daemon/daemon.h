/* runawayd assembled: every part's state, and the wiring between them.
 *
 * The parts, each calling only those listed before it:
 *   base.c      clocks, log, folders; the daemon's life (stopping or not)
 *   events.c    who listens to what happened (store, jobs -> watch, notify)
 *   db.c        the store: SQLite and the backlog of writes it cannot take
 *   dbcheck.c   the store checked at start and on demand, and backed up
 *   scheduler.c, eta.c   the scheduler's decisions and the estimates (pure)
 *   stats.c     Welch's t-test of table's marks (pure)
 *   net.c       transport and authentication: listeners, connections, hello
 *   runs.c      the running attempts
 *   pool.c      worker slots and their processes
 *   kv.c        the rendezvous store of an attempt's ranks
 *   tboard.c    TensorBoard event files
 *   jobs.c      the job and attempt state machine, the queue, time left
 *   wconn.c     worker connections and their reports, the watchdog
 *   query.c     the store read for replies
 *   offload.c   reading queries on the thread pool
 *   watch.c     watchers of jobs and grids, log followers
 *   notify.c    --notify
 *   remove.c    rm
 *   sphere.c    sphere for a client on another host
 *   daemon.c    this: the parts wired, the tick, the shutdown
 *   h_jobs.c, h_query.c, h_results.c, dispatch.c   client requests
 *   main.c      options, the state folder, signals, the loop */
#ifndef RUNAWAY_DAEMON_DAEMON_H
#define RUNAWAY_DAEMON_DAEMON_H

#include <limits.h>
#include <uv.h>

#include "daemon/base.h"
#include "daemon/db.h"
#include "daemon/events.h"
#include "daemon/jobs.h"
#include "daemon/net.h"
#include "daemon/notify.h"
#include "daemon/pool.h"
#include "daemon/runs.h"
#include "daemon/sphere.h"
#include "daemon/tboard.h"
#include "daemon/watch.h"
#include "daemon/wconn.h"

typedef struct rd_daemon {
    uv_loop_t *loop;
    rd_life life;
    rd_events ev;
    rd_store store;
    rd_net net;
    rd_runs runs;
    rd_pool pool;
    rd_tboard tb;
    rd_jobs jobs;
    rd_wconn wc;
    rd_watch watch;
    rd_notify notify;
    rd_spheres spheres;
    char state_dir[PATH_MAX];
    uv_timer_t tick;
    double last_tick; /* rd_mono() of the last tick: a loop that stalled sees a gap */
} rd_daemon;

/* The parts' pointers to each other, their paths from state_dir and the
 * options already set in them, and the listeners. Before anything starts. */
void rd_daemon_wire(rd_daemon *d);
/* The tick: deadlines, heartbeats, the backlog's retries; from now on. */
void rd_daemon_tick_start(rd_daemon *d);
/* Shutdown: no new connections or work; workers asked to checkpoint and stop. */
void rd_shutdown_begin(rd_daemon *d);

#endif
