/* runaway table and runaway metrics: results per variant, every row as CSV. */
#include <errno.h>
#include <sys/un.h>
#include <unistd.h>
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/cli/cli.h"

/* "mean ± std" of a row's metric (keys `mean`, `std`), over the `nkey`
 * values the daemon counted, then `unit`: the mean alone for one (no spread,
 * not "± 0"), and "(n=K)" where K is not the row's n (some seeds lack this
 * metric). */
static void pm(char *out, size_t len, const json_t *o, const char *mean, const char *std,
               const char *nkey, const char *fmt, const char *sfmt, double scale, const char *unit)
{
    const json_t *a = json_object_get(o, mean), *b = json_object_get(o, std);
    if (!json_is_number(a)) {
        snprintf(out, len, "-");
        return;
    }
    long long n = json_is_integer(json_object_get(o, nkey)) ? jint(o, nkey) : jint(o, "n");
    char f2[64];
    snprintf(f2, sizeof f2, n == 1 ? "%s" : "%s ± %s", fmt, sfmt);
    int at = snprintf(out, len, f2, json_number_value(a) * scale,
                      json_is_number(b) ? json_number_value(b) * scale : 0.0);
    if (at >= 0 && (size_t)at < len)
        at += snprintf(out + at, len - (size_t)at, "%s", unit);
    if (n != jint(o, "n") && at >= 0 && (size_t)at < len)
        snprintf(out + at, len - (size_t)at, " (n=%lld)", n);
}

/* A row's mark against the random baseline on a metric (uniform, acc), as
 * the daemon's table reply gives it in <metric>_vs_baseline. */
typedef enum vs_mark { VS_NONE, VS_NOT_SIGNIFICANT, VS_ONE_SEED, VS_WORSE, VS_BETTER } vs_mark;

static vs_mark vs_baseline(const json_t *row, const char *metric)
{
    char key[40];
    snprintf(key, sizeof key, "%s_vs_baseline", metric);
    const char *v = json_string_value(json_object_get(row, key));
    if (!v)
        return VS_NONE;
    return !strcmp(v, "worse")    ? VS_WORSE
           : !strcmp(v, "better") ? VS_BETTER
           : !strcmp(v, "n=1")    ? VS_ONE_SEED
                                  : VS_NOT_SIGNIFICANT;
}

/* How a format shows a cell marked worse or better. */
typedef struct mark_style {
    const char *worse_pre, *worse_post, *better_pre, *better_post;
} mark_style;

static const mark_style text_marks = {"", " *", "", " +"};
static const mark_style markdown_marks = {"**", "**", "*", "*"};

/* `cell_text` as `style` marks it where the row differs from the baseline
 * on `metric`. */
static void marked(char *out, size_t len, const char *cell_text, const json_t *row,
                   const char *metric, const mark_style *style)
{
    vs_mark k = vs_baseline(row, metric);
    if (k == VS_WORSE)
        snprintf(out, len, "%s%s%s", style->worse_pre, cell_text, style->worse_post);
    else if (k == VS_BETTER)
        snprintf(out, len, "%s%s%s", style->better_pre, cell_text, style->better_post);
    else
        snprintf(out, len, "%s", cell_text);
}

/* Under the table, where it has a baseline: what the marks mean (`marks`:
 * the format's words for them), then the variants not compared for want of
 * seeds; each line starts with `pre`. */
static void print_legend(const json_t *r, const char *pre, const char *marks)
{
    if (!json_is_string(json_object_get(r, "baseline")))
        return;
    printf("%s%s than the random baseline (%s) by Welch's t-test over the seeds, two-sided "
           "p < 0.05: L_uniform(f) higher or linear eval lower is worse\n",
           pre, marks, jstr(r, "baseline"));
    size_t i, shown = 0;
    json_t *v;
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        if (vs_baseline(v, "uniform") != VS_ONE_SEED && vs_baseline(v, "acc") != VS_ONE_SEED)
            continue;
        if (!shown++)
            printf("%snot compared, n=1 on a side (one seed has no spread to test against): ", pre);
        else
            printf(", ");
        printf("%s", jstr(v, "variant"));
    }
    if (shown)
        printf("\n");
}

