/* runaway table and runaway metrics: results per variant, every row as CSV. */
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

static void pm(char *out, size_t len, const json_t *o, const char *mean, const char *std,
               const char *fmt, const char *sfmt, double scale)
{
    const json_t *a = json_object_get(o, mean), *b = json_object_get(o, std);
    if (!json_is_number(a)) {
        snprintf(out, len, "-");
        return;
    }
    char f2[64];
    snprintf(f2, sizeof f2, "%s ± %s", fmt, sfmt);
    snprintf(out, len, f2, json_number_value(a) * scale,
             json_is_number(b) ? json_number_value(b) * scale : 0.0);
}

/* A row's mark against the random baseline (the daemon's table reply):
 * 1 worse, 0 not, -1 no comparison (no baseline, or no number). */
static int worse(const json_t *row, const char *flag)
{
    const json_t *f = json_object_get(row, flag);
    return json_is_boolean(f) ? json_is_true(f) : -1;
}

/* `cell` with `pre`/`post` around it where the row is worse than the
 * baseline. */
static void marked(char *out, size_t len, const char *cell_text, const json_t *row,
                   const char *flag, const char *pre, const char *post)
{
    if (worse(row, flag) == 1)
        snprintf(out, len, "%s%s%s", pre, cell_text, post);
    else
        snprintf(out, len, "%s", cell_text);
}

static int any_worse(const json_t *rows)
{
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v) if (worse(v, "uniform_worse") == 1 || worse(v, "acc_worse") == 1)
        return 1;
    return 0;
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
    printf(": mean ± std over seeds; L_align(q.f) and L_uniform(f) averaged over the "
           "last 10 epochs, the effective rank of f at the end\n");
    int w = 20; /* the longest variant's name (a sweep's are long) */
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        int len = (int)strlen(jstr(v, "variant"));
        w = len > w ? len : w;
    }
    int ws = any_w(json_object_get(r, "rows"));
    printf("%-*s %5s  %-24s %-20s %-18s %s%s\n", w, "variant", "n", "L_align(q.f)", "L_uniform(f)",
           "rank(f)", ws ? "cos(W,I)             " : "", "linear eval top-1");
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        char al[64], un[64], rk[64], acc[64], n[32], unm[80], accm[80], wi[64] = "", wic[72] = "";
        pm(al, sizeof al, v, "align_mean", "align_std", "%.3e", "%.1e", 1);
        pm(un, sizeof un, v, "uniform_mean", "uniform_std", "%+.3f", "%.3f", 1);
        pm(rk, sizeof rk, v, "rank_mean", "rank_std", "%.1f", "%.1f", 1);
        if (ws) {
            pm(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "%+.3f", "%.3f", 1);
            pad_cols(wic, sizeof wic, wi, 21);
        }
        pm(acc, sizeof acc, v, "acc_mean", "acc_std", "%.2f", "%.2f", 100);
        if (json_is_number(json_object_get(v, "acc_mean")))
            strcat(acc, "%");
        marked(unm, sizeof unm, un, v, "uniform_worse", "", " *");
        marked(accm, sizeof accm, acc, v, "acc_worse", "", " *");
        snprintf(n, sizeof n, "%lld/%lld", jint(v, "n"), jint(v, "jobs"));
        printf("%-*s %5s  %-24s %-20s %-18s %s%s\n", w, jstr(v, "variant"), n, al, unm, rk, wic,
               accm);
    }
    if (any_worse(json_object_get(r, "rows")))
        printf("* worse than the random baseline (%s): L_uniform(f) higher, linear eval lower\n",
               jstr(r, "baseline"));
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
 * on `flag` (NULL: never) */
static void pm_tex(char *out, size_t len, const json_t *o, const char *mean, const char *std,
                   const char *fmt, const char *sfmt, double scale, const char *flag)
{
    const json_t *a = json_object_get(o, mean), *b = json_object_get(o, std);
    if (!json_is_number(a)) {
        snprintf(out, len, "--");
        return;
    }
    char m[64], sd[64];
    tex_num(m, sizeof m, fmt, json_number_value(a) * scale);
    tex_num(sd, sizeof sd, sfmt, json_is_number(b) ? json_number_value(b) * scale : 0.0);
    snprintf(out, len, flag && worse(o, flag) == 1 ? "$\\mathbf{%s \\pm %s}$" : "$%s \\pm %s$", m,
             sd);
}

