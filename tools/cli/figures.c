/* runaway plot and runaway sphere: the figures, drawn by gnuplot. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"

/* sphere: the paper's Figure 3 */

/* sphere needs a job's weights and its training images. Where the client
 * sees the job's run folder as runawayd does, it runs `runaway-worker
 * sphere` itself; a client on another host (its socket forwarded over ssh)
 * asks runawayd to run it there, and draws the data file it sends. A folder
 * of the same path on that host (its own daemon's job of that number) is
 * not the job's: `version` is the identity of the final weights as runawayd
 * sees them. */
int run_dir_here(const char *path, const char *version)
{
    struct stat st;
    char w[PATH_MAX + 32], mine[96] = "";
    snprintf(w, sizeof w, "%s/weights.safetensors", path);
    if (version && stat(w, &st) == 0)
        rw_file_version(&st, mine, sizeof mine);
    return !(stat(path, &st) != 0 && errno == ENOENT) && !(version && strcmp(mine, version));
}

/* The epochs of a job's snapshots (`show`'s list, ascending): at most k of
 * them, evenly spread, the first and the last kept. */
static int snapshot_pick(const json_t *list, int k, int *out)
{
    int n = (int)json_array_size(list);
    int m = n < k ? n : k;
    for (int i = 0; i < m; i++)
        out[i] = (int)json_integer_value(
            json_array_get(list, m > 1 ? (size_t)((long)i * (n - 1) / (m - 1)) : (size_t)n - 1));
    return m;
}

/* The job's spec into dir/jN.yaml, its run folder into run_dir, whether the
 * client sees it (*here), and up to k of its snapshot epochs into ep
 * (returned: how many). */
static int sphere_spec(conn *c, const char *dir, long long job, char *run_dir, size_t len,
                       int *here, int k, int *ep)
{
    json_t *m = req_new("show");
    char id[32], spec[PATH_MAX];
    snprintf(id, sizeof id, "j%lld", job);
    json_object_set_new(m, "job", json_string(id));
    json_t *r = request(c, m);
    snprintf(spec, sizeof spec, "%s/j%lld.yaml", dir, job);
    snprintf(run_dir, len, "%s", jstr(r, "run_dir"));
    *here = run_dir_here(run_dir, json_string_value(json_object_get(r, "weights_version")));
    FILE *f = fopen(spec, "w");
    if (!f || fputs(jstr(r, "spec"), f) < 0 || fclose(f) != 0)
        die("%s: %s", spec, strerror(errno));
    int n = snapshot_pick(json_object_get(r, "snapshots"), k, ep);
    json_decref(r);
    return n;
}

/* Runs `runaway-worker sphere` on one weights file of job p->job into
 * p->data (its output beside it, .log) and reads the numbers. Dies with
 * the worker's last words when it fails. */
static void sphere_run(const char *dir, const char *weights, long samples, const char *backend,
                       rw_sphere_panel *p)
{
    char spec[PATH_MAX], logp[PATH_MAX + 8], ns[32];
    snprintf(spec, sizeof spec, "%s/j%lld.yaml", dir, p->job);
    snprintf(logp, sizeof logp, "%s.log", p->data);
    snprintf(ns, sizeof ns, "%ld", samples);
    if (access(weights, R_OK) != 0)
        die("sphere: j%lld: %s: %s", p->job, weights, strerror(errno));
    char bin[PATH_MAX];
    if (worker_bin)
        snprintf(bin, sizeof bin, "%s", worker_bin);
    else
        find_prog("runaway-worker", "worker", bin, sizeof bin);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, bin, "sphere", spec, weights, p->data, "--samples", ns, "--backend", backend,
              (char *)NULL);
        fprintf(stderr, "cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    char err[1024];
    int ran = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (ran && rw_sphere_read(p, err, sizeof err) != 0)
        die("sphere: j%lld: %s", p->job, err);
    if (!ran) {
        char tail[1024];
        rw_file_last_line(logp, "runaway-worker: no usable GPU", tail, sizeof tail);
        die("sphere: j%lld: %s", p->job, tail[0] ? tail : "runaway-worker sphere failed");
    }
}

/* The same, run by runawayd where the job's files are (epoch < 0: its final
 * weights): its data file into p->data. */