/* Under the table: the linear evaluation its accuracies come from, one
 * line where every variant's is the same, else one per variant; each line
 * starts with `pre`. */
static void print_protocols(const json_t *r, const char *pre)
{
    const json_t *rows = json_object_get(r, "rows");
    const char *first = NULL;
    int same = 1;
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v)
    {
        const char *p = json_string_value(json_object_get(v, "linear_protocol"));
        if (!p)
            continue;
        if (!first)
            first = p;
        else if (strcmp(first, p) != 0)
            same = 0;
    }
    if (!first)
        return;
    if (same) {
        printf("%slinear eval: %s\n", pre, first);
        return;
    }
    json_array_foreach(rows, i, v)
    {
        const char *p = json_string_value(json_object_get(v, "linear_protocol"));
        if (p)
            printf("%slinear eval of %s: %s\n", pre, jstr(v, "variant"), p);
    }
}

/* s left-aligned in `width` columns of the terminal: a UTF-8 character
 * (the ± of a cell) is one column, whatever its bytes. */
static void pad_cols(char *out, size_t len, const char *s, int width)
{
    int cont = 0; /* continuation bytes: not columns of their own */
    for (const char *p = s; *p; p++)
        cont += ((unsigned char)*p & 0xC0) == 0x80;
    snprintf(out, len, "%-*s", width + cont, s);
}

/* A trained variant of the table with a linear predictor: the cos(W,I)
 * column (a random baseline's alone, about 0, is no reason for it). */
static int any_w(const json_t *rows)
{
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v) if (json_is_number(json_object_get(v, "w_cos_i_mean")) &&
                                       !json_is_true(json_object_get(v, "baseline"))) return 1;
    return 0;
}

/* A variant with jobs the collapse alarm stopped: the `collapsed` column
 * (their numbers are in the row, where they stopped). */
static int any_collapsed(const json_t *rows)
{
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v) if (jint(v, "collapsed") > 0) return 1;
    return 0;
}

/* "2 at epoch 3", "2 at epochs 3-5": a row's jobs stopped by the collapse
 * alarm and where; "-" for none. */
static void collapsed_cell(char *out, size_t len, const json_t *row)
{
    long long n = jint(row, "collapsed"), lo = -1, hi = -1;
    if (n <= 0) {
        snprintf(out, len, "-");
        return;
    }
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(row, "collapsed_epochs"), i, e)
    {
        long long x = json_integer_value(e);
        lo = lo < 0 || x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    if (lo < 0)
        snprintf(out, len, "%lld", n);
    else if (lo == hi)
        snprintf(out, len, "%lld at epoch %lld", n, lo);
    else
        snprintf(out, len, "%lld at epochs %lld-%lld", n, lo, hi);
}

/* One target as `one`, several as the list `many` (their jobs merged by
 * variant). */
void set_targets(json_t *m, const char *one, const char *many, char *const *t, int nt)
{
    if (nt == 1) {
        json_object_set_new(m, one, json_string(t[0]));
        return;
    }
    json_t *l = json_array();
    for (int k = 0; k < nt; k++)
        json_array_append_new(l, json_string(t[k]));
    json_object_set_new(m, many, l);
}

