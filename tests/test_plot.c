/* runaway plot and sphere's drawing (tools/cli/plot.h) without a daemon:
 * the figure's format by its extension, the final linear evaluation in the
 * curves, the y range of a nearly constant series, the x range from the
 * first epoch, the shared key and palette, and the sphere's image count.
 * gnuplot draws for real: the files' first bytes say what they are. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/cli/plot.h"

static char dir[256];

static void make_dir(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/rw-test-plot-XXXXXX", t && t[0] ? t : "/tmp");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    rw_work_dir_remove(dir);
}

/* The file's text (at most len - 1 bytes). */
static size_t slurp(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "no %s", path);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = 0;
    fclose(f);
    return n;
}

/* A finished grid as runawayd's `curves` reply: the random baseline (one
 * epoch, 0) and byol (epochs 1..3), two seeds each; kNN measured, the rank
 * not, the linear evaluation only at the end (linear_final, as
 * eval.linear.every unset leaves it), and cos(W,I) nearly constant. */
static json_t *finished_grid(void)
{
    json_error_t e;
    json_t *r = json_loads(
        "{\"kind\": \"grid\", \"name\": \"demo\", \"target_id\": 1, \"jobs\": ["
        " {\"id\": 1, \"name\": \"demo/base/seed0\", \"variant\": \"base\", \"seed\": 0,"
        "  \"state\": \"done\", \"linear_final\": 0.30,"
        "  \"epochs\": [[0, 1.0, 0.5, -1.0, 0.9, 0.10, null, null, 0.00106]]},"
        " {\"id\": 2, \"name\": \"demo/base/seed1\", \"variant\": \"base\", \"seed\": 1,"
        "  \"state\": \"done\", \"linear_final\": 0.32,"
        "  \"epochs\": [[0, 1.0, 0.5, -1.0, 0.9, 0.12, null, null, 0.00106]]},"
        " {\"id\": 3, \"name\": \"demo/byol/seed0\", \"variant\": \"byol\", \"seed\": 0,"
        "  \"state\": \"done\", \"linear_final\": 0.50,"
        "  \"epochs\": [[1, 0.9, 0.4, -1.5, 0.8, 0.2, null, null, 0.00106],"
        "               [2, 0.8, 0.3, -2.0, 0.7, 0.3, null, null, 0.0010600001],"
        "               [3, 0.7, 0.2, -2.5, 0.6, 0.4, null, null, 0.00106]]},"
        " {\"id\": 4, \"name\": \"demo/byol/seed1\", \"variant\": \"byol\", \"seed\": 1,"
        "  \"state\": \"done\", \"linear_final\": 0.60,"
        "  \"epochs\": [[1, 0.9, 0.4, -1.4, 0.8, 0.25, null, null, 0.00106],"
        "               [2, 0.8, 0.3, -1.9, 0.7, 0.35, null, null, 0.00106],"
        "               [3, 0.7, 0.2, -2.4, 0.6, 0.45, null, null, 0.00106]]}]}",
        0, &e);
    cr_assert_not_null(r, "%s", e.text);
    return r;
}

Test(plot, a_figures_format_is_its_extension)
{
    cr_assert_eq(rw_fig_format_of("a.png"), RW_FIG_PNG);
    cr_assert_eq(rw_fig_format_of("dir.v2/a.PDF"), RW_FIG_PDF);
    cr_assert_eq(rw_fig_format_of("/x/a.b.svg"), RW_FIG_SVG);
    cr_assert_eq(rw_fig_format_of("a.jpg"), RW_FIG_BAD);
    cr_assert_eq(rw_fig_format_of("plot"), RW_FIG_BAD);
    cr_assert_eq(rw_fig_format_of("out.png/plot"), RW_FIG_BAD);
    cr_assert_eq(rw_fig_format_of(".svg.eps"), RW_FIG_BAD);
}

/* A series gnuplot would label 0.00106, 0.00106, ...: padded 5% of its
 * value each side; a series that varies: gnuplot's own range. */
