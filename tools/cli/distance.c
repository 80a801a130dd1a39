/* runaway distance: how far apart the weights of pairs of jobs move, epoch
 * by epoch, from the snapshots checkpoint.snapshot_every keeps: the
 * experiment of the paper's Theorem 5.1 (BYOL' from (theta0, W0) and RAFT
 * from (theta0, -W0) move theta identically) and its controls
 * (conf/theorem-5-1.yaml, docs/theorem-5-1.md).
 *
 * The weights files are read by `runaway-worker distance`, as `runaway
 * sphere` runs `runaway-worker sphere`: what the tensors are (which is the
 * encoder, which layer is W's output) is the worker's knowledge, and the
 * CLI links proto/ alone. So the run folders must be readable here: this
 * host is runawayd's, or shares its state folder at the same path. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proto/msg.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"

#define PAIRS_MAX 16
/* "parted": the two encoders apart by over a tenth of the way the first
 * moved from its start, so the runs no longer share most of their path;
 * a distance alone says little: the weights move a few % in all. */
#define PARTED 0.1

typedef struct djob {
    long long id;
    char name[192];
    char dir[PATH_MAX];
} djob;

typedef struct dpair {
    djob a, b;
    json_t *res; /* runaway-worker distance's reply */
} dpair;

/* A job's number, name and run folder, which must hold snapshots and be
 * readable here. */
static void job_of(conn *c, const char *arg, djob *j)
{
    json_t *m = req_new("show");
    json_object_set_new(m, "job", json_string(arg));
    json_t *r = request(c, m);
    json_t *jo = json_object_get(r, "job");
    j->id = jint(jo, "id");
    snprintf(j->name, sizeof j->name, "%s", jstr(jo, "name"));
    snprintf(j->dir, sizeof j->dir, "%s", jstr(r, "run_dir"));
    errno = 0;
    int here = run_dir_here(j->dir, json_string_value(json_object_get(r, "weights_version")));
    if (!here || access(j->dir, R_OK | X_OK) != 0)
        die("distance: j%lld: its run folder %s is not readable here (%s): runaway distance "
            "reads the jobs' snapshots itself, so run it on runawayd's host, or on one that "
            "shares its state folder at the same path", j->id, j->dir,
            here ? strerror(errno) : "missing, or another host's folder of that name");
    if (json_array_size(json_object_get(r, "snapshots")) == 0)
        die("distance: j%lld (%s) has no snapshots: its spec sets no "
            "checkpoint.snapshot_every, or it has not started", j->id, j->name);
    json_decref(r);
}

/* `runaway-worker distance A B`: its JSON, or death with its last words. */
static json_t *worker_distance(const dpair *p)
{
    char bin[PATH_MAX];
    if (worker_bin)
        snprintf(bin, sizeof bin, "%s", worker_bin);
    else
        find_prog("runaway-worker", "worker", bin, sizeof bin);
    int fd[2];
    if (pipe(fd) != 0)
        die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(fd[1], 1);
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        execl(bin, bin, "distance", p->a.dir, p->b.dir, (char *)NULL);
        fprintf(stderr, "cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    close(fd[1]);
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    ssize_t k;
    while (buf && (k = read(fd[0], buf + len, cap - len - 1)) != 0) {
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            break;
        len += (size_t)k;
        if (len + 1 == cap) {
            char *more = realloc(buf, cap *= 2);
            if (!more)
                die("out of memory");
            buf = more;
        }
    }
    close(fd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!buf)
        die("out of memory");
    buf[len] = 0;
    json_error_t jerr;
    json_t *o = WIFEXITED(st) && WEXITSTATUS(st) == 0 ? json_loads(buf, 0, &jerr) : NULL;
    if (!json_is_object(o)) {
        char *nl = len ? buf + len - 1 : buf;
        while (nl > buf && *nl == '\n')
            *nl-- = 0;
        die("distance: j%lld vs j%lld: %s", p->a.id, p->b.id,
            len ? buf : "runaway-worker distance failed");
    }
    free(buf);
    return o;
}

/* A job's name without its grid: the variant and seed. */
static const char *short_name(const djob *j)
{
    const char *s = strchr(j->name, '/');
    return s && s[1] ? s + 1 : j->name;
}

static void fmt_dist(const json_t *v, char *out, size_t len)
{
    if (!json_is_number(v))
        snprintf(out, len, "-");
    else if (json_number_value(v) == 0)
        snprintf(out, len, "0");
    else
        snprintf(out, len, "%.3e", json_number_value(v));
}

/* The epochs only one of the pair has snapshots of. */
static void print_unmatched(const djob *j, const json_t *list)
{
    if (json_array_size(list) == 0)
        return;
    printf("  left out, epochs only j%lld has:", j->id);
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) printf(" %lld", json_integer_value(e));
    printf("\n");
}