void print_table(conn *c, char *const *grids, int ng)
{
    json_t *m = req_new("table");
    set_targets(m, "grid", "grids", grids, ng);
    json_t *r = request(c, m);
    size_t i;
    json_t *v;
    printf("grid%s ", json_array_size(json_object_get(r, "grids")) > 1 ? "s" : "");
    json_array_foreach(json_object_get(r, "grids"), i, v)
        printf("%sg%lld %s", i ? " + " : "", jint(v, "id"), jstr(v, "name"));
    printf(": mean ± std over seeds (n: seeds with numbers / jobs); L_align(q.f) and "
           "L_uniform(f) averaged over the last 10 epochs, the effective rank of f at the end\n");
    int w = 20; /* the longest variant's name (a sweep's are long) */
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        int len = (int)strlen(jstr(v, "variant"));
        w = len > w ? len : w;
    }
    int ws = any_w(json_object_get(r, "rows")), wc = any_collapsed(json_object_get(r, "rows"));
    printf("%-*s %5s  %-24s %-20s %-18s %s%-*s%s\n", w, "variant", "n", "L_align(q.f)",
           "L_uniform(f)", "rank(f)", ws ? "cos(W,I)             " : "", wc ? 21 : 0,
           "linear eval top-1", wc ? "collapsed" : "");
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        char al[64], un[64], rk[64], acc[64], n[32], unm[80], accm[80], wi[64] = "", wic[72] = "",
            col[64] = "", accc[96];
        pm(al, sizeof al, v, "align_mean", "align_std", "n", "%.3e", "%.1e", 1, "");
        pm(un, sizeof un, v, "uniform_mean", "uniform_std", "n", "%+.3f", "%.3f", 1, "");
        pm(rk, sizeof rk, v, "rank_mean", "rank_std", "rank_n", "%.1f", "%.1f", 1, "");
        if (ws) {
            pm(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "w_cos_i_n", "%+.3f", "%.3f", 1,
               "");
            pad_cols(wic, sizeof wic, wi, 21);
        }
        pm(acc, sizeof acc, v, "acc_mean", "acc_std", "acc_n", "%.2f", "%.2f", 100, "%");
        marked(unm, sizeof unm, un, v, "uniform", &text_marks);
        marked(accm, sizeof accm, acc, v, "acc", &text_marks);
        snprintf(n, sizeof n, "%lld/%lld", jint(v, "n"), jint(v, "jobs"));
        if (wc)
            collapsed_cell(col, sizeof col, v);
        pad_cols(accc, sizeof accc, accm, wc ? 21 : 0);
        printf("%-*s %5s  %-24s %-20s %-18s %s%s%s\n", w, jstr(v, "variant"), n, al, unm, rk, wic,
               accc, col);
    }
    print_legend(r, "", "* worse, + better");
    print_protocols(r, "");
    if (wc)
        printf("collapsed: jobs the collapse alarm stopped (monitor.collapse.action stop), "
               "counted with their numbers where they stopped\n");
    json_decref(r);
}

/* A number of a table row as CSV/Markdown want it: full precision, empty
 * where there is none. */
static void cell(char *out, size_t len, const json_t *row, const char *key, double scale)
{
    const json_t *v = json_object_get(row, key);
    if (json_is_number(v))
        snprintf(out, len, "%.9g", json_number_value(v) * scale);
    else
        out[0] = 0;
}

/* A boolean of a table row as CSV wants it: 1, 0, empty where absent. */
static void flag01(char *out, size_t len, const json_t *row, const char *key)
{
    const json_t *v = json_object_get(row, key);
    snprintf(out, len, "%s", json_is_boolean(v) ? (json_is_true(v) ? "1" : "0") : "");
}

/* The table for a paper or a spreadsheet: csv (one header line, then a row
 * per variant, accuracy in %) or markdown (a pipe table, mean ± std). */
/* A number for LaTeX math: 1.234e-03 becomes 1.234\times10^{-3}, 1.5e+00 1.5. */
static void tex_num(char *out, size_t len, const char *fmt, double x)
{
    char s[64];
    snprintf(s, sizeof s, fmt, x);
    char *e = strchr(s, 'e');
    if (!e) {
        snprintf(out, len, "%s", s);
        return;
    }
    *e = '\0';
    int x10 = atoi(e + 1);
    if (x10)
        snprintf(out, len, "%s\\times10^{%d}", s, x10);
    else
        snprintf(out, len, "%s", s);
}

/* pm's cell as LaTeX math, bold where the row is worse than the baseline
 * on `metric`, italic where better (NULL: never marked) */
