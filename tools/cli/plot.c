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
#include <strings.h>
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

/* Curve g's final linear evaluation: the mean and std of its jobs'
 * linear_final, at the last epoch any of them trained. */
static void final_linear(const json_t *jobs, const int *group, int g, rw_curve *c)
{
    double sum = 0, sumsq = 0, last = NAN;
    int n = 0;
    for (size_t i = 0; i < json_array_size(jobs); i++) {
        const json_t *j = json_array_get(jobs, i);
        double v = num_or_nan(json_object_get(j, "linear_final"));
        const json_t *rows = json_object_get(j, "epochs");
        size_t nr = json_array_size(rows);
        if (group[i] != g || !isfinite(v) || nr == 0)
            continue;
        double e = num_or_nan(json_array_get(json_array_get(rows, nr - 1), 0));
        if (!isfinite(e))
            continue;
        last = isfinite(last) && last > e ? last : e;
        sum += v;
        sumsq += v * v;
        n++;
    }
    c->final_n = n;
    c->final_epoch = last;
    c->final_linear = n ? sum / n : NAN;
    double ss = sumsq - sum * c->final_linear;
    c->final_linear_sd = n > 1 ? sqrt(ss > 0 ? ss / (n - 1) : 0) : NAN;
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
        final_linear(jobs, group, g, &cv[g]);
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
        if (cv[g].final_n)
            fprintf(f, "# final linear evaluation: epoch %.0f, top-1 %.9g, std %.9g, over %d "
                       "job%s\n", cv[g].final_epoch, cv[g].final_linear,
                    isfinite(cv[g].final_linear_sd) ? cv[g].final_linear_sd : 0, cv[g].final_n,
                    cv[g].final_n == 1 ? "" : "s");
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

/* Okabe and Ito's colour-blind-safe palette, one colour per variant, set
 * on each line: their yellow is left out (unreadable on white), a grey is
 * the eighth. Past 8 (a sweep) the colours come again with other points. */
static const char *const palette[8] = {"#0072b2", "#d55e00", "#009e73", "#cc79a7",
                                       "#e69f00", "#56b4e9", "#000000", "#999999"};

const char *rw_palette(int g)
{
    return palette[g % 8];
}

static void curve_style(FILE *f, int g)
{
    fprintf(f, "lc rgb '%s' lw 1.5 pt %d", palette[g % 8], g < 8 ? g + 1 : 4 + (g / 8 - 1) % 10);
}

/* A figure's curves are named once, in the shared key under the panels
 * (a key in each panel hid curves); the terminal's panels each keep one. */
static void item_title(FILE *f, int fig, const char *name)
{
    if (fig) {
        fprintf(f, " notitle");
        return;
    }
    fprintf(f, " title ");
    rw_gp_quote(f, name);
}

int rw_axis_range(double lo, double hi, double *a, double *b)
{
    if (!isfinite(lo) || !isfinite(hi) || lo > hi)
        return 0;
    double size = fabs(lo) > fabs(hi) ? fabs(lo) : fabs(hi);
    if (hi - lo > 1e-4 * size && hi - lo > 1e-12)
        return 0;
    double mid = lo / 2 + hi / 2, half = size > 1e-12 ? 0.05 * size : 1;
    *a = mid - half;
    *b = mid + half;
    return 1;
}

/* Whether curve g has a std at any epoch of column col (two jobs or more). */
static int has_band(const rw_curve *c, int col)
{
    for (size_t r = 0; r < c->n; r++)
        if (isfinite(c->sd[r * RW_CURVE_COLS + col]))
            return 1;
    return 0;
}

/* Column col is the linear evaluation, where the jobs' final results are drawn too. */
#define COL_LINEAR 7

static void extend(double v, double *lo, double *hi)
{
    if (isfinite(v)) {
        *lo = v < *lo ? v : *lo;
        *hi = v > *hi ? v : *hi;
    }
}

/* The y extent of what panel col draws (x scale): the means, their bands,
 * the final linear results. */
static void panel_extent(const rw_curve *cv, int ng, int col, double scale, int bands,
                         double *lo, double *hi)
{
    *lo = INFINITY;
    *hi = -INFINITY;
    for (int g = 0; g < ng; g++) {
        for (size_t r = 0; r < cv[g].n; r++) {
            double m = cv[g].rows[r * RW_CURVE_COLS + col], sd = cv[g].sd[r * RW_CURVE_COLS + col];
            extend(m * scale, lo, hi);
            if (bands && cv[g].n > 1 && isfinite(sd)) {
                extend((m - sd) * scale, lo, hi);
                extend((m + sd) * scale, lo, hi);
            }
        }
        if (col == COL_LINEAR && cv[g].final_n) {
            double sd = isfinite(cv[g].final_linear_sd) ? cv[g].final_linear_sd : 0;
            extend((cv[g].final_linear - sd) * scale, lo, hi);
            extend((cv[g].final_linear + sd) * scale, lo, hi);
        }
    }
}

/* The y range of the next panel: gnuplot's, or padded around a nearly
 * constant series. */
static void y_range(FILE *f, double lo, double hi)
{
    double a, b;
    if (rw_axis_range(lo, hi, &a, &b))
        fprintf(f, "set yrange [%.9g:%.9g]\n", a, b);
    else
        fprintf(f, "set autoscale y\n");
}

/* Curves whose final linear evaluation is a dot (not a baseline's level). */
static int final_dots(const rw_curve *cv, int ng)
{
    int n = 0;
    for (int g = 0; g < ng; g++)
        n += cv[g].n > 1 && cv[g].final_n > 0;
    return n;
}

/* The shared key, a strip under the panels across the figure (a key in
 * a panel hid curves, and a panel's key is no wider than the panel): each
 * curve's line as the panels draw it, on a NaN that draws nothing, and a
 * dot for the final linear evaluations where some are drawn. */
static void key_strip(FILE *f, int ng, const rw_curve *cv)
{
    int any_final = final_dots(cv, ng) > 0;
    int items = ng + any_final; /* up to 8 in one row; more wrap */
    double half = 0.1 * items;
    half = half > 0.48 ? 0.48 : half;
    fprintf(f, "set lmargin at screen %.3f\nset rmargin at screen %.3f\n"
               "set bmargin at screen 0.005\nset tmargin at screen 0.045\n"
               "unset title\nunset xlabel\nunset ylabel\nunset border\nunset tics\nunset grid\n"
               "set xrange [0:1]\nset yrange [0:1]\n"
               "set key center center horizontal font ',12' samplen 4 width 2%s\nplot ",
            0.5 - half, 0.5 + half, items <= 8 ? " maxrows 1" : "");
    for (int g = 0; g < ng; g++) {
        if (cv[g].n == 1)
            fprintf(f, "%sNaN with lines lc rgb '%s' lw 1.5 dt 2 title ", g ? ", " : "",
                    palette[g % 8]);
        else {
            fprintf(f, "%sNaN with linespoints ", g ? ", " : "");
            curve_style(f, g);
            fprintf(f, " title ");
        }
        rw_gp_quote(f, cv[g].name);
    }
    if (any_final)
        fprintf(f, ", NaN with points lc rgb 'black' pt 7 ps 1.6 title 'final linear evaluation'");
    fprintf(f, "\n");
}

/* One panel: every curve's column `col` (x `scale`). A column no curve has
 * a value in gets an empty panel that says why (gnuplot refuses to plot
 * nothing at all): `none` once every job has ended, "none reported yet"
 * while one may still report. fig: a figure (bands, the final linear
 * results), else the terminal. */
static void panel(FILE *f, const char *title, const char *none, int col, double scale, int ng,
                  const rw_curve *cv, int fig, int live, double dodge)
{
    int any = 0, any_final = 0;
    for (int g = 0; g < ng; g++) {
        for (size_t r = 0; r < cv[g].n && !any; r++)
            any = isfinite(cv[g].rows[r * RW_CURVE_COLS + col]);
        any_final |= col == COL_LINEAR && cv[g].final_n > 0;
    }
    fprintf(f, "set title ");
    if (fig && col == COL_LINEAR && final_dots(cv, ng)) {
        char t[256];
        snprintf(t, sizeof t, "%s (dot: the final result)", title);
        rw_gp_quote(f, t);
    } else {
        rw_gp_quote(f, title);
    }
    fprintf(f, "\n");
    if (!any && !any_final) {
        fprintf(f, "set yrange [0:1]\nset label 1 ");
        rw_gp_quote(f, live ? "none reported yet" : none);
        fprintf(f, " at graph 0.5,0.5 center\nplot NaN notitle\nunset label 1\n");
        return;
    }
    double lo, hi;
    panel_extent(cv, ng, col, scale, fig, &lo, &hi);
    y_range(f, lo, hi);
    fprintf(f, "plot ");
    int first = 1, nf = final_dots(cv, ng), kf = 0;
    for (int g = 0; g < ng; g++) {
        /* one epoch only (the random baseline's epoch 0): a dashed level
         * across the panel, as the paper draws baselines, not a lone dot
         * on the axis; its linear evaluation is its final one */
        double v = cv[g].n == 1 ? cv[g].rows[col] : NAN;
        if (cv[g].n == 1 && col == COL_LINEAR && !isfinite(v) && cv[g].final_n)
            v = cv[g].final_linear;
        if (cv[g].n == 1 && !isfinite(v))
            continue;
        fprintf(f, "%s", first ? "" : ", ");
        first = 0;
        if (fig && cv[g].n > 1 && has_band(&cv[g], col))
            fprintf(f, "'curve%d.dat' using 1:(($%d-$%d)*%g):(($%d+$%d)*%g) with filledcurves "
                       "fs transparent solid 0.18 noborder lc rgb '%s' notitle, ",
                    g, col + 1, col + RW_CURVE_COLS, scale, col + 1, col + RW_CURVE_COLS, scale,
                    palette[g % 8]);
        if (cv[g].n == 1) {
            fprintf(f, "%.9g with lines lc rgb '%s' lw 1.5 dt 2", v * scale, palette[g % 8]);
        } else {
            fprintf(f, "'curve%d.dat' using 1:($%d*%g) with linespoints ", g, col + 1, scale);
            curve_style(f, g);
        }
        item_title(f, fig, cv[g].name);
        /* the jobs' final linear evaluation, a dot (its std over the
         * seeds as a bar) at the last epoch */
        if (fig && col == COL_LINEAR && cv[g].n > 1 && cv[g].final_n) {
            double x = cv[g].final_epoch + (kf++ - (nf - 1) / 2.0) * dodge;
            if (isfinite(cv[g].final_linear_sd))
                fprintf(f, ", '+' using (%.9g):(%.9g):(%.9g) every ::0::0 with yerrorbars "
                           "lc rgb '%s' lw 1.5 pt 7 ps 1.6 notitle",
                        x, cv[g].final_linear * scale, cv[g].final_linear_sd * scale,
                        palette[g % 8]);
            else
                fprintf(f, ", '+' using (%.9g):(%.9g) every ::0::0 with points lc rgb '%s' pt 7 "
                           "ps 1.6 notitle",
                        x, cv[g].final_linear * scale, palette[g % 8]);
        }
    }
    fprintf(f, "\n");
}

/* The paper's Figure 5: each variant's path through the (L_uniform(f),
 * L_align(q.f)) plane, one point an epoch, its last epoch marked so the
 * direction reads; a one-epoch curve (the random baseline) is one point. */
static void trace_panel(FILE *f, int ng, const rw_curve *cv, int fig)
{
    fprintf(f, "set title 'L_align(q.f) against L_uniform(f), epoch by epoch (dot: the last)'\n"
               "set xlabel 'L_uniform(f)'\nset ylabel 'L_align(q.f)'\nset autoscale x\n"
               "set xtics autofreq\nset offsets graph 0.05, graph 0.05, graph 0.05, graph 0.05\n");
    double xlo, xhi, ylo, yhi;
    panel_extent(cv, ng, 3, 1, 0, &xlo, &xhi);
    panel_extent(cv, ng, 2, 1, 0, &ylo, &yhi);
    double a, b;
    if (rw_axis_range(xlo, xhi, &a, &b))
        fprintf(f, "set xrange [%.9g:%.9g]\n", a, b);
    y_range(f, ylo, yhi);
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
        fprintf(f, "%s", first ? "plot " : ", ");
        first = 0;
        fprintf(f, "'curve%d.dat' using 4:3 with linespoints ", g);
        curve_style(f, g);
        item_title(f, fig, cv[g].name);
        /* the last epoch, larger, untitled: where the variant ended */
        fprintf(f, ", '+' using (%.9g):(%.9g) every ::0::0 with points lc rgb '%s' pt 7 ps 1.5 "
                   "notitle",
                o[3], o[2], palette[g % 8]);
    }
    if (first)
        fprintf(f, "set yrange [0:1]\nset label 1 'none reported' at graph 0.5,0.5 center\n"
                   "plot NaN notitle\nunset label 1");
    fprintf(f, "\nset xlabel 'epoch'\nunset ylabel\nset offsets 0, 0, graph 0.05, graph 0.05\n");
}