static double num_at(const json_t *r, const char *col, size_t k)
{
    const json_t *v = json_array_get(json_object_get(r, col), k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static void print_text(const dpair *p, int np)
{
    for (int i = 0; i < np; i++) {
        const json_t *r = p[i].res, *ep = json_object_get(r, "epochs");
        int pred = json_is_array(json_object_get(r, "predictor"));
        printf("%sj%lld %s  vs  j%lld %s: %lld encoder parameters", i ? "\n" : "", p[i].a.id,
               p[i].a.name, p[i].b.id, p[i].b.name, jint(r, "params"));
        if (pred && jint(r, "sign") < 0)
            printf("; predictors with j%lld's output layer negated back (one run started "
                   "from -W0)", p[i].b.id);
        printf("\n");
        print_unmatched(&p[i].a, json_object_get(r, "only_a"));
        print_unmatched(&p[i].b, json_object_get(r, "only_b"));
        printf("  |A - B| / |A| with A = j%lld, and for scale how far A moved from its epoch "
               "%lld, |A - A%lld| / |A|\n", p[i].a.id, jint(r, "start_a"), jint(r, "start_a"));
        printf("  %5s  %-10s  %-10s", "epoch", "encoder", "A moved");
        printf(pred ? "  %-10s  %s\n" : "\n", "predictor", "A's moved");
        long long parted = -1;
        for (size_t k = 0; k < json_array_size(ep); k++) {
            const char *col[4] = {"encoder", "moved_a", "predictor", "moved_a_predictor"};
            long long e = json_integer_value(json_array_get(ep, k));
            printf("  %5lld", e);
            for (int c = 0; c < (pred ? 4 : 2); c++) {
                char t[32];
                fmt_dist(json_array_get(json_object_get(r, col[c]), k), t, sizeof t);
                printf("  %-10s", t);
            }
            printf("\n");
            /* not before A has moved: a nudge at the start is no parting */
            double moved = num_at(r, "moved_a", k);
            if (parted < 0 && moved > 0 && num_at(r, "encoder", k) > PARTED * moved)
                parted = e;
        }
        size_t last = json_array_size(ep) - 1;
        if (parted >= 0)
            printf("  the encoders part (apart by over %g of the way A moved) at epoch %lld\n",
                   PARTED, parted);
        else
            printf("  the encoders stay together: at epoch %lld apart by %.2g of the way A "
                   "moved\n", json_integer_value(json_array_get(ep, last)),
                   num_at(r, "encoder", last) / num_at(r, "moved_a", last));
    }
}

/* ---- the figure ---- */

/* One data file per pair: epoch, encoder, predictor ('?': none). */
static int write_data(const char *dir, const dpair *p, int np, char *err, size_t errlen)
{
    for (int i = 0; i < np; i++) {
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/pair%d.dat", dir, i);
        FILE *f = fopen(path, "w");
        if (!f) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            return -1;
        }
        fprintf(f, "# j%lld %s vs j%lld %s: epoch, relative distance of the encoders, of the "
                   "predictors, how far the first's encoder and predictor moved from its start "
                   "('?': none)\n", p[i].a.id, p[i].a.name, p[i].b.id, p[i].b.name);
        const json_t *r = p[i].res, *ep = json_object_get(r, "epochs");
        for (size_t k = 0; k < json_array_size(ep); k++) {
            fprintf(f, "%lld", json_integer_value(json_array_get(ep, k)));
            const char *col[4] = {"encoder", "predictor", "moved_a", "moved_a_predictor"};
            for (int c = 0; c < 4; c++) {
                const json_t *v = json_array_get(json_object_get(r, col[c]), k);
                if (json_is_number(v))
                    fprintf(f, " %.17g", json_number_value(v));
                else
                    fprintf(f, " ?");
            }
            fputc('\n', f);
        }
        if (fclose(f) != 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* The smallest and largest distance above 0 of column col (NAN: none). */
static void span(const dpair *p, int np, const char *col, double *lo, double *hi)
{
    *lo = *hi = NAN;
    for (int i = 0; i < np; i++) {
        const json_t *a = json_object_get(p[i].res, col);
        for (size_t k = 0; k < json_array_size(a); k++) {
            double v = json_number_value(json_array_get(a, k));
            if (!(v > 0))
                continue;
            *lo = isnan(*lo) || v < *lo ? v : *lo;
            *hi = isnan(*hi) || v > *hi ? v : *hi;
        }
    }
}

/* Two panels (encoder, predictor), log y: an exact 0 has no place on a log
 * axis, so it is drawn at `floor`, a decade under the smallest distance
 * drawn, on a dotted line that the key names. */
static int write_script(const char *dir, const dpair *p, int np, rw_fig_format fmt,
                        const char *out_tmp, char *err, size_t errlen)
{
    double lo = NAN, hi = NAN;
    const char *cols[4] = {"encoder", "predictor", "moved_a", "moved_a_predictor"};
    for (int c = 0; c < 4; c++) {
        double l, h;
        span(p, np, cols[c], &l, &h);
        lo = !isnan(l) && (isnan(lo) || l < lo) ? l : lo;
        hi = !isnan(h) && (isnan(hi) || h > hi) ? h : hi;
    }
    double floor_ = isnan(lo) ? 1e-12 : pow(10, floor(log10(lo)) - 1);
    double top = isnan(hi) ? 1 : pow(10, ceil(log10(hi)));
    int panels = 1;
    for (int i = 0; i < np; i++)
        panels |= json_is_array(json_object_get(p[i].res, "predictor")) << 1;
    panels = panels == 3 ? 2 : 1;

    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/plot.gp", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    fprintf(f, "# written by runaway distance; run in this folder: gnuplot plot.gp\n");
    rw_gp_terminal(f, fmt, 620 * panels, 520);
    fprintf(f, "set output ");
    rw_gp_quote(f, out_tmp);
    fprintf(f, "\nfloor = %.3g\n", floor_);
    fprintf(f, "set logscale y\nset format y '1e%%L'\nset yrange [floor / 3:%.3g]\n"
               "set xlabel 'epoch'\nset autoscale xfix\nset grid\n"
               "set key bottom right Left reverse\n",
            top);
    fprintf(f, "set multiplot layout 1,%d title 'relative L2 distance |x_A - x_B| / |x_A| "
               "of two runs, per epoch'\n", panels);
    for (int panel = 0; panel < panels; panel++) {
        int col = panel ? 3 : 2;
        fprintf(f, "set title '%s'\nset ylabel 'relative distance'\n",
                panel ? "the predictor (W of a -W0 start negated back)"
                      : "the online encoder theta");
        fprintf(f, "plot floor with lines lc rgb '#999999' dt 3 title 'exact 0, drawn at %.0e'",
                floor_);
        for (int i = 0; i < np; i++) {
            if (panel && !json_is_array(json_object_get(p[i].res, "predictor")))
                continue;
            char t[512];
            snprintf(t, sizeof t, "%s vs %s", short_name(&p[i].a), short_name(&p[i].b));
            fprintf(f, ", \\\n  'pair%d.dat' using 1:($%d == 0 ? floor : $%d) with linespoints "
                       "lc rgb '%s' lw 1.5 pt %d title ", i, col, col, rw_palette(i), i % 8 + 1);
            rw_gp_quote(f, t);
        }
        /* for scale: how far each first job moved from its start (once a
         * job), dashed in its first pair's colour; its 0 at the start is
         * left out */
        for (int i = 0; i < np; i++) {
            int seen = 0;
            for (int k = 0; k < i; k++)
                seen |= p[k].a.id == p[i].a.id;
            if (seen || (panel && !json_is_array(json_object_get(p[i].res, "predictor"))))
                continue;
            char t[512];
            snprintf(t, sizeof t, "%s: moved from epoch %lld", short_name(&p[i].a),
                     jint(p[i].res, "start_a"));
            fprintf(f, ", \\\n  'pair%d.dat' using 1:($%d == 0 ? 1/0 : $%d) with lines "
                       "lc rgb '%s' lw 1.5 dt 2 title ", i, col + 2, col + 2, rw_palette(i));
            rw_gp_quote(f, t);
        }
        fprintf(f, "\n");
    }
    fprintf(f, "unset multiplot\n");
    if (fclose(f) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static char distance_tmp[PATH_MAX]; /* the temporary folder, removed at exit */

static void distance_tmp_remove(void)
{
    if (distance_tmp[0])
        rw_work_dir_remove(distance_tmp);
}

static void draw(const dpair *p, int np, const char *out, const char *data_dir)
{
    char err[1024], dir[PATH_MAX];
    if (rw_work_dir(data_dir, "distance", distance_tmp, sizeof distance_tmp, err,
                    sizeof err) != 0)
        die("distance: %s", err);
    snprintf(dir, sizeof dir, "%s", distance_tmp);
    if (data_dir)
        distance_tmp[0] = 0; /* the user's folder stays */
    else
        atexit(distance_tmp_remove);
    char out_abs[PATH_MAX] = "", out_tmp[PATH_MAX + 16] = "";
    if (rw_fig_target(out, out_abs, sizeof out_abs, out_tmp, sizeof out_tmp, err,
                      sizeof err) != 0 ||
        write_data(dir, p, np, err, sizeof err) != 0 ||
        write_script(dir, p, np, rw_fig_format_of(out), out_tmp, err, sizeof err) != 0 ||
        rw_gnuplot_run(rw_gnuplot_prog(NULL), dir, err, sizeof err) != 0) {
        unlink(out_tmp);
        die("distance: %s", err);
    }
    if (rename(out_tmp, out_abs) != 0) {
        unlink(out_tmp);
        die("distance: %s: %s", out_abs, strerror(errno));
    }
    if (!cli_json)
        printf("\nwrote %s\n", out_abs);
}

static json_t *job_json(const djob *j)
{
    json_t *o = json_object();
    json_object_set_new(o, "job", json_integer(j->id));
    json_object_set_new(o, "name", json_string(j->name));
    json_object_set_new(o, "run_dir", json_string(j->dir));
    return o;
}

int cmd_distance(int n, char **a)
{
    const char *out = NULL, *data_dir = NULL;
    char *jobs[2 * PAIRS_MAX];
    int nj = 0;
    for (int k = 0; k < n; k++) {
        if ((!strcmp(a[k], "-o") || !strcmp(a[k], "--out")) && k + 1 < n)
            out = a[++k];
        else if (!strcmp(a[k], "--data") && k + 1 < n)
            data_dir = a[++k];
        else if (a[k][0] == '-')
            usage_error("distance", "unexpected argument '%s'", a[k]);
        else if (nj == 2 * PAIRS_MAX)
            usage_error("distance", "at most %d pairs", PAIRS_MAX);
        else
            jobs[nj++] = a[k];
    }
    if (nj < 2 || nj % 2)
        usage_error("distance", "jobs come in pairs: JOB_A JOB_B [JOB_C JOB_D ...] (%d given)",
                    nj);
    if (out && rw_fig_format_of(out) == RW_FIG_BAD)
        usage_error("distance", "-o %s: the figure is a %s file (by its extension)", out,
                    RW_FIG_EXTENSIONS);
    conn c;
    need_conn(&c);
    dpair p[PAIRS_MAX];
    int np = nj / 2;
    for (int i = 0; i < np; i++) {
        job_of(&c, jobs[2 * i], &p[i].a);
        job_of(&c, jobs[2 * i + 1], &p[i].b);
    }
    conn_close(&c);
    for (int i = 0; i < np; i++)
        p[i].res = worker_distance(&p[i]);
    if (cli_json) {
        json_t *all = json_array();
        for (int i = 0; i < np; i++) {
            json_t *o = json_deep_copy(p[i].res);
            json_object_set_new(o, "a", job_json(&p[i].a));
            json_object_set_new(o, "b", job_json(&p[i].b));
            json_array_append_new(all, o);
        }
        json_t *doc = json_object();
        json_object_set_new(doc, "pairs", all);
        if (out)
            draw(p, np, out, data_dir);
        print_json(doc);
    } else {
        print_text(p, np);
        if (out)
            draw(p, np, out, data_dir);
    }
    for (int i = 0; i < np; i++)
        json_decref(p[i].res);
    return CLI_OK;
}