static void pm_tex(char *out, size_t len, const json_t *o, const char *mean, const char *std,
                   const char *nkey, const char *fmt, const char *sfmt, double scale,
                   const char *metric)
{
    const json_t *a = json_object_get(o, mean), *b = json_object_get(o, std);
    if (!json_is_number(a)) {
        snprintf(out, len, "--");
        return;
    }
    long long n = json_is_integer(json_object_get(o, nkey)) ? jint(o, nkey) : jint(o, "n");
    char m[64], sd[64], num[160], n_note[48] = "";
    tex_num(m, sizeof m, fmt, json_number_value(a) * scale);
    tex_num(sd, sizeof sd, sfmt, json_is_number(b) ? json_number_value(b) * scale : 0.0);
    if (n == 1) /* one seed: no spread */
        snprintf(num, sizeof num, "%s", m);
    else
        snprintf(num, sizeof num, "%s \\pm %s", m, sd);
    if (n != jint(o, "n"))
        snprintf(n_note, sizeof n_note, " ($n{=}%lld$)", n);
    vs_mark k = metric ? vs_baseline(o, metric) : VS_NONE;
    snprintf(out, len, k == VS_WORSE ? "$\\mathbf{%s}$%s" : k == VS_BETTER ? "$\\mathit{%s}$%s"
                                                                           : "$%s$%s",
             num, n_note);
}

/* The table as a LaTeX tabular (booktabs rules), for the paper. */
static void print_table_tex(const json_t *r)
{
    const json_t *rows = json_object_get(r, "rows");
    int ws = any_w(rows), wc = any_collapsed(rows);
    printf("%% runaway table: mean \\pm std over seeds; n: seeds with numbers / jobs. "
           "Needs \\usepackage{booktabs}.\n");
    printf("\\begin{tabular}{lc%s%s}\n\\toprule\n", ws ? "ccccc" : "cccc", wc ? "c" : "");
    printf("variant & $n$ & $\\mathcal{L}_{\\mathrm{align}}(q \\circ f)$ & "
           "$\\mathcal{L}_{\\mathrm{uniform}}(f)$ & $\\mathrm{rank}(f)$ & %s"
           "linear eval top-1 (\\%%)%s \\\\\n\\midrule\n",
           ws ? "$\\cos(W, I)$ & " : "", wc ? " & collapsed" : "");
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v)
    {
        char name[160], al[96], un[96], rk[96], wi[96], acc[96];
        /* variant names are [A-Za-z0-9_.-]: only _ is special */
        size_t o = 0;
        for (const char *p = jstr(v, "variant"); *p && o + 3 < sizeof name; p++) {
            if (*p == '_')
                name[o++] = '\\';
            name[o++] = *p;
        }
        name[o] = '\0';
        pm_tex(al, sizeof al, v, "align_mean", "align_std", "n", "%.3e", "%.1e", 1, NULL);
        pm_tex(un, sizeof un, v, "uniform_mean", "uniform_std", "n", "%.3f", "%.3f", 1, "uniform");
        pm_tex(rk, sizeof rk, v, "rank_mean", "rank_std", "rank_n", "%.1f", "%.1f", 1, NULL);
        pm_tex(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "w_cos_i_n", "%.3f", "%.3f", 1,
               NULL);
        pm_tex(acc, sizeof acc, v, "acc_mean", "acc_std", "acc_n", "%.2f", "%.2f", 100, "acc");
        char col[80] = "", cc[64];
        if (wc) {
            collapsed_cell(cc, sizeof cc, v);
            snprintf(col, sizeof col, " & %s", cc);
        }
        printf("%s & %lld/%lld & %s & %s & %s & %s%s%s%s \\\\\n", name, jint(v, "n"),
               jint(v, "jobs"), al, un, rk, ws ? wi : "", ws ? " & " : "", acc, col);
    }
    printf("\\bottomrule\n\\end{tabular}\n");
    print_legend(r, "% ", "Bold: worse, italic: better");
    print_protocols(r, "% ");
}