static void sphere_remote(conn *c, int epoch, long samples, const char *backend,
                          rw_sphere_panel *p)
{
    json_t *m = req_new("sphere");
    char id[32];
    snprintf(id, sizeof id, "j%lld", p->job);
    json_object_set_new(m, "job", json_string(id));
    if (epoch >= 0)
        json_object_set_new(m, "epoch", json_integer(epoch));
    json_object_set_new(m, "samples", json_integer(samples));
    json_object_set_new(m, "backend", json_string(backend));
    /* runawayd answers when runaway-worker is done: up to its hour */
    json_t *r = request_within(c, m, 3700);
    const char *data = json_string_value(json_object_get(r, "data"));
    FILE *f = fopen(p->data, "w");
    if (!data || !f || fputs(data, f) < 0 || fclose(f) != 0)
        die("sphere: %s: %s", p->data, data ? strerror(errno) : "runawayd sent no data");
    json_decref(r);
    char err[1024];
    if (rw_sphere_read(p, err, sizeof err) != 0)
        die("sphere: j%lld: %s", p->job, err);
}

static char sphere_tmp[PATH_MAX]; /* the temporary folder, removed at exit */

static void sphere_tmp_remove(void)
{
    if (sphere_tmp[0])
        rw_work_dir_remove(sphere_tmp);
}

