/* runaway plot: curves from runawayd, drawn by gnuplot (tools/cli/plot.h). */
#include "tools/cli/plot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static double num_or_nan(const json_t *v)
{
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* ---- grouping ---- */

typedef struct acc {
    double sum[RW_CURVE_COLS], sumsq[RW_CURVE_COLS];
    int cnt[RW_CURVE_COLS];
} acc;

static int cmp_epoch(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void rw_curves_free(rw_curve *c, int n)
{
    for (int i = 0; c && i < n; i++) {
        free(c[i].rows);
        free(c[i].sd);
    }
    free(c);
}

int rw_curves_group(const json_t *curves, rw_curve **out)
{
    const json_t *jobs = json_object_get(curves, "jobs");
    int by_job = !strcmp(json_string_value(json_object_get(curves, "kind")) ?: "", "job");
    size_t nj = json_array_size(jobs);
    rw_curve *cv = calloc(nj ? nj : 1, sizeof *cv);
    int *group = calloc(nj ? nj : 1, sizeof *group);
    int ng = 0;
    if (!cv || !group)
        goto oom;
    for (size_t i = 0; i < nj; i++) {
        const json_t *j = json_array_get(jobs, i);
        const char *name = json_string_value(json_object_get(j, by_job ? "name" : "variant"));
        if (!name)
            name = "?";
        int g = 0;
        while (g < ng && strcmp(cv[g].name, name) != 0)
            g++;
        if (g == ng)
            snprintf(cv[ng++].name, sizeof cv[0].name, "%s", name);
        group[i] = g;
        cv[g].njobs++;
    }
    for (int g = 0; g < ng; g++) {
        /* the union of the group's epochs, sorted */
        size_t total = 0;
        for (size_t i = 0; i < nj; i++)
            if (group[i] == g)
                total += json_array_size(json_object_get(json_array_get(jobs, i), "epochs"));
        double *ep = malloc((total ? total : 1) * sizeof *ep);
        if (!ep)
            goto oom;
        size_t k = 0;
        for (size_t i = 0; i < nj; i++) {
            if (group[i] != g)
                continue;
            const json_t *rows = json_object_get(json_array_get(jobs, i), "epochs");
            for (size_t r = 0; r < json_array_size(rows); r++)
                ep[k++] = num_or_nan(json_array_get(json_array_get(rows, r), 0));
        }
        qsort(ep, k, sizeof *ep, cmp_epoch);
        size_t ne = 0;
        for (size_t r = 0; r < k; r++)
            if (isfinite(ep[r]) && (ne == 0 || ep[ne - 1] != ep[r]))
                ep[ne++] = ep[r];
        acc *a = calloc(ne ? ne : 1, sizeof *a);
        cv[g].rows = malloc((ne ? ne : 1) * RW_CURVE_COLS * sizeof(double));
        cv[g].sd = malloc((ne ? ne : 1) * RW_CURVE_COLS * sizeof(double));
        if (!a || !cv[g].rows || !cv[g].sd) {
            free(a);
            free(ep);
            goto oom;
        }
        for (size_t i = 0; i < nj; i++) {
            if (group[i] != g)
                continue;
            const json_t *rows = json_object_get(json_array_get(jobs, i), "epochs");
            for (size_t r = 0; r < json_array_size(rows); r++) {
                const json_t *row = json_array_get(rows, r);
                double e = num_or_nan(json_array_get(row, 0));
                double *hit = bsearch(&e, ep, ne, sizeof *ep, cmp_epoch);
                if (!hit)
                    continue;
                acc *x = &a[hit - ep];
                for (int col = 1; col < RW_CURVE_COLS; col++) {
                    double v = num_or_nan(json_array_get(row, (size_t)col));
                    if (isfinite(v)) {
                        x->sum[col] += v;
                        x->sumsq[col] += v * v;
                        x->cnt[col]++;
                    }
                }
            }
        }
        for (size_t r = 0; r < ne; r++) {
            double *o = cv[g].rows + r * RW_CURVE_COLS;
            double *sd = cv[g].sd + r * RW_CURVE_COLS;
            o[0] = ep[r];
            sd[0] = NAN;
            for (int col = 1; col < RW_CURVE_COLS; col++) {
                int n = a[r].cnt[col];
                o[col] = n ? a[r].sum[col] / n : NAN;
                /* sample std, as the table's; a few seeds' values in double:
                 * the cancellation is far below what a plot shows */
                double ss = a[r].sumsq[col] - a[r].sum[col] * o[col];
                sd[col] = n > 1 ? sqrt(ss > 0 ? ss / (n - 1) : 0) : NAN;
            }
        }
        cv[g].n = ne;
        free(a);
        free(ep);
    }
    free(group);
    *out = cv;
    return ng;
oom:
    rw_curves_free(cv, ng);
    free(group);
    return -1;
}

/* ---- drawing ---- */

void rw_gp_quote(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

static int write_data(const char *dir, const rw_curve *cv, int ng, char *err, size_t errlen)
{
    for (int g = 0; g < ng; g++) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/curve%d.dat", dir, g);
        FILE *f = fopen(p, "w");
        if (!f) {
            snprintf(err, errlen, "%s: %s", p, strerror(errno));
            return -1;
        }
        fprintf(f, "# %s: mean over %d job%s per epoch ('?': none reported)\n", cv[g].name,
                cv[g].njobs, cv[g].njobs == 1 ? "" : "s");
        fprintf(f, "# epoch loss align uniform collapse knn rank linear w_cos_i, then the sample "
                   "std over the jobs of each ('?': fewer than two)\n");
        for (size_t r = 0; r < cv[g].n; r++) {
            const double *o = cv[g].rows + r * RW_CURVE_COLS, *sd = cv[g].sd + r * RW_CURVE_COLS;
            fprintf(f, "%.0f", o[0]);
            for (int col = 1; col < 2 * RW_CURVE_COLS - 1; col++) {
                double v = col < RW_CURVE_COLS ? o[col] : sd[col - RW_CURVE_COLS + 1];
                if (isfinite(v))
                    fprintf(f, " %.9g", v);
                else
                    fprintf(f, " ?");
            }
            fputc('\n', f);
        }
        if (fclose(f) != 0) {
            snprintf(err, errlen, "%s: %s", p, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* One panel: every curve's column `col` (x `scale`). A column no curve has
 * a value in (kNN never measured) gets an empty panel that says so:
 * gnuplot refuses to plot nothing at all. */
/* Whether curve g has a std at any epoch of column col (two jobs or more). */
static int has_band(const rw_curve *c, int col)
{
    for (size_t r = 0; r < c->n; r++)
        if (isfinite(c->sd[r * RW_CURVE_COLS + col]))
            return 1;
    return 0;
}

/* bands: the mean ± one std over seeds, shaded in the curve's colour
 * (a PNG; a terminal draws the means only). */
static void panel(FILE *f, const char *title, int col, double scale, int ng,
                  const rw_curve *cv, int bands)
{
    fprintf(f, "set title ");
    rw_gp_quote(f, title);
    int any = 0;
    for (int g = 0; g < ng && !any; g++)
        for (size_t r = 0; r < cv[g].n && !any; r++)
            any = isfinite(cv[g].rows[r * RW_CURVE_COLS + col]);
    if (!any) {
        fprintf(f, "\nset label 1 'none reported (yet)' at graph 0.5,0.5 center\n"
                   "plot [0:1] [0:1] NaN notitle\nunset label 1\n");
        return;
    }
    fprintf(f, "\nplot ");
    int first = 1;
    for (int g = 0; g < ng; g++) {
        /* one epoch only (the random baseline's epoch 0): a dashed level
         * across the panel, as the paper draws baselines, not a lone dot
         * on the axis */
        double v = cv[g].n == 1 ? cv[g].rows[col] : NAN;
        if (cv[g].n == 1 && !isfinite(v))
            continue;
        fprintf(f, "%s", first ? "" : ", ");
        first = 0;
        if (bands && cv[g].n > 1 && has_band(&cv[g], col))
            fprintf(f, "'curve%d.dat' using 1:(($%d-$%d)*%g):(($%d+$%d)*%g) with filledcurves "
                       "fs transparent solid 0.18 noborder lc %d notitle, ",
                    g, col + 1, col + RW_CURVE_COLS, scale, col + 1, col + RW_CURVE_COLS, scale,
                    g % 8 + 1);
        if (cv[g].n == 1)
            fprintf(f, "%.9g with lines lt %d dt 2 title ", v * scale, g % 8 + 1);
        else if (g < 8)
            fprintf(f, "'curve%d.dat' using 1:($%d*%g) with linespoints ls %d title ", g,
                    col + 1, scale, g + 1);
        else /* past 8 (a sweep): the colours again, with other point shapes */
            fprintf(f, "'curve%d.dat' using 1:($%d*%g) with linespoints ls %d pt %d title ", g,
                    col + 1, scale, g % 8 + 1, 4 + (g / 8 - 1) % 10);
        rw_gp_quote(f, cv[g].name);
    }
    fprintf(f, "\n");
}

/* The paper's Figure 5: each variant's path through the (L_uniform(f),
 * L_align(q.f)) plane, one point an epoch, its last epoch marked so the
 * direction reads; a one-epoch curve (the random baseline) is one point. */
static void trace_panel(FILE *f, int ng, const rw_curve *cv)
{
    fprintf(f, "set title 'L_align(q.f) against L_uniform(f), epoch by epoch (dot: the last)'\n"
               "set xlabel 'L_uniform(f)'\nset ylabel 'L_align(q.f)'\n");
    int first = 1;
    for (int g = 0; g < ng; g++) {
        size_t last = 0; /* rows with both, the newest */
        int any = 0;
        for (size_t r = 0; r < cv[g].n; r++)
            if (isfinite(cv[g].rows[r * RW_CURVE_COLS + 2]) &&
                isfinite(cv[g].rows[r * RW_CURVE_COLS + 3]))
                any = 1, last = r;
        if (!any)
            continue;
        const double *o = cv[g].rows + last * RW_CURVE_COLS;
        int ls = g % 8 + 1, pt = g < 8 ? 0 : 4 + (g / 8 - 1) % 10;
        fprintf(f, "%s", first ? "plot " : ", ");
        first = 0;
        if (pt)
            fprintf(f, "'curve%d.dat' using 4:3 with linespoints ls %d pt %d title ", g, ls, pt);
        else
            fprintf(f, "'curve%d.dat' using 4:3 with linespoints ls %d title ", g, ls);
        rw_gp_quote(f, cv[g].name);
        /* the last epoch, larger, untitled: where the variant ended */
        fprintf(f, ", '+' using (%.9g):(%.9g) every ::0::0 with points ls %d pt 7 ps 1.5 notitle",
                o[3], o[2], ls);
    }
    if (first)
        fprintf(f, "set label 1 'none reported (yet)' at graph 0.5,0.5 center\n"
                   "plot [0:1] [0:1] NaN notitle\nunset label 1");
    fprintf(f, "\nset xlabel 'epoch'\nunset ylabel\n");
}

static int write_script(const char *dir, const json_t *curves, const rw_curve *cv, int ng,
                        const rw_plot_opts *o, const char *out_tmp, char *err, size_t errlen)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/plot.gp", dir);
    FILE *f = fopen(p, "w");
    if (!f) {
        snprintf(err, errlen, "%s: %s", p, strerror(errno));
        return -1;
    }
    const char *kind = json_string_value(json_object_get(curves, "kind"));
    const char *name = json_string_value(json_object_get(curves, "name"));
    char title[1200], id[32] = "";
    const json_t *tid = json_object_get(curves, "target_id"); /* absent: several targets */
    if (tid)
        snprintf(id, sizeof id, "%c%lld ", kind && !strcmp(kind, "grid") ? 'g' : 'j',
                 (long long)json_integer_value(tid));
    snprintf(title, sizeof title, "%s%s %s%s: %s per epoch", kind ? kind : "?", tid ? "" : "s", id,
             name ? name : "", kind && !strcmp(kind, "grid") ? "mean over seeds" : "metrics");
    fprintf(f, "# written by runaway plot; run in this folder: gnuplot plot.gp\n");
    fprintf(f, "set datafile missing '?'\nset xlabel 'epoch'\nset grid\n");
    fprintf(f, "set style data linespoints\nset pointsize 0.5\n");
    if (o->out) {
        fprintf(f, "set terminal pngcairo size 2000,1350 noenhanced font ',10'\nset output ");
        rw_gp_quote(f, out_tmp);
        fprintf(f, "\nset key top right font ',8'\nset multiplot layout 3,3 title ");
        rw_gp_quote(f, title);
        fprintf(f, "\n");
    } else {
        fprintf(f, "set terminal dumb size %d,%d noenhanced\nset key top right\n", o->cols,
                o->rows);
        fprintf(f, "set print '-'\nprint ");
        rw_gp_quote(f, title);
        fprintf(f, "\n");
    }
    /* the PNG's 3x3 grid holds the seven, the trace and W; a terminal the first three */
    static const struct {
        const char *title;
        int col;
        double scale;
    } panels[] = {
        {"L_align(q.f)", 2, 1},
        {"L_uniform(f)", 3, 1},
        {"training loss", 1, 1},
        {"collapse std (1: spread, 0: collapsed)", 4, 1},
        {"kNN top-1 (%)", 5, 100},
        {"effective rank of f", 6, 1},
        {"linear evaluation top-1 (%)", 7, 100},
        {"cos(W, I) of a linear predictor W (BYOL' from W0 ~ RAFT from -W0)", 8, 1},
    };
    for (int k = 0; k < (o->out ? 7 : 3); k++)
        panel(f, panels[k].title, panels[k].col, panels[k].scale, ng, cv, o->out != NULL);
    if (o->out) {
        trace_panel(f, ng, cv);
        panel(f, panels[7].title, panels[7].col, panels[7].scale, ng, cv, 1);
        fprintf(f, "unset multiplot\n");
    }
    if (fclose(f) != 0) {
        snprintf(err, errlen, "%s: %s", p, strerror(errno));
        return -1;
    }
    return 0;
}

int rw_gnuplot_run(const char *prog, const char *dir, char *err, size_t errlen)
{
    char ep[PATH_MAX];
    snprintf(ep, sizeof ep, "%s/gnuplot.err", dir);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int fd = open(ep, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        if (chdir(dir) != 0)
            _exit(126);
        execlp(prog, prog, "plot.gp", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127) {
        snprintf(err, errlen, "cannot run '%s': install gnuplot (apt-get install gnuplot-nox), or "
                 "name the program in RUNAWAY_GNUPLOT", prog);
        return -1;
    }
    char tail[512] = "";
    FILE *f = fopen(ep, "r");
    if (f) {
        size_t n = fread(tail, 1, sizeof tail - 1, f);
        tail[n] = 0;
        fclose(f);
        for (char *s = tail; *s; s++)
            if (*s == '\n' && s[1])
                *s = ' ';
    }
    snprintf(err, errlen, "gnuplot failed (%s %d)%s%s", WIFEXITED(st) ? "status" : "signal",
             WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), tail[0] ? ": " : "", tail);
    return -1;
}

const char *rw_gnuplot_prog(const char *given)
{
    const char *prog = given ? given : getenv("RUNAWAY_GNUPLOT");
    return prog && prog[0] ? prog : "gnuplot";
}

int rw_work_dir(const char *data_dir, const char *what, char *dir, size_t len, char *err,
                size_t errlen)
{
    if (!data_dir) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, len, "%s/runaway-%s-XXXXXX", t && t[0] ? t : "/tmp", what);
        if (!mkdtemp(dir)) {
            snprintf(err, errlen, "%s: %s", dir, strerror(errno));
            return -1;
        }
        return 0;
    }
    snprintf(dir, len, "%s", data_dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

void rw_work_dir_remove(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[PATH_MAX + 256];
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(dir);
}

int rw_png_target(const char *out, char *abs, size_t abslen, char *tmp, size_t tmplen, char *err,
                  size_t errlen)
{
    if (out[0] == '/') {
        snprintf(abs, abslen, "%s", out);
    } else {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd))
            cwd[0] = 0;
        snprintf(abs, abslen, "%s/%s", cwd, out);
    }
    snprintf(tmp, tmplen, "%s.tmp%ld", abs, (long)getpid());
    char folder[PATH_MAX];
    snprintf(folder, sizeof folder, "%s", abs);
    *strrchr(folder, '/') = 0;
    if (access(folder[0] ? folder : "/", W_OK) != 0) {
        snprintf(err, errlen, "%s: cannot write in %s: %s", out, folder[0] ? folder : "/",
                 strerror(errno));
        return -1;
    }
    return 0;
}

int rw_plot_render(const json_t *curves, const rw_plot_opts *o, char *err, size_t errlen)
{
    rw_curve *cv = NULL;
    int ng = rw_curves_group(curves, &cv);
    if (ng < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char dir[PATH_MAX];
    if (rw_work_dir(o->data_dir, "plot", dir, sizeof dir, err, errlen) != 0) {
        rw_curves_free(cv, ng);
        return -1;
    }
    /* the PNG is written beside its final name, then renamed: a viewer
     * reloading it never sees half a file */
    char out_abs[PATH_MAX] = "", out_tmp[PATH_MAX + 16] = "";
    int rc = -1;
    if (o->out && rw_png_target(o->out, out_abs, sizeof out_abs, out_tmp, sizeof out_tmp, err,
                                errlen) != 0)
        ;
    else if (ng == 0)
        snprintf(err, errlen, "no jobs to plot");
    else if (write_data(dir, cv, ng, err, errlen) == 0 &&
             write_script(dir, curves, cv, ng, o, out_tmp, err, errlen) == 0 &&
             rw_gnuplot_run(rw_gnuplot_prog(o->gnuplot), dir, err, errlen) == 0) {
        rc = 0;
        if (o->out && rename(out_tmp, out_abs) != 0) {
            snprintf(err, errlen, "%s: %s", out_abs, strerror(errno));
            rc = -1;
        }
    }
    if (o->out && out_tmp[0])
        unlink(out_tmp);
    if (!o->data_dir)
        rw_work_dir_remove(dir);
    rw_curves_free(cv, ng);
    return rc;
}