static void print_table_as(conn *c, char *const *grids, int ng, const char *fmt)
{
    json_t *m = req_new("table");
    set_targets(m, "grid", "grids", grids, ng);
    json_t *r = request(c, m);
    if (!strcmp(fmt, "latex")) {
        print_table_tex(r);
        json_decref(r);
        return;
    }
    int csv = !strcmp(fmt, "csv"), ws = any_w(json_object_get(r, "rows")),
        wc = any_collapsed(json_object_get(r, "rows"));
    if (csv)
        printf("variant,n,jobs,align_mean,align_std,uniform_mean,uniform_std,linear_acc_mean,"
               "linear_acc_std,rank_mean,rank_std,w_cos_i_mean,w_cos_i_std,uniform_worse,"
               "acc_worse,uniform_vs_baseline,uniform_p,acc_vs_baseline,acc_p,acc_n,"
               "collapsed,linear_protocol\n");
    else
        printf("| variant | n | L_align(q.f) | L_uniform(f) | rank(f) |%s linear eval top-1 (%%) |"
               "%s\n|---|---|---|---|---|%s---|%s\n", ws ? " cos(W,I) |" : "",
               wc ? " collapsed |" : "", ws ? "---|" : "", wc ? "---|" : "");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        char am[32], as[32], um[32], us[32], cm[32], cs[32], rm[32], rs[32], wm[32], wsd[32];
        cell(am, sizeof am, v, "align_mean", 1);
        cell(as, sizeof as, v, "align_std", 1);
        cell(um, sizeof um, v, "uniform_mean", 1);
        cell(us, sizeof us, v, "uniform_std", 1);
        cell(cm, sizeof cm, v, "acc_mean", 100);
        cell(cs, sizeof cs, v, "acc_std", 100);
        cell(rm, sizeof rm, v, "rank_mean", 1);
        cell(rs, sizeof rs, v, "rank_std", 1);
        cell(wm, sizeof wm, v, "w_cos_i_mean", 1);
        cell(wsd, sizeof wsd, v, "w_cos_i_std", 1);
        if (csv) {
            /* variant names are [A-Za-z0-9_.-]: no quoting needed */
            /* against the random baseline: <m>_worse 1 (significantly worse) or 0,
             * empty where not tested; <m>_vs_baseline worse, better, ns or n=1 */
            char uw[4], aw[4], up[32], ap[32];
            flag01(uw, sizeof uw, v, "uniform_worse");
            flag01(aw, sizeof aw, v, "acc_worse");
            cell(up, sizeof up, v, "uniform_p", 1);
            cell(ap, sizeof ap, v, "acc_p", 1);
            /* the protocol's words hold commas, never quotes */
            const char *lp = json_string_value(json_object_get(v, "linear_protocol"));
            printf("%s,%lld,%lld,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%lld,%lld,%s%s%s\n",
                   jstr(v, "variant"), jint(v, "n"), jint(v, "jobs"), am, as, um, us, cm, cs, rm,
                   rs, wm, wsd, uw, aw, jstr(v, "uniform_vs_baseline"), up,
                   jstr(v, "acc_vs_baseline"), ap, jint(v, "acc_n"), jint(v, "collapsed"),
                   lp ? "\"" : "", lp ? lp : "", lp ? "\"" : "");
        } else {
            char al[64], un[64], rk[64], acc[64], unm[80], accm[80], wi[64], wic[72] = "";
            pm(al, sizeof al, v, "align_mean", "align_std", "n", "%.3e", "%.1e", 1, "");
            pm(un, sizeof un, v, "uniform_mean", "uniform_std", "n", "%+.3f", "%.3f", 1, "");
            pm(rk, sizeof rk, v, "rank_mean", "rank_std", "rank_n", "%.1f", "%.1f", 1, "");
            if (ws) {
                pm(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "w_cos_i_n", "%+.3f", "%.3f",
                   1, "");
                snprintf(wic, sizeof wic, " %s |", wi);
            }
            pm(acc, sizeof acc, v, "acc_mean", "acc_std", "acc_n", "%.2f", "%.2f", 100, "");
            /* bold, as the paper highlights them; italic better */
            marked(unm, sizeof unm, un, v, "uniform", &markdown_marks);
            marked(accm, sizeof accm, acc, v, "acc", &markdown_marks);
            char col[80] = "", cc[64];
            if (wc) {
                collapsed_cell(cc, sizeof cc, v);
                snprintf(col, sizeof col, " %s |", cc);
            }
            printf("| %s | %lld/%lld | %s | %s | %s |%s %s |%s\n", jstr(v, "variant"),
                   jint(v, "n"), jint(v, "jobs"), al, unm, rk, wic, accm, col);
        }
    }
    if (!csv) {
        print_legend(r, "\n", "Bold: worse, italic: better");
        print_protocols(r, "\n");
    }
    json_decref(r);
}