int cmd_sphere(int n, char **a)
{
    const char *out = NULL, *data_dir = NULL, *backend = "auto";
    char *targets[RW_TARGETS_MAX];
    int nt = 0;
    long samples = 2048, snaps = 0;
    for (int k = 0; k < n; k++) {
        char *end;
        if ((!strcmp(a[k], "-o") || !strcmp(a[k], "--out")) && k + 1 < n)
            out = a[++k];
        else if (!strcmp(a[k], "--data") && k + 1 < n)
            data_dir = a[++k];
        else if (!strcmp(a[k], "--samples") && k + 1 < n) {
            samples = strtol(a[++k], &end, 10);
            if (*end || samples < 3 || samples > 50000)
                usage_error("sphere", "--samples takes 3..50000 images, not '%s'", a[k]);
        } else if (!strcmp(a[k], "--backend") && k + 1 < n) {
            backend = a[++k];
            if (strcmp(backend, "auto") && strcmp(backend, "cpu") && strcmp(backend, "cuda"))
                usage_error("sphere", "--backend is auto, cpu or cuda, not '%s'", backend);
        } else if (!strcmp(a[k], "--snapshots") && k + 1 < n) {
            snaps = strtol(a[++k], &end, 10);
            if (*end || snaps < 1 || snaps > 12)
                usage_error("sphere", "--snapshots takes 1..12 (epochs per job), not '%s'", a[k]);
        } else if (a[k][0] == '-')
            usage_error("sphere", "unexpected argument '%s'", a[k]);
        else
            add_target("sphere", targets, &nt, a[k]);
    }
    if (!nt)
        usage_error("sphere", "which job or grid?");
    if (out && rw_fig_format_of(out) == RW_FIG_BAD)
        usage_error("sphere", "-o %s: the figure is a %s file (by its extension)", out,
                    RW_FIG_EXTENSIONS);
    conn c;
    need_conn(&c);
    json_t *m = req_new("curves");
    set_targets(m, "target", "targets", targets, nt);
    json_t *r = request(&c, m);
    int by_job = !strcmp(jstr(r, "kind"), "job");
    json_t *jobs = json_object_get(r, "jobs");
    size_t nj = json_array_size(jobs), i;
    json_t *j;
    /* per variant, its finished job of the lowest seed */
    rw_sphere_panel *pick = calloc(nj ? nj : 1, sizeof *pick);
    int np = 0;
    if (!pick)
        die("out of memory");
    json_array_foreach(jobs, i, j)
    {
        const char *name = jstr(j, by_job ? "name" : "variant");
        int g = 0;
        while (g < np && strcmp(pick[g].title, name))
            g++;
        if (g == np)
            snprintf(pick[np++].title, sizeof pick[0].title, "%s", name);
        /* a job the collapse alarm stopped has its weights too */
        if (strcmp(jstr(j, "state"), "done") && strcmp(jstr(j, "state"), "collapsed"))
            continue;
        if (!pick[g].job || jint(j, "seed") < pick[g].seed) {
            pick[g].job = jint(j, "id");
            pick[g].seed = jint(j, "seed");
        }
    }
    char err[1024];
    if (rw_work_dir(data_dir, "sphere", sphere_tmp, sizeof sphere_tmp, err, sizeof err) != 0)
        die("sphere: %s", err);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", sphere_tmp);
    if (data_dir)
        sphere_tmp[0] = 0; /* the user's folder stays */
    else
        atexit(sphere_tmp_remove); /* also when a failure dies on the way */
    char out_abs[PATH_MAX] = "", out_tmp[PATH_MAX + 16] = "";
    if (out && rw_fig_target(out, out_abs, sizeof out_abs, out_tmp, sizeof out_tmp, err,
                             sizeof err) != 0)
        die("sphere: %s", err);
    /* panels: one per finished variant, or with --snapshots a row of its
     * snapshot epochs (an empty panel where a row is short) */
    int cols = 1, ndone = 0, total = 0;
    int (*ep)[12] = calloc((size_t)(np ? np : 1), sizeof *ep);
    int *ne = calloc((size_t)(np ? np : 1), sizeof *ne);
    char (*run_dir)[PATH_MAX] = calloc((size_t)(np ? np : 1), sizeof *run_dir);
    if (!ep || !ne || !run_dir)
        die("out of memory");
    int *here = calloc((size_t)(np ? np : 1), sizeof *here);
    if (!here)
        die("out of memory");
    for (int g = 0; g < np; g++) {
        if (!pick[g].job)
            continue;
        int k = sphere_spec(&c, dir, pick[g].job, run_dir[g], sizeof run_dir[g], &here[g],
                            snaps ? (int)snaps : 0, ep[g]);
        ne[g] = snaps ? k : 1;
        if (ne[g] == 0)
            die("sphere: j%lld has no snapshots in %s/snapshots (give its spec "
                "checkpoint.snapshot_every)", pick[g].job, run_dir[g]);
        if (!here[g])
            fprintf(stderr, "runaway: sphere: j%lld: its run folder is on runawayd's host, not "
                    "here: runawayd computes its projections there\n", pick[g].job);
        cols = ne[g] > cols ? ne[g] : cols;
        ndone++;
    }
    rw_sphere_panel *p = calloc((size_t)(ndone ? ndone : 1) * cols, sizeof *p);
    if (!p)
        die("out of memory");
    for (int g = 0; g < np; g++) {
        if (!pick[g].job)
            continue;
        for (int k = 0; k < (snaps ? cols : 1); k++) {
            rw_sphere_panel *q = &p[total++];
            if (k >= ne[g])
                continue; /* a short row: an empty panel keeps the columns aligned */
            char w[PATH_MAX + 64];
            *q = pick[g];
            if (snaps) {
                snprintf(q->title, sizeof q->title, "%s, epoch %d", pick[g].title, ep[g][k]);
                snprintf(w, sizeof w, "%s/snapshots/weights-e%05d.safetensors", run_dir[g],
                         ep[g][k]);
            } else {
                snprintf(w, sizeof w, "%s/weights.safetensors", run_dir[g]);
            }
            snprintf(q->data, sizeof q->data, "%s/sphere%d.dat", dir, total - 1);
            if (here[g])
                sphere_run(dir, w, samples, backend, q);
            else
                sphere_remote(&c, snaps ? ep[g][k] : -1, samples, backend, q);
        }
    }
    free(here);
    free(ep);
    free(ne);
    free(run_dir);
    char what[512] = ""; /* the targets as typed */
    for (int k = 0; k < nt; k++)
        snprintf(what + strlen(what), sizeof what - strlen(what), "%s%s", k ? " + " : "",
                 targets[k]);
    /* the images drawn, not the number asked: the worker takes at most
     * the training set, each image once */
    int lo, hi;
    char images[96];
    rw_sphere_images(p, total, &lo, &hi);
    if (hi == 0)
        snprintf(images, sizeof images, "no training images (no finished job)");
    else if (lo == hi)
        snprintf(images, sizeof images, "%d distinct training images", lo);
    else
        snprintf(images, sizeof images, "%d to %d distinct training images", lo, hi);
    printf("%s %s: projections f(x) of %s, PCA to 2-D, on the unit circle\n", jstr(r, "kind"),
           what, images);
    if (ndone && hi < samples)
        printf("(--samples %ld is more than the training set%s: each image is drawn once)\n",
               samples, lo == hi ? " holds" : "s hold");
    printf("%-28s %-7s %5s %8s %10s %9s  %s\n", by_job ? "job" : "variant", "job", "seed", "R",
           "L_uniform", "densest", "PCA share");
    for (int k = 0; k < total; k++)
        if (p[k].job)
            printf("%-28s j%-6lld %5lld %8.4f %10.4f %8.1f%%  %.1f%% + %.1f%%\n", p[k].title,
                   p[k].job, p[k].seed, p[k].R, p[k].uniform, 100 * p[k].densest,
                   100 * p[k].evr[0], 100 * p[k].evr[1]);
    if (ndone < np)
        printf("(%d variant%s without a finished job)\n", np - ndone, np - ndone == 1 ? "" : "s");
    printf("R: length of the mean unit vector (0: spread, 1: one point); L_uniform on the circle "
           "(lower: more uniform); densest: share of points on the fullest 45-degree arc\n");
    int rc = 0;
    if (ndone == 0) {
        fprintf(stderr, "runaway: sphere: %s has no finished job\n", what);
        rc = 1;
    } else if (out) {
        char title[256];
        snprintf(title, sizeof title, "%s %s: representations on the circle (PCA of f(x), %s; "
                 "red: two views of a sample)", jstr(r, "kind"), what, images);
        if (rw_sphere_draw(p, total, snaps ? cols : 0, title, dir, rw_fig_format_of(out), out_tmp,
                           err, sizeof err) != 0 ||
            rw_gnuplot_run(rw_gnuplot_prog(NULL), dir, err, sizeof err) != 0 ||
            rename(out_tmp, out_abs) != 0) {
            if (!err[0])
                snprintf(err, sizeof err, "%s: %s", out_abs, strerror(errno));
            unlink(out_tmp);
            rc = 1;
            fprintf(stderr, "runaway: sphere: %s\n", err);
        } else {
            printf("%s\n", out);
        }
    }
    free(p);
    free(pick);
    json_decref(r);
    conn_close(&c);
    return rc;
}

