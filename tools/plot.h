/* Training curves of a job or a grid, drawn by gnuplot: per epoch the loss,
 * L_align(q.f), L_uniform(f), the collapse std and the kNN accuracy, one
 * curve per variant (the mean over its seeds), as the paper's figures 4
 * and 5 show them. */
#ifndef RUNAWAY_TOOLS_PLOT_H
#define RUNAWAY_TOOLS_PLOT_H

#include <jansson.h>
#include <stddef.h>

typedef struct rw_plot_opts {
    const char *out;      /* a PNG file (written whole, then renamed), or NULL: text to stdout */
    const char *data_dir; /* keep the data files and the gnuplot script here; NULL: a temp dir */
    const char *gnuplot;  /* the program; NULL: $RUNAWAY_GNUPLOT, else gnuplot on PATH */
    int cols, rows;       /* text mode: each panel's size in characters */
} rw_plot_opts;

/* Draws runawayd's reply to a `curves` request. 0, or -1 with the reason
 * (gnuplot missing or failing, a folder that cannot be written). */
int rw_plot_render(const json_t *curves, const rw_plot_opts *o, char *err, size_t errlen);

/* Per variant, per epoch, the mean over the jobs that reported the epoch:
 * what the data files hold, for the CLI and the tests. */
typedef struct rw_curve {
    char name[192];
    int njobs;
    size_t n;     /* epochs */
    double *rows; /* n x RW_CURVE_COLS: epoch, loss, align, uniform, collapse, knn (NAN: none) */
} rw_curve;
#define RW_CURVE_COLS 6

/* Groups the reply's jobs by variant (a job target: the one job), in the
 * order they first appear. Returns the number of curves (*out malloc'd),
 * or -1 when out of memory. */
int rw_curves_group(const json_t *curves, rw_curve **out);
void rw_curves_free(rw_curve *c, int n);

#endif