/* ------------------------------------------------------------------------ */
/* metrics: every row as CSV */

/* A job's name, variant and seed, by id, from the first page's list. */
static const json_t *job_info(const json_t *jobs, long long id)
{
    size_t i;
    json_t *v;
    json_array_foreach(jobs, i, v) if (jint(v, "id") == id) return v;
    return NULL;
}

/* The export's temporary file, removed if runaway dies half way. */
static char metrics_tmp[PATH_MAX];
static void metrics_tmp_remove(void)
{
    if (metrics_tmp[0])
        unlink(metrics_tmp);
}

/* The columns of runaway metrics, CSV and JSON alike: who, then the
 * reply's row (proto/PROTOCOL.md, `metrics`) from its second value on. */
static const char *const metric_columns[] = {
    "job",  "name",        "variant", "seed", "epoch", "step", "loss",   "align",   "uniform",
    "collapse", "knn", "pairs_per_s", "tau",   "lr",    "rank", "linear", "w_cos_i", "w_asym"};
enum { NMETRIC_COLUMNS = sizeof metric_columns / sizeof metric_columns[0], METRIC_WHO = 4 };

/* One reply row as a JSON object with those columns (null where none). */
static json_t *metric_row_json(long long job, const json_t *info, const json_t *row)
{
    json_t *o = json_object();
    json_object_set_new(o, "job", json_integer(job));
    json_object_set_new(o, "name", json_string(info ? jstr(info, "name") : ""));
    json_object_set_new(o, "variant", json_string(info ? jstr(info, "variant") : ""));
    json_object_set_new(o, "seed", json_integer(info ? jint(info, "seed") : -1));
    for (size_t k = 1; k < json_array_size(row) && METRIC_WHO + k - 1 < NMETRIC_COLUMNS; k++)
        json_object_set(o, metric_columns[METRIC_WHO + k - 1], json_array_get(row, k));
    return o;
}