Test(plot, a_nearly_constant_series_gets_a_readable_range)
{
    double a, b;
    cr_assert_eq(rw_axis_range(0.00106, 0.00106 + 1e-10, &a, &b), 1);
    cr_assert(a < 0.00106 && b > 0.00106 + 1e-10, "[%g, %g]", a, b);
    cr_assert_float_eq(b - a, 0.1 * 0.00106, 1e-10, "[%g, %g]", a, b);
    cr_assert_eq(rw_axis_range(-3.9, -3.9, &a, &b), 1);
    cr_assert(fabs(a + 4.095) < 1e-12 && fabs(b + 3.705) < 1e-12, "[%g, %g]", a, b);
    cr_assert_eq(rw_axis_range(0, 0, &a, &b), 1);
    cr_assert(a == -1 && b == 1, "[%g, %g]", a, b);
    cr_assert_eq(rw_axis_range(-3.9, -3.8, &a, &b), 0);
    cr_assert_eq(rw_axis_range(1e-6, 3e-6, &a, &b), 0, "a small value that varies is drawn");
    cr_assert_eq(rw_axis_range(INFINITY, -INFINITY, &a, &b), 0, "nothing to draw");
    cr_assert_eq(rw_axis_range(NAN, 1, &a, &b), 0);
}

/* The final linear evaluation of each variant (no epoch row holds it
 * without eval.linear.every): mean and std over its seeds, at its last
 * epoch. */
Test(plot, the_curves_carry_the_final_linear_evaluation)
{
    json_t *r = finished_grid();
    rw_curve *cv;
    int ng = rw_curves_group(r, &cv);
    cr_assert_eq(ng, 2);
    cr_assert_str_eq(cv[0].name, "base");
    cr_assert_eq(cv[0].final_n, 2);
    cr_assert_float_eq(cv[0].final_epoch, 0, 0);
    cr_assert_float_eq(cv[0].final_linear, 0.31, 1e-12);
    cr_assert_eq(cv[1].final_n, 2);
    cr_assert_float_eq(cv[1].final_epoch, 3, 0);
    cr_assert_float_eq(cv[1].final_linear, 0.55, 1e-12);
    cr_assert_float_eq(cv[1].final_linear_sd, sqrt(0.005), 1e-12);
    /* kNN, every epoch it was measured */
    cr_assert_eq(cv[1].n, 3);
    cr_assert_float_eq(cv[1].rows[2 * RW_CURVE_COLS + 5], 0.425, 1e-12);
    rw_curves_free(cv, ng);
    /* a job without a result (running, or the result not stored): none */
    json_object_set_new(json_array_get(json_object_get(r, "jobs"), 3), "linear_final", json_null());
    ng = rw_curves_group(r, &cv);
    cr_assert(cv[1].final_n == 1 && cv[1].final_linear == 0.5 && isnan(cv[1].final_linear_sd));
    rw_curves_free(cv, ng);
    json_decref(r);
}

/* -o draws the format its extension names; any other is refused, and
 * nothing is left behind. */
Test(plot, png_pdf_and_svg_by_the_extension, .init = make_dir, .fini = remove_dir, .timeout = 60)
{
    json_t *r = finished_grid();
    const char *ext[3] = {"png", "pdf", "svg"};
    for (int k = 0; k < 3; k++) {
        char out[300], err[1024], buf[4096];
        snprintf(out, sizeof out, "%s/fig.%s", dir, ext[k]);
        rw_plot_opts o = {.out = out, .cols = 90, .rows = 22};
        cr_assert_eq(rw_plot_render(r, &o, err, sizeof err), 0, "%s: %s", out, err);
        size_t n = slurp(out, buf, sizeof buf);
        if (k == 0)
            cr_assert(n > 8 && !memcmp(buf, "\x89PNG\r\n\x1a\n", 8), "%s is no PNG", out);
        else if (k == 1)
            cr_assert(n > 5 && !memcmp(buf, "%PDF-", 5), "%s is no PDF", out);
        else
            cr_assert(strstr(buf, "<svg"), "%s is no SVG: %.200s", out, buf);
    }
    char out[300], err[1024];
    snprintf(out, sizeof out, "%s/fig.jpg", dir);
    rw_plot_opts o = {.out = out, .cols = 90, .rows = 22};
    cr_assert_eq(rw_plot_render(r, &o, err, sizeof err), -1);
    cr_assert(strstr(err, "fig.jpg: draws a .png, .pdf or .svg file"), "%s", err);
    cr_assert_neq(access(out, F_OK), 0);
    json_decref(r);
}

