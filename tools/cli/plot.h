/* Training curves of a job or a grid, drawn by gnuplot: per epoch the loss,
 * L_align(q.f), L_uniform(f), the collapse std and the kNN accuracy, one
 * curve per variant (the mean over its seeds), as the paper's figures 4
 * and 5 show them. */
#ifndef RUNAWAY_TOOLS_PLOT_H
#define RUNAWAY_TOOLS_PLOT_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>

typedef struct rw_plot_opts {
    const char *out;      /* a figure file, its format by its extension (rw_fig_format_of;
                           * written whole, then renamed), or NULL: text to stdout */
    const char *data_dir; /* keep the data files and the gnuplot script here; NULL: a temp dir */
    const char *gnuplot;  /* the program; NULL: $RUNAWAY_GNUPLOT, else gnuplot on PATH */
    int cols, rows;       /* text mode: each panel's size in characters */
} rw_plot_opts;

/* Draws runawayd's reply to a `curves` request. 0, or -1 with the reason
 * (gnuplot missing or failing, a folder that cannot be written). */
int rw_plot_render(const json_t *curves, const rw_plot_opts *o, char *err, size_t errlen);

/* Per variant, per epoch, the mean and the std over the jobs that reported
 * the epoch: what the data files hold (the std in columns 10..17), for the
 * CLI and the tests. */
typedef struct rw_curve {
    char name[192];
    int njobs;
    size_t n;     /* epochs */
    double *rows; /* n x RW_CURVE_COLS: epoch, loss, align, uniform, collapse, knn, rank,
                   * linear, w_cos_i (NAN: none) */
    double *sd;   /* n x RW_CURVE_COLS: each column's sample std over the jobs that reported
                   * the epoch (NAN: fewer than two; column 0 unused) */
    /* the final linear evaluation (the jobs' result, linear_final in the
     * reply): its mean and std over the final_n jobs that have one, at the
     * last epoch they trained (final_n 0: none) */
    int final_n;
    double final_epoch, final_linear, final_linear_sd;
} rw_curve;
#define RW_CURVE_COLS 9

/* Groups the reply's jobs by variant (a job target: the one job), in the
 * order they first appear. Returns the number of curves (*out malloc'd),
 * or -1 when out of memory. */
int rw_curves_group(const json_t *curves, rw_curve **out);
void rw_curves_free(rw_curve *c, int n);

/* ---- what the drawing commands share ---- */
#include <stdio.h>
/* The formats a figure is drawn in, by its file's extension. */
typedef enum rw_fig_format { RW_FIG_BAD = -1, RW_FIG_PNG, RW_FIG_PDF, RW_FIG_SVG } rw_fig_format;
#define RW_FIG_EXTENSIONS ".png, .pdf or .svg"
/* The format of path by its extension (any case), or RW_FIG_BAD. */
rw_fig_format rw_fig_format_of(const char *path);
/* gnuplot's `set terminal` line for a figure of w x h pixels (a PDF: as
 * many points, so that text keeps its size against the drawing), with a
 * white background in every format. */
void rw_gp_terminal(FILE *f, rw_fig_format fmt, int w, int h);
/* The y range of a panel whose values run from lo to hi: 0 where gnuplot's
 * own suits (a spread it can label), or 1 and [*a, *b] for a nearly
 * constant series (spread under 1e-4 of its size), which gnuplot would
 * label with one value repeated: 5% of the value each side (+-1 around 0). */
int rw_axis_range(double lo, double hi, double *a, double *b);
/* The colour of curve g: Okabe and Ito's palette (less its yellow) and a
 * grey, again past 8. */
const char *rw_palette(int g);
/* A gnuplot single-quoted string: '' stands for a quote. */
void rw_gp_quote(FILE *f, const char *s);
/* The gnuplot to run: given, else $RUNAWAY_GNUPLOT, else gnuplot on PATH. */
const char *rw_gnuplot_prog(const char *given);
/* Runs gnuplot on plot.gp in dir (its text output to our stdout); its
 * errors go to dir/gnuplot.err and, on failure, into err. */
int rw_gnuplot_run(const char *prog, const char *dir, char *err, size_t errlen);
/* dir = data_dir (made if missing), or a new temporary folder when NULL
 * (rw_work_dir_remove deletes it and the files in it). */
int rw_work_dir(const char *data_dir, const char *what, char *dir, size_t len, char *err,
                size_t errlen);
void rw_work_dir_remove(const char *dir);
/* A figure's absolute path and the temporary name beside it that gnuplot
 * writes (renamed into place when whole); -1 when its extension is not
 * one of RW_FIG_EXTENSIONS or its folder cannot be written, named in err. */
int rw_fig_target(const char *out, char *abs, size_t abslen, char *tmp, size_t tmplen, char *err,
                  size_t errlen);

/* ---- runaway sphere (tools/cli/sphere.c) ---- */
typedef struct rw_sphere_panel {
    char title[192];     /* the variant, or the job's name */
    char data[PATH_MAX]; /* the data file `runaway-worker sphere` wrote */
    long long job, seed;
    /* read from the file */
    int n, centre, width; /* images on the circle, at its centre (distinct: n + centre) */
    double evr[2], R, uniform, densest, maxd;
} rw_sphere_panel;
/* Reads p->data's numbers and largest density. */
int rw_sphere_read(rw_sphere_panel *p, char *err, size_t errlen);
/* Writes dir/plot.gp, which draws into out_tmp one circle per panel (job
 * 0: an empty panel), `cols` a row (0: as suits n): the ring's width is
 * the density of the points at that angle, on one scale for all; the view
 * pairs are joined dots. */
int rw_sphere_draw(const rw_sphere_panel *p, int n, int cols, const char *title, const char *dir,
                   rw_fig_format fmt, const char *out_tmp, char *err, size_t errlen);
/* How many distinct training images the panels drew (job 0: none): the
 * fewest into *lo, the most into *hi (equal unless their sets differ). */
void rw_sphere_images(const rw_sphere_panel *p, int n, int *lo, int *hi);

#endif