int cmd_metrics(int n, char **a)
{
    const char *out = NULL;
    char *targets[RW_TARGETS_MAX];
    int steps = 0, nt = 0;
    for (int k = 0; k < n; k++) {
        if (!strcmp(a[k], "-o") && k + 1 < n)
            out = a[++k];
        else if (!strcmp(a[k], "--steps"))
            steps = 1;
        else if (a[k][0] == '-')
            usage_error("metrics", "unexpected argument '%s'", a[k]);
        else
            add_target("metrics", targets, &nt, a[k]);
    }
    if (!nt)
        usage_error("metrics", "which job or grid?");
    /* a temporary file renamed into place: a failed export leaves no half file */
    FILE *f = stdout;
    if (out) {
        snprintf(metrics_tmp, sizeof metrics_tmp, "%s.tmp.%ld", out, (long)getpid());
        f = fopen(metrics_tmp, "w");
        if (!f) {
            int e = errno;
            metrics_tmp[0] = 0;
            die("metrics: cannot write %s: %s", out, strerror(e));
        }
        atexit(metrics_tmp_remove);
    }
    conn c;
    need_conn(&c);
    /* each target in turn; a job that an earlier one had is written once */
    json_t *done = json_object();
    long long rows = 0;
    json_t *all = cli_json ? json_array() : NULL;
    for (int k = 0; !all && k < NMETRIC_COLUMNS; k++)
        fprintf(f, "%s%s", k ? "," : "", metric_columns[k]);
    if (!all)
        fputc('\n', f);
    for (int t = 0; t < nt; t++) {
        json_t *jobs = NULL, *mine = json_object();
        long long after_job = -1, after = -1;
        for (;;) {
            json_t *m = req_new("metrics");
            json_object_set_new(m, "target", json_string(targets[t]));
            json_object_set_new(m, "kind", json_string(steps ? "step" : "epoch"));
            if (after_job >= 0) {
                json_object_set_new(m, "after_job", json_integer(after_job));
                json_object_set_new(m, "after", json_integer(after));
            }
            json_t *r = request(&c, m);
            if (!jobs) /* the first page */
                jobs = json_incref(json_object_get(r, "jobs"));
            size_t i;
            json_t *row;
            json_array_foreach(json_object_get(r, "rows"), i, row)
            {
                long long job = (long long)json_integer_value(json_array_get(row, 0));
                const json_t *info = job_info(jobs, job);
                char key[32];
                snprintf(key, sizeof key, "%lld", job);
                after_job = job;
                after = (long long)json_integer_value(json_array_get(row, steps ? 2 : 1));
                if (json_object_get(done, key))
                    continue;
                json_object_set_new(mine, key, json_true());
                rows++;
                if (all) {
                    json_array_append_new(all, metric_row_json(job, info, row));
                    continue;
                }
                /* names are [A-Za-z0-9_.-/]: no quoting needed */
                fprintf(f, "j%lld,%s,%s,%lld", job, info ? jstr(info, "name") : "",
                        info ? jstr(info, "variant") : "", info ? jint(info, "seed") : -1);
                for (size_t k = 1; k < json_array_size(row); k++) {
                    const json_t *v = json_array_get(row, k);
                    if (json_is_integer(v))
                        fprintf(f, ",%lld", (long long)json_integer_value(v));
                    else if (json_is_number(v))
                        fprintf(f, ",%.9g", json_number_value(v));
                    else
                        fputc(',', f);
                }
                fputc('\n', f);
            }
            int more = json_is_true(json_object_get(r, "more"));
            json_decref(r);
            if (!more)
                break;
        }
        json_object_update(done, mine);
        json_decref(mine);
        json_decref(jobs);
    }
    json_decref(done);
    conn_close(&c);
    if (all) {
        json_t *doc = json_pack("{s:o}", "rows", all);
        if (json_dumpf(doc, f, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
            die("metrics: cannot write the JSON");
        fputc('\n', f);
        json_decref(doc);
    }
    if (out) {
        if (fclose(f) != 0 || rename(metrics_tmp, out) != 0)
            die("metrics: cannot write %s: %s", out, strerror(errno));
        metrics_tmp[0] = 0;
        fprintf(stderr, "wrote %s: %lld rows\n", out, rows);
    }
    return 0;
}

int cmd_table(int n, char **a)
{
    const char *fmt = "text";
    char *grids[RW_TARGETS_MAX];
    int ng = 0;
    for (int k = 0; k < n; k++) {
        if (!strcmp(a[k], "--format") && k + 1 < n) {
            fmt = a[++k];
            if (strcmp(fmt, "text") && strcmp(fmt, "csv") && strcmp(fmt, "markdown") &&
                strcmp(fmt, "latex"))
                usage_error("table", "--format is text, csv, markdown or latex, not '%s'", fmt);
        } else if (a[k][0] == '-') {
            usage_error("table", "unexpected argument '%s'", a[k]);
        } else {
            add_target("table", grids, &ng, a[k]);
        }
    }
    if (!ng)
        usage_error("table", "which grid?");
    conn c;
    need_conn(&c);
    if (cli_json) {
        json_t *m = req_new("table");
        set_targets(m, "grid", "grids", grids, ng);
        print_reply_json(request(&c, m));
    } else if (!strcmp(fmt, "text"))
        print_table(&c, grids, ng);
    else
        print_table_as(&c, grids, ng, fmt);
    conn_close(&c);
    return 0;
}

/* ------------------------------------------------------------------------ */