/* What the script draws: x from the first epoch, a padded y range for
 * cos(W,I), the final linear results as dots (the baseline's a dashed
 * level), one shared key under the panels, the palette on each line, and
 * why a panel is empty. */
Test(plot, the_figures_axes_key_and_final_results, .init = make_dir, .fini = remove_dir,
     .timeout = 60)
{
    json_t *r = finished_grid();
    char out[300], data[300], err[1024], gp[65536], p[340];
    snprintf(out, sizeof out, "%s/fig.png", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    rw_plot_opts o = {.out = out, .data_dir = data, .cols = 90, .rows = 22};
    cr_assert_eq(rw_plot_render(r, &o, err, sizeof err), 0, "%s", err);
    snprintf(p, sizeof p, "%s/plot.gp", data);
    slurp(p, gp, sizeof gp);
    /* byol's epochs 1..3; the baseline's epoch 0 is a level across them */
    cr_assert(strstr(gp, "set xrange [1:3.04]\nset xtics 1\n"), "x from the first epoch:\n%s", gp);
    double a, b;
    cr_assert_eq(rw_axis_range(0.00106, 0.0010600001, &a, &b), 1);
    char want[200];
    snprintf(want, sizeof want, "set yrange [%.9g:%.9g]\nplot ", a, b);
    const char *w = strstr(gp, "set title 'cos(W, I)");
    cr_assert(w && strstr(w, want), "cos(W,I) not in [%g, %g]:\n%s", a, b, gp);
    cr_assert(strstr(gp, "'+' using (3):(55):(7.07106781) every ::0::0 with yerrorbars lc rgb "
                         "'#d55e00'"), "byol's final linear evaluation:\n%s", gp);
    cr_assert(strstr(gp, "31 with lines lc rgb '#0072b2' lw 1.5 dt 2 notitle"),
              "the baseline's final linear evaluation:\n%s", gp);
    const char *key = strstr(gp, "set key center center horizontal");
    cr_assert(key && strstr(key, "\nplot NaN with lines lc rgb '#0072b2' lw 1.5 dt 2 title "
                                 "'base', NaN with linespoints lc rgb '#d55e00' lw 1.5 pt 2 title "
                                 "'byol', NaN with points lc rgb 'black' pt 7 ps 1.6 title "
                                 "'final linear evaluation'\nunset multiplot\n"),
              "the shared key, last:\n%s", gp);
    cr_assert(!strstr(gp, " title 'byol', '") && !strstr(gp, " ls "),
              "a curve named in a panel, or a line style of gnuplot's palette:\n%s", gp);
    cr_assert(strstr(gp, "'not measured (eval.rank.every)'"), "%s", gp);
    cr_assert(!strstr(gp, "eval.knn.every"), "kNN was measured:\n%s", gp);
    snprintf(p, sizeof p, "%s/curve1.dat", data);
    slurp(p, gp, sizeof gp);
    cr_assert(strstr(gp, "\n# final linear evaluation: epoch 3, top-1 0.55, std 0.0707106781, "
                         "over 2 jobs\n"), "%s", gp);
    json_decref(r);
}

/* Only the random baseline (epoch 0): its levels from epoch 0 on. */
Test(plot, a_baseline_alone_spans_from_its_epoch, .init = make_dir, .fini = remove_dir,
     .timeout = 60)
{
    json_t *r = finished_grid();
    json_array_remove(json_object_get(r, "jobs"), 3);
    json_array_remove(json_object_get(r, "jobs"), 2);
    char out[300], data[300], err[1024], gp[65536], p[340];
    snprintf(out, sizeof out, "%s/fig.png", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    rw_plot_opts o = {.out = out, .data_dir = data, .cols = 60, .rows = 12};
    cr_assert_eq(rw_plot_render(r, &o, err, sizeof err), 0, "%s", err);
    snprintf(p, sizeof p, "%s/plot.gp", data);
    slurp(p, gp, sizeof gp);
    cr_assert(strstr(gp, "set xrange [0:1.02]\n") && strstr(gp, "31 with lines ") &&
                  !strstr(gp, "yerrorbars") && !strstr(gp, "final linear evaluation") &&
                  !strstr(gp, "dot: the final"),
              "%s", gp);
    json_decref(r);
}

/* A live grid: an empty panel says none yet, not why none will come. */
Test(plot, an_empty_panel_of_a_live_grid_waits, .init = make_dir, .fini = remove_dir,
     .timeout = 60)
{
    json_t *r = finished_grid();
    json_object_set_new(json_array_get(json_object_get(r, "jobs"), 3), "state",
                        json_string("running"));
    char out[300], data[300], err[1024], gp[65536], p[340];
    snprintf(out, sizeof out, "%s/fig.svg", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    rw_plot_opts o = {.out = out, .data_dir = data, .cols = 60, .rows = 12};
    cr_assert_eq(rw_plot_render(r, &o, err, sizeof err), 0, "%s", err);
    snprintf(p, sizeof p, "%s/plot.gp", data);
    slurp(p, gp, sizeof gp);
    cr_assert(strstr(gp, "'none reported yet'") && !strstr(gp, "eval.rank.every"), "%s", gp);
    cr_assert(strstr(gp, "set terminal svg size 2000,1350 "), "%s", gp);
    json_decref(r);
}

/* The sphere's title counts the images the worker drew, each once: points
 * on the circle and at its centre, whatever --samples asked. */
Test(plot, the_sphere_counts_distinct_images, .init = make_dir, .fini = remove_dir,
     .timeout = 60)
{
    rw_sphere_panel p[3] = {{.job = 3, .seed = 0}, {.job = 0}, {.job = 5, .seed = 0}};
    for (int i = 0; i < 3; i += 2) {
        snprintf(p[i].title, sizeof p[i].title, "v%d", i);
        snprintf(p[i].data, sizeof p[i].data, "%s/sphere%d.dat", dir, i);
        FILE *f = fopen(p[i].data, "w");
        cr_assert_not_null(f);
        fprintf(f, "# runaway sphere: test\n# points %d centre %d width 8 evr 0.5 0.25 R 0.1 "
                   "uniform -3 densest45 0.2\n# angle_deg density_per_rad\n",
                1000 - i, 24 + i);
        for (int b = 0; b <= 36; b++)
            fprintf(f, "%.1f %.6f\n", b * 10 + 5.0, 0.1 + 0.01 * (b % 5));
        fprintf(f, "\n\n# view pairs: x y on the unit circle, a blank line after each\n"
                   "1 0\n0 1\n\n");
        fclose(f);
        char err[512];
        cr_assert_eq(rw_sphere_read(&p[i], err, sizeof err), 0, "%s", err);
    }
    int lo, hi;
    rw_sphere_images(p, 3, &lo, &hi);
    cr_assert(lo == 1024 && hi == 1024, "%d..%d", lo, hi);
    p[2].centre = 0;
    rw_sphere_images(p, 3, &lo, &hi);
    cr_assert(lo == 998 && hi == 1024, "%d..%d", lo, hi);
    /* drawn as a PDF and an SVG */
    const char *ext[2] = {"pdf", "svg"};
    for (int k = 0; k < 2; k++) {
        char out[300], err[1024], buf[4096];
        snprintf(out, sizeof out, "%s/sphere.%s", dir, ext[k]);
        cr_assert_eq(rw_sphere_draw(p, 3, 0, "test", dir, rw_fig_format_of(out), out, err,
                                    sizeof err), 0, "%s", err);
        cr_assert_eq(rw_gnuplot_run(rw_gnuplot_prog(NULL), dir, err, sizeof err), 0, "%s", err);
        size_t n = slurp(out, buf, sizeof buf);
        cr_assert(k == 0 ? n > 5 && !memcmp(buf, "%PDF-", 5) : strstr(buf, "<svg") != NULL,
                  "%s: %.100s", out, buf);
    }
}