/* The epochs every panel spans: from the first reported to the last, and
 * a little more so that the last epoch's dots clear the border (one
 * epoch: to the next); a tick an epoch where they are few. A
 * one-epoch curve (the random baseline's epoch 0) is a level across
 * whatever the others span. Returns how far apart the final linear dots
 * of the variants stand, side by side about their epoch, so that their
 * bars do not hide each other. */
static double epoch_range(FILE *f, const rw_curve *cv, int ng)
{
    double lo = INFINITY, hi = -INFINITY;
    for (int pass = 0; pass < 2 && !(lo <= hi); pass++)
        for (int g = 0; g < ng; g++)
            for (size_t r = 0; r < cv[g].n && (pass || cv[g].n > 1); r++)
                extend(cv[g].rows[r * RW_CURVE_COLS], &lo, &hi);
    if (!(lo <= hi))
        lo = 0, hi = 1;
    else if (lo == hi)
        hi = lo + 1;
    double dodge = 0.012 * (hi - lo), nf = final_dots(cv, ng);
    fprintf(f, "set xrange [%.9g:%.9g]\nset xtics %s\n", lo,
            hi + 0.02 * (hi - lo) + (nf > 1 ? dodge * (nf - 1) / 2 : 0),
            hi - lo <= 12 ? "1" : "autofreq");
    return dodge;
}

