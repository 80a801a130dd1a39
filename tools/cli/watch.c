/* runaway watch: live progress of jobs and grids until every one has ended. */
#include <errno.h>
#include <poll.h>
#include <sys/un.h>
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/cli/cli.h"

/* watch, table */

/* The targets of watch, table, plot, sphere or metrics: the arguments that are no
 * option, at most RW_TARGETS_MAX. */
void add_target(const char *cmd, char **t, int *nt, char *arg)
{
    if (*nt == RW_TARGETS_MAX)
        die("%s: at most %d jobs or grids at once", cmd, RW_TARGETS_MAX);
    t[(*nt)++] = arg;
}

/* One watched target: its connection (a daemon's watch is one per
 * connection), the request's id, and what it resolved to. */
typedef struct watched {
    conn c;
    long long id;
    char kind; /* 'g' or 'j' */
    long long tid;
    int ended;      /* watch_end came */
    int lost;       /* runawayd went away: watched again when it is back */
    int in_grid;    /* a job also watched through its grid: that stream tells */
    json_t *jobs;   /* a grid's jobs as the watch began */
} watched;

/* Asks for the watch and prints the target's jobs. */
static void watch_open(watched *w, const char *target)
{
    json_t *m = req_new("watch");
    json_object_set_new(m, "target", json_string(target));
    json_t *r = request(&w->c, m);
    w->id = rw_msg_id(r);
    w->kind = !strcmp(jstr(r, "kind"), "grid") ? 'g' : 'j';
    w->tid = jint(r, "target");
    w->ended = 0;
    w->lost = 0;
    size_t i;
    json_t *v;
    int njobs = (int)json_array_size(json_object_get(r, "jobs"));
    json_decref(w->jobs);
    printf("watching %s %s: %d job%s\n", jstr(r, "kind"), target, njobs, njobs == 1 ? "" : "s");
    /* a job that already failed says why here: its event came before us */
    json_array_foreach(json_object_get(r, "jobs"), i, v)
        printf("  j%lld %-40s %s%s%s\n", jint(v, "id"), jstr(v, "name"), jstr(v, "state"),
               json_is_string(json_object_get(v, "error")) ? ": " : "", jstr(v, "error"));
    w->jobs = json_incref(json_object_get(r, "jobs"));
    json_decref(r);
    fflush(stdout);
}

/* A job watched also through its grid: its events come on the grid's
 * stream (its own would print them twice), and the grid's outcome is its. */
static int watched_in_a_grid(const watched *w, int n, int k)
{
    for (int g = 0; g < n; g++) {
        size_t i;
        json_t *v;
        if (g != k && w[g].kind == 'g' && w[k].kind == 'j')
            json_array_foreach(w[g].jobs, i, v) if (jint(v, "id") == w[k].tid) return 1;
    }
    return 0;
}

/* Prints one frame of w's stream; notes watch_end. */
static void watch_event(watched *w, json_t *e)
{
    const char *t = jstr(e, "type");
    if (rw_msg_id(e) != w->id) {
        json_decref(e);
        return;
    }
    if (!strcmp(t, "watch_end")) {
        w->ended = 1;
    } else if (!strcmp(t, "event") && !strcmp(jstr(e, "kind"), "metric") &&
               !strcmp(jstr(e, "metric"), "epoch")) {
        char knn[32] = "", rank[32] = "", lin[32] = "", left[48] = "", of[24] = "", wi[32] = "";
        if (json_is_number(json_object_get(e, "left_s"))) {
            char d[32];
            fmt_duration(rw_json_get_num(e, "left_s"), d, sizeof d);
            snprintf(left, sizeof left, "  ~%s of training left", d);
        }
        if (jint(e, "epochs") > 0)
            snprintf(of, sizeof of, "/%lld", jint(e, "epochs"));
        if (json_is_number(json_object_get(e, "knn")))
            snprintf(knn, sizeof knn, "  knn %.1f%%", 100 * rw_json_get_num(e, "knn"));
        if (json_is_number(json_object_get(e, "rank")))
            snprintf(rank, sizeof rank, "  rank %.1f", rw_json_get_num(e, "rank"));
        if (json_is_number(json_object_get(e, "linear")))
            snprintf(lin, sizeof lin, "  linear %.1f%%", 100 * rw_json_get_num(e, "linear"));
        if (json_is_number(json_object_get(e, "w_cos_i")))
            snprintf(wi, sizeof wi, "  cos(W,I) %+.3f", rw_json_get_num(e, "w_cos_i"));
        printf("j%-4lld epoch %3lld%s  loss %+.4f  align %.3e  uniform %+.3f  collapse %.3f%s%s%s%s"
               "  %.1f pairs/s%s\n",
               jint(e, "job"), jint(e, "epoch"), of, rw_json_get_num(e, "loss"),
               rw_json_get_num(e, "align"), rw_json_get_num(e, "uniform"),
               rw_json_get_num(e, "collapse"), rank, wi, knn, lin,
               rw_json_get_num(e, "pairs_per_s"), left);
    } else if (!strcmp(t, "event") && !strcmp(jstr(e, "kind"), "collapse")) {
        int stop = !strcmp(jstr(e, "action"), "stop");
        printf("j%-4lld collapse alarm: %s; %s\n", jint(e, "job"), jstr(e, "why"),
               stop ? "stops the job (monitor.collapse.action stop)" : "training goes on");
    } else if (!strcmp(t, "event") && !strcmp(jstr(e, "kind"), "daemon")) {
        printf("* %s\n", jstr(e, "text"));
    } else if (!strcmp(t, "event") && !strcmp(jstr(e, "kind"), "job")) {
        json_t *j = json_object_get(e, "job");
        int why = json_is_string(json_object_get(e, "why"));
        printf("j%-4lld %s: %s%s%s%s%s%s\n", jint(j, "id"), jstr(j, "name"), jstr(j, "state"),
               json_is_string(json_object_get(j, "error")) ? ": " : "", jstr(j, "error"),
               why ? " (" : "", why ? jstr(e, "why") : "", why ? ")" : "");
        if (w->kind == 'g') {
            char g[32];
            snprintf(g, sizeof g, "grid g%lld", w->tid);
            print_grid_progress(g, json_object_get(e, "grid_progress"));
        }
    }
    fflush(stdout);
    json_decref(e);
}