/* The table as a LaTeX tabular (booktabs rules), for the paper. */
static void print_table_tex(const json_t *r)
{
    const json_t *rows = json_object_get(r, "rows");
    int ws = any_w(rows);
    printf("%% runaway table: mean \\pm std over seeds; n: finished jobs / jobs. "
           "Needs \\usepackage{booktabs}.\n");
    printf("\\begin{tabular}{lc%s}\n\\toprule\n", ws ? "ccccc" : "cccc");
    printf("variant & $n$ & $\\mathcal{L}_{\\mathrm{align}}(q \\circ f)$ & "
           "$\\mathcal{L}_{\\mathrm{uniform}}(f)$ & $\\mathrm{rank}(f)$ & %s"
           "linear eval top-1 (\\%%) \\\\\n\\midrule\n",
           ws ? "$\\cos(W, I)$ & " : "");
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
        pm_tex(al, sizeof al, v, "align_mean", "align_std", "%.3e", "%.1e", 1, NULL);
        pm_tex(un, sizeof un, v, "uniform_mean", "uniform_std", "%.3f", "%.3f", 1,
               "uniform_worse");
        pm_tex(rk, sizeof rk, v, "rank_mean", "rank_std", "%.1f", "%.1f", 1, NULL);
        pm_tex(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "%.3f", "%.3f", 1, NULL);
        pm_tex(acc, sizeof acc, v, "acc_mean", "acc_std", "%.2f", "%.2f", 100, "acc_worse");
        printf("%s & %lld/%lld & %s & %s & %s & %s%s%s \\\\\n", name, jint(v, "n"),
               jint(v, "jobs"), al, un, rk, ws ? wi : "", ws ? " & " : "", acc);
    }
    printf("\\bottomrule\n\\end{tabular}\n");
    if (any_worse(rows))
        printf("%% Bold: worse than the random baseline (%s): L_uniform(f) higher, linear eval "
               "lower.\n", jstr(r, "baseline"));
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
    int csv = !strcmp(fmt, "csv"), ws = any_w(json_object_get(r, "rows"));
    if (csv)
        printf("variant,n,jobs,align_mean,align_std,uniform_mean,uniform_std,linear_acc_mean,"
               "linear_acc_std,rank_mean,rank_std,w_cos_i_mean,w_cos_i_std,uniform_worse,"
               "acc_worse\n");
    else
        printf("| variant | n | L_align(q.f) | L_uniform(f) | rank(f) |%s linear eval top-1 (%%) |\n"
               "|---|---|---|---|---|%s---|\n", ws ? " cos(W,I) |" : "", ws ? "---|" : "");
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
            /* against the random baseline: 1 worse, 0 not, empty where no comparison */
            const char *b01[] = {"", "0", "1"};
            printf("%s,%lld,%lld,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", jstr(v, "variant"),
                   jint(v, "n"), jint(v, "jobs"), am, as, um, us, cm, cs, rm, rs, wm, wsd,
                   b01[worse(v, "uniform_worse") + 1], b01[worse(v, "acc_worse") + 1]);
        } else {
            char al[64], un[64], rk[64], acc[64], unm[80], accm[80], wi[64], wic[72] = "";
            pm(al, sizeof al, v, "align_mean", "align_std", "%.3e", "%.1e", 1);
            pm(un, sizeof un, v, "uniform_mean", "uniform_std", "%+.3f", "%.3f", 1);
            pm(rk, sizeof rk, v, "rank_mean", "rank_std", "%.1f", "%.1f", 1);
            if (ws) {
                pm(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "%+.3f", "%.3f", 1);
                snprintf(wic, sizeof wic, " %s |", wi);
            }
            pm(acc, sizeof acc, v, "acc_mean", "acc_std", "%.2f", "%.2f", 100);
            /* bold, as the paper highlights them */
            marked(unm, sizeof unm, un, v, "uniform_worse", "**", "**");
            marked(accm, sizeof accm, acc, v, "acc_worse", "**", "**");
            printf("| %s | %lld/%lld | %s | %s | %s |%s %s |\n", jstr(v, "variant"), jint(v, "n"),
                   jint(v, "jobs"), al, unm, rk, wic, accm);
        }
    }
    if (!csv && any_worse(json_object_get(r, "rows")))
        printf("\nBold: worse than the random baseline (%s): L_uniform(f) higher, linear eval "
               "lower.\n",
               jstr(r, "baseline"));
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
