/* runaway sphere: the paper's Figure 3 for a job or a grid, one panel per
 * variant, from the data files `runaway-worker sphere` writes (tools/cli/plot.h). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli/plot.h"

int rw_sphere_read(rw_sphere_panel *p, char *err, size_t errlen)
{
    FILE *f = fopen(p->data, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", p->data, strerror(errno));
        return -1;
    }
    char line[1400];
    int head = 0;
    p->maxd = 0;
    while (fgets(line, sizeof line, f)) {
        double a, d;
        if (!strncmp(line, "# points ", 9))
            head = sscanf(line, "# points %d centre %d width %d evr %lf %lf R %lf uniform %lf "
                                "densest45 %lf",
                          &p->n, &p->centre, &p->width, &p->evr[0], &p->evr[1], &p->R,
                          &p->uniform, &p->densest) == 8;
        else if (!strncmp(line, "# view pairs", 12))
            break;
        else if (line[0] != '#' && sscanf(line, "%lf %lf", &a, &d) == 2 && d > p->maxd)
            p->maxd = d;
    }
    fclose(f);
    if (!head || !(p->maxd > 0)) {
        snprintf(err, errlen, "%s: not a runaway-worker sphere data file", p->data);
        return -1;
    }
    return 0;
}

void rw_sphere_images(const rw_sphere_panel *p, int n, int *lo, int *hi)
{
    *lo = *hi = 0;
    for (int i = 0; i < n; i++) {
        if (!p[i].job)
            continue;
        int k = p[i].n + p[i].centre; /* the worker's images are distinct (worker/sphere.c) */
        *lo = !*hi || k < *lo ? k : *lo;
        *hi = k > *hi ? k : *hi;
    }
}

int rw_sphere_draw(const rw_sphere_panel *p, int n, int cols, const char *title, const char *dir,
                   rw_fig_format fmt, const char *out_tmp, char *err, size_t errlen)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/plot.gp", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    /* One scale for every panel, so ring widths compare across variants:
     * the densest point of the figure sticks out 0.8 radii. */
    double maxd = 0;
    for (int i = 0; i < n; i++)
        if (p[i].job)
            maxd = p[i].maxd > maxd ? p[i].maxd : maxd;
    if (cols <= 0)
        cols = n < 4 ? n : (n <= 6 ? 3 : 4);
    int rows = (n + cols - 1) / cols;
    fprintf(f, "# written by runaway sphere; run in this folder: gnuplot plot.gp\n");
    rw_gp_terminal(f, fmt, 420 * cols, 440 * rows + 40);
    fprintf(f, "set output ");
    rw_gp_quote(f, out_tmp);
    fprintf(f, "\nk = %.9g\nlim = 1.9\nd2r = pi / 180\n", 0.8 / maxd);
    fprintf(f, "set size ratio -1\nunset border\nunset tics\nunset key\n"
               "set xrange [-lim:lim]\nset yrange [-lim:lim]\n");
    fprintf(f, "set multiplot layout %d,%d title ", rows, cols);
    rw_gp_quote(f, title);
    fprintf(f, "\n");
    for (int i = 0; i < n; i++) {
        if (!p[i].job) { /* an empty panel */
            fprintf(f, "set multiplot next\n");
            continue;
        }
        /* two lines: a double-quoted gnuplot string; the name is a job or
         * variant name ([A-Za-z0-9_.-/]), nothing to escape */
        fprintf(f, "set title \"%s (j%lld, seed %lld)\\nR %.3f   L_uniform %.3f   densest 45deg "
                   "%.0f%%\"",
                p[i].title, p[i].job, p[i].seed, p[i].R, p[i].uniform, 100 * p[i].densest);
        /* the ring: out to 1 + k * density, filled; the unit disk over it */
        const char *df = strrchr(p[i].data, '/') ? strrchr(p[i].data, '/') + 1 : p[i].data;
        fprintf(f, "\nplot ");
        rw_gp_quote(f, df);
        fprintf(f, " index 0 using (cos($1*d2r)*(1+k*$2)):(sin($1*d2r)*(1+k*$2)) with "
                   "filledcurves closed fc rgb '#4477aa', \\\n  ");
        rw_gp_quote(f, df);
        fprintf(f, " index 0 using (cos($1*d2r)):(sin($1*d2r)) with filledcurves closed "
                   "fc rgb 'white', \\\n  ");
        rw_gp_quote(f, df);
        fprintf(f, " index 0 using (cos($1*d2r)):(sin($1*d2r)) with lines lc rgb 'black', \\\n  ");
        rw_gp_quote(f, df);
        fprintf(f, " index 1 using 1:2 with linespoints lc rgb '#cc3311' lw 1.5 pt 7 ps 0.9\n");
    }
    fprintf(f, "unset multiplot\n");
    if (fclose(f) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