/* A job's end that is not a failure: done, or stopped by the collapse
 * alarm (its numbers are where it stopped). */
static int ended_well(const char *state)
{
    return !strcmp(state, "done") || !strcmp(state, "collapsed");
}

/* 1 unless every job of w's target ended done or collapsed (the daemon's
 * view). */
static int watch_outcome(watched *w)
{
    int bad = 0;
    char t[32];
    size_t i;
    json_t *v;
    snprintf(t, sizeof t, "%c%lld", w->kind, w->tid);
    if (w->kind == 'g') {
        json_t *m = req_new("ls");
        json_object_set_new(m, "grid", json_string(t));
        json_t *lr = request(&w->c, m);
        json_array_foreach(json_object_get(lr, "jobs"), i, v) bad |= !ended_well(jstr(v, "state"));
        json_decref(lr);
    } else {
        json_t *m = req_new("show");
        json_object_set_new(m, "job", json_string(t));
        json_t *lr = request(&w->c, m);
        bad = !ended_well(jstr(json_object_get(lr, "job"), "state"));
        json_decref(lr);
    }
    return bad;
}

/* runawayd went away under the lost watches: once it takes clients again,
 * watches their targets anew (the jobs resume from their checkpoints; the
 * epochs between are reported again). */
static void watch_reconnect(watched *w, int n, const char *why)
{
    for (int k = 0; k < n; k++) {
        if (!w[k].lost)
            continue;
        reconnect(&w[k].c, why);
        why = NULL; /* said once */
        char t[32];
        snprintf(t, sizeof t, "%c%lld", w[k].kind, w[k].tid);
        printf("* runawayd is back: ");
        watch_open(&w[k], t);
    }
}

/* Prints the targets' events, as they come, until each has its watch_end;
 * rides out a restart of runawayd. Returns 0 if every job of every target
 * ended done or collapsed. */
static int watch_all(watched *w, int n)
{
    struct pollfd pf[RW_TARGETS_MAX];
    for (;;) {
        int open = 0;
        for (int k = 0; k < n; k++) {
            /* frames already read past the last one */
            json_t *e = NULL;
            char err[256];
            while (!w[k].ended &&
                   rw_frame_reader_next(&w[k].c.r, &e, err, sizeof err) == RW_FRAME_OK)
                watch_event(&w[k], e);
            pf[k] = (struct pollfd){.fd = w[k].ended ? -1 : w[k].c.fd, .events = POLLIN};
            open += !w[k].ended;
        }
        if (!open)
            break;
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        char why[256] = "";
        int lost = 0;
        for (int k = 0; k < n; k++) {
            if (w[k].ended || !pf[k].revents)
                continue;
            json_t *e = NULL;
            int rc = rw_frame_recv_fd(w[k].c.fd, &w[k].c.r, &e, 60000, why, sizeof why);
            if (rc > 0) {
                watch_event(&w[k], e);
            } else {
                if (rc == 0)
                    snprintf(why, sizeof why, "a frame cut off for 60 s");
                w[k].lost = lost = 1;
                conn_close(&w[k].c);
            }
        }
        if (lost)
            watch_reconnect(w, n, why);
    }
    int bad = 0;
    for (int k = 0; k < n; k++)
        if (!w[k].in_grid)
            bad |= watch_outcome(&w[k]);
    return bad;
}

/* watch on the connection c already has (runaway run) */
int watch(conn *c, const char *target)
{
    watched w = {.c = *c};
    watch_open(&w, target);
    int rc = watch_all(&w, 1);
    *c = w.c;
    json_decref(w.jobs);
    return rc;
}

int cmd_watch(int n, char **a)
{
    char *targets[RW_TARGETS_MAX];
    int nt = 0;
    for (int k = 0; k < n; k++) {
        if (a[k][0] == '-')
            usage_error("watch", "unexpected argument '%s'", a[k]);
        add_target("watch", targets, &nt, a[k]);
    }
    if (!nt)
        usage_error("watch", "which job or grid?");
    watched *w = calloc((size_t)nt, sizeof *w);
    if (!w)
        die("out of memory");
    for (int k = 0; k < nt; k++) {
        need_conn(&w[k].c);
        watch_open(&w[k], targets[k]);
    }
    /* closed at once: an unread stream would fill runawayd's queue for us */
    for (int k = 0; k < nt; k++)
        if ((w[k].in_grid = watched_in_a_grid(w, nt, k))) {
            w[k].ended = 1;
            conn_close(&w[k].c);
        }
    int rc = watch_all(w, nt);
    for (int k = 0; k < nt; k++) {
        conn_close(&w[k].c);
        json_decref(w[k].jobs);
    }
    free(w);
    return rc;
}