/* plot: the `curves` reply drawn once, or every `every` seconds until no
 * job is queued or running (a PNG viewer that reloads shows it live). */
int cmd_plot(int n, char **a)
{
    char *targets[RW_TARGETS_MAX];
    int nt = 0;
    rw_plot_opts o = {.cols = 90, .rows = 22};
    double every = 0;
    for (int k = 0; k < n; k++) {
        if ((!strcmp(a[k], "-o") || !strcmp(a[k], "--out")) && k + 1 < n)
            o.out = a[++k];
        else if (!strcmp(a[k], "--data") && k + 1 < n)
            o.data_dir = a[++k];
        else if (!strcmp(a[k], "--every") && k + 1 < n) {
            char *end;
            every = strtod(a[++k], &end);
            if (*end || !(every >= 0.2 && every <= 86400))
                usage_error("plot", "--every takes seconds between 0.2 and 86400, not '%s'", a[k]);
        } else if (!strcmp(a[k], "--size") && k + 1 < n) {
            if (sscanf(a[++k], "%dx%d", &o.cols, &o.rows) != 2 || o.cols < 20 || o.rows < 8 ||
                o.cols > 1000 || o.rows > 500)
                usage_error("plot", "--size takes COLSxROWS (at least 20x8), not '%s'", a[k]);
        } else if (a[k][0] == '-')
            usage_error("plot", "unexpected argument '%s'", a[k]);
        else
            add_target("plot", targets, &nt, a[k]);
    }
    if (!nt)
        usage_error("plot", "which job or grid?");
    if (o.out && rw_fig_format_of(o.out) == RW_FIG_BAD)
        usage_error("plot", "-o %s: the figure is a %s file (by its extension)", o.out,
                    RW_FIG_EXTENSIONS);
    conn c;
    need_conn(&c);
    for (;;) {
        json_t *m = req_new("curves");
        set_targets(m, "target", "targets", targets, nt);
        char why[256] = "";
        json_t *r = every > 0 ? request_or_lost(&c, m, 600, why, sizeof why) : request(&c, m);
        if (!r) { /* --every rides out a restart of runawayd */
            reconnect(&c, why);
            continue;
        }
        int live = 0;
        size_t i;
        json_t *j;
        json_array_foreach(json_object_get(r, "jobs"), i, j)
        {
            const char *st = jstr(j, "state");
            live |= !strcmp(st, "queued") || !strcmp(st, "running");
        }
        if (every > 0 && !o.out)
            printf("\033[H\033[2J"); /* redraw in place */
        char err[1024];
        if (rw_plot_render(r, &o, err, sizeof err) != 0)
            die("plot: %s", err);
        json_decref(r);
        if (o.out && every > 0)
            fprintf(stderr, "runaway: %s drawn%s\n", o.out, live ? "" : "; every job has ended");
        fflush(stdout);
        if (every <= 0 || !live)
            break;
        struct timespec ts = {(time_t)every, (long)((every - (double)(time_t)every) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    conn_close(&c);
    if (o.out && every <= 0)
        printf("%s\n", o.out);
    return 0;
}