static int write_script(const char *dir, const json_t *curves, const rw_curve *cv, int ng,
                        const rw_plot_opts *o, rw_fig_format fmt, const char *out_tmp, char *err,
                        size_t errlen)
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
    int seeds = 0, live = 0;
    for (int g = 0; g < ng; g++)
        seeds |= cv[g].njobs > 1;
    size_t i;
    const json_t *j;
    json_array_foreach(json_object_get(curves, "jobs"), i, j)
    {
        const char *st = json_string_value(json_object_get(j, "state"));
        live |= !st || !strcmp(st, "queued") || !strcmp(st, "running");
    }
    snprintf(title, sizeof title, "%s%s %s%s: %s per epoch", kind ? kind : "?", tid ? "" : "s", id,
             name ? name : "", kind && !strcmp(kind, "grid") ? "mean over seeds" : "metrics");
    if (o->out && seeds)
        snprintf(title + strlen(title), sizeof title - strlen(title),
                 " (shaded: one std either side)");
    fprintf(f, "# written by runaway plot; run in this folder: gnuplot plot.gp\n");
    fprintf(f, "set datafile missing '?'\nset xlabel 'epoch'\nset grid\n");
    /* autoscaled y clears the data (a level on the border is lost in it) */
    fprintf(f, "set style data linespoints\nset pointsize 0.5\nset offsets 0, 0, graph 0.05, "
               "graph 0.05\n");
    if (o->out) {
        rw_gp_terminal(f, fmt, 2000, 1350);
        fprintf(f, "set output ");
        rw_gp_quote(f, out_tmp);
        /* room under the panels for the shared key */
        fprintf(f, "\nunset key\nset multiplot layout 3,3 margins 0.045,0.99,0.085,0.95 spacing "
                   "0.05,0.075 title ");
        rw_gp_quote(f, title);
        fprintf(f, "\n");
    } else {
        fprintf(f, "set terminal dumb size %d,%d noenhanced\nset key top right\n", o->cols,
                o->rows);
        fprintf(f, "set print '-'\nprint ");
        rw_gp_quote(f, title);
        fprintf(f, "\n");
    }
    double dodge = epoch_range(f, cv, ng);
    /* the figure's 3x3 grid holds the seven, the trace and W; a terminal the first three */
    static const struct {
        const char *title, *none; /* none: why a finished grid has none */
        int col;
        double scale;
    } panels[] = {
        {"L_align(q.f)", "none reported", 2, 1},
        {"L_uniform(f)", "none reported", 3, 1},
        {"training loss", "none reported", 1, 1},
        {"collapse std (1: spread, 0: collapsed)", "none reported", 4, 1},
        {"kNN top-1 (%)", "not measured (eval.knn.every)", 5, 100},
        {"effective rank of f", "not measured (eval.rank.every)", 6, 1},
        {"linear evaluation top-1 (%)", "not measured (eval.linear.epochs, .every)", COL_LINEAR,
         100},
        {"cos(W, I) of a linear predictor W (BYOL' from W0 ~ RAFT from -W0)",
         "no linear predictor (model.predictor linear)", 8, 1},
    };
    for (int k = 0; k < (o->out ? 7 : 3); k++)
        panel(f, panels[k].title, panels[k].none, panels[k].col, panels[k].scale, ng, cv,
              o->out != NULL, live, dodge);
    if (o->out) {
        trace_panel(f, ng, cv, 1);
        epoch_range(f, cv, ng);
        panel(f, panels[7].title, panels[7].none, panels[7].col, panels[7].scale, ng, cv, 1, live,
              dodge);
        key_strip(f, ng, cv);
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

rw_fig_format rw_fig_format_of(const char *path)
{
    static const char *const ext[] = {".png", ".pdf", ".svg"};
    const char *dot = strrchr(path, '.');
    if (!dot || strchr(dot, '/'))
        return RW_FIG_BAD;
    for (int k = 0; k < 3; k++)
        if (!strcasecmp(dot, ext[k]))
            return (rw_fig_format)k;
    return RW_FIG_BAD;
}

void rw_gp_terminal(FILE *f, rw_fig_format fmt, int w, int h)
{
    if (fmt == RW_FIG_PDF) /* a pixel a point: 72 to the inch */
        fprintf(f, "set terminal pdfcairo size %.3fin,%.3fin", w / 72.0, h / 72.0);
    else if (fmt == RW_FIG_SVG)
        fprintf(f, "set terminal svg size %d,%d", w, h);
    else
        fprintf(f, "set terminal pngcairo size %d,%d", w, h);
    fprintf(f, " noenhanced font '%s,10' background rgb 'white'\n",
            fmt == RW_FIG_SVG ? "sans" : "");
}

int rw_fig_target(const char *out, char *abs, size_t abslen, char *tmp, size_t tmplen, char *err,
                  size_t errlen)
{
    if (rw_fig_format_of(out) == RW_FIG_BAD) {
        snprintf(err, errlen, "%s: draws a %s file, by its extension", out, RW_FIG_EXTENSIONS);
        return -1;
    }
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
    /* the figure is written beside its final name, then renamed: a viewer
     * reloading it never sees half a file */
    char out_abs[PATH_MAX] = "", out_tmp[PATH_MAX + 16] = "";
    int rc = -1;
    if (o->out && rw_fig_target(o->out, out_abs, sizeof out_abs, out_tmp, sizeof out_tmp, err,
                                errlen) != 0)
        ;
    else if (ng == 0)
        snprintf(err, errlen, "no jobs to plot");
    else if (write_data(dir, cv, ng, err, errlen) == 0 &&
             write_script(dir, curves, cv, ng, o, o->out ? rw_fig_format_of(o->out) : RW_FIG_PNG,
                          out_tmp, err, errlen) == 0 &&
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
