/* runaway submit (and --dry-run), ls, grids, show, diff, logs, workers,
 * cancel, priority, requeue, rm. */
#include <errno.h>
#include <math.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/cli/cli.h"

/* submit */

/* The FIELD=VALUE words of submit, made absolute against this folder. */
static rw_overrides overrides_of(char *const *words, int n, char cwd[PATH_MAX])
{
    if (n && !getcwd(cwd, PATH_MAX))
        die("cannot read the working folder: %s", strerror(errno));
    return (rw_overrides){(const char *const *)words, (size_t)n, n ? cwd : NULL};
}

/* Reads and parses a grid or spec file with its overrides, or dies with
 * the parser's message; its text (the caller frees it). */
static char *read_grid(const char *path, const rw_overrides *ov, rw_grid *g,
                       char basedir[RW_PATH_MAX])
{
    char *text, err[2048];
    size_t len;
    if (rw_grid_read_file(path, RW_SUBMIT_TEXT_MAX, &text, &len, basedir, RW_PATH_MAX, err,
                          sizeof err) != 0)
        die("%s", err);
    if (rw_grid_parse_with(text, len, path, basedir, ov, g, err, sizeof err) != 0)
        die("%s", err);
    return text;
}

/* Parses locally first: a bad spec gets the parser's message even without
 * a daemon; the daemon parses again (it trusts no client), and has the last
 * word where the two hosts differ: a client that reaches a node's daemon
 * through a forwarded socket lacks the node's data folders, which the
 * local parse checks. The overrides go as words, applied by the daemon
 * through the same parser. */
json_t *do_submit(conn *c, const char *path, char *const *words, int nwords, int has_prio,
                  long prio)
{
    char basedir[RW_PATH_MAX], err[2048], cwd[PATH_MAX];
    size_t len;
    char *text;
    rw_overrides ov = overrides_of(words, nwords, cwd);
    if (rw_grid_read_file(path, RW_SUBMIT_TEXT_MAX, &text, &len, basedir, RW_PATH_MAX, err,
                          sizeof err) != 0)
        die("%s", err);
    rw_grid g;
    int parsed = rw_grid_parse_with(text, len, path, basedir, &ov, &g, err, sizeof err) == 0;
    if (parsed)
        rw_grid_free(&g);
    if (c->fd < 0 && open_conn(c) != 0) {
        if (!parsed)
            die("%s", err);
        die_no_daemon();
    }
    json_t *m = req_new("submit");
    json_t *t = json_string(text);
    free(text);
    if (!t)
        die("%s: not valid UTF-8", path);
    json_object_set_new(m, "text", t);
    json_object_set_new(m, "origin", json_string(path));
    json_object_set_new(m, "basedir", json_string(basedir));
    if (nwords) {
        json_t *o = json_array();
        for (int k = 0; k < nwords; k++) {
            json_t *w = json_string(words[k]);
            if (!w)
                die("%s: not valid UTF-8", words[k]);
            json_array_append_new(o, w);
        }
        json_object_set_new(m, "overrides", o);
        json_object_set_new(m, "cwd", json_string(cwd));
    }
    if (has_prio)
        json_object_set_new(m, "priority", json_integer(prio));
    return request(c, m);
}

/* ------------------------------------------------------------------------ */
/* submit --dry-run */

/* Field i of a spec (rw_spec_field), or the end of a dry run. */
static int spec_field(const rw_spec *s, int i, const char **name, char *val, size_t len)
{
    int has = rw_spec_field(s, i, name, val, len);
    if (has < 0)
        die("dry run: %s cannot be rendered", *name);
    return has;
}

/* What the command line changed: per field, its value in the file and
 * with the overrides, from the first job where it differs. */
static void print_overrides(const char *path, const rw_overrides *ov, const rw_grid *with)
{
    char basedir[RW_PATH_MAX], err[2048];
    char *text;
    size_t len;
    rw_grid plain;
    printf("command line:");
    for (size_t k = 0; k < ov->n; k++)
        printf(" %s", ov->words[k]);
    printf("\n");
    if (rw_grid_read_file(path, RW_SUBMIT_TEXT_MAX, &text, &len, basedir, RW_PATH_MAX, err,
                          sizeof err) != 0)
        return;
    int ok = rw_grid_parse(text, len, path, basedir, &plain, err, sizeof err) == 0;
    free(text);
    if (!ok || plain.njobs != with->njobs) { /* the file alone is not a grid: nothing to compare */
        if (ok)
            rw_grid_free(&plain);
        return;
    }
    enum { MAXD = 128 };
    rw_spec_delta *d = calloc(MAXD, sizeof *d);
    const char **seen = calloc((size_t)rw_spec_nfields(), sizeof *seen);
    int nseen = 0;
    if (!d || !seen)
        die("out of memory");
    for (size_t j = 0; j < with->njobs; j++) {
        int n = rw_spec_diff(&plain.jobs[j].spec, &with->jobs[j].spec, d, MAXD);
        for (int k = 0; k < n && k < MAXD; k++) {
            int dup = 0;
            for (int i = 0; i < nseen; i++)
                dup |= seen[i] == d[k].name; /* the names are the table's */
            if (dup || nseen == rw_spec_nfields())
                continue;
            seen[nseen++] = d[k].name;
            printf("  %-30s %s -> %s\n", d[k].name, d[k].in & RW_DELTA_A ? d[k].a : "(absent)",
                   d[k].in & RW_DELTA_B ? d[k].b : "(absent)");
        }
    }
    free(d);
    free(seen);
    rw_grid_free(&plain);
}

/* What `submit` would queue, without a daemon: every job, and per job the
 * fields in which the grid's jobs differ (besides the name and the seed,
 * which its name says), compared by name. */
int dry_run(const char *path, char *const *words, int nwords)
{
    char basedir[RW_PATH_MAX], cwd[PATH_MAX];
    rw_overrides ov = overrides_of(words, nwords, cwd);
    rw_grid g;
    free(read_grid(path, &ov, &g, basedir));
    int nf = rw_spec_nfields();
    int *varies = calloc((size_t)nf, sizeof *varies);
    char *v0 = malloc(RW_SPEC_VALUE_MAX), *v = malloc(RW_SPEC_VALUE_MAX);
    if (!varies || !v0 || !v)
        die("out of memory");
    const char *name;
    for (size_t j = 1; j < g.njobs; j++)
        for (int i = 0; i < nf; i++) {
            int h0 = spec_field(&g.jobs[0].spec, i, &name, v0, RW_SPEC_VALUE_MAX),
                h = spec_field(&g.jobs[j].spec, i, &name, v, RW_SPEC_VALUE_MAX);
            varies[i] |= h0 != h || strcmp(v0, v) != 0;
        }
    printf("grid %s: %zu job%s, priority %d (dry run: nothing submitted)\n", g.name, g.njobs,
           g.njobs == 1 ? "" : "s", g.priority);
    if (nwords)
        print_overrides(path, &ov, &g);
    for (size_t j = 0; j < g.njobs; j++) {
        printf("  %-40s", g.jobs[j].name);
        for (int i = 0; i < nf; i++) {
            int h = spec_field(&g.jobs[j].spec, i, &name, v, RW_SPEC_VALUE_MAX);
            if (!varies[i] || !strcmp(name, "name") || !strcmp(name, "seed"))
                continue;
            printf("  %s: %s", name, h ? v : "(absent)");
        }
        printf("\n");
    }
    int same = 0;
    for (int i = 0; i < nf; i++)
        same += !varies[i];
    printf("%d field%s the same in every job (runaway show prints a submitted job's whole spec)\n",
           same, same == 1 ? "" : "s");
    free(varies);
    free(v0);
    free(v);
    rw_grid_free(&g);
    return 0;
}

void print_submitted(json_t *r)
{
    json_t *jobs = json_object_get(r, "jobs");
    printf("grid g%lld %s: %zu job%s\n", jint(r, "grid"), jstr(r, "name"), json_array_size(jobs),
           json_array_size(jobs) == 1 ? "" : "s");
    size_t i;
    json_t *v;
    json_array_foreach(jobs, i, v) printf("  j%lld %s\n", jint(v, "id"), jstr(v, "name"));
}

/* ------------------------------------------------------------------------ */
/* ls, show, logs, workers, cancel */

static void fmt_num(char *out, size_t len, const json_t *o, const char *k, const char *fmt,
                    double scale)
{
    const json_t *v = json_object_get(o, k);
    if (json_is_number(v))
        snprintf(out, len, fmt, json_number_value(v) * scale);
    else
        snprintf(out, len, "-");
}

static void print_job_row(const json_t *j)
{
    char al[32], un[32], acc[32], ep[32];
    fmt_num(al, sizeof al, j, "align_last10", "%.3e", 1);
    fmt_num(un, sizeof un, j, "uniform_last10", "%+.3f", 1);
    fmt_num(acc, sizeof acc, j, "linear_acc", "%.1f%%", 100);
    fmt_num(ep, sizeof ep, j, "epoch", "%.0f", 1);
    printf("j%-5lld %-9s %-40s %5s %3lld  %-10s %-8s %s\n", jint(j, "id"), jstr(j, "state"),
           jstr(j, "name"), ep, jint(j, "attempts"), al, un, acc);
}

static void print_job_header(void)
{
    printf("%-6s %-9s %-40s %5s %3s  %-10s %-8s %s\n", "job", "state", "name", "epoch", "try",
           "L_align", "L_unif", "linear");
}

/* A duration as "3h05m", "12m30s" or "45s". */
void fmt_duration(double s, char *out, size_t len)
{
    long long t = llround(s < 0 ? 0 : s);
    if (t >= 3600)
        snprintf(out, len, "%lldh%02lldm", t / 3600, t % 3600 / 60);
    else if (t >= 60)
        snprintf(out, len, "%lldm%02llds", t / 60, t % 60);
    else
        snprintf(out, len, "%llds", t);
}

/* "grid g3: 2 done, 1 running, 5 queued; ~1h20m left" from the daemon's
 * progress object (the time left is an estimate from the grid's finished
 * and running jobs). */
void print_grid_progress(const char *grid, const json_t *p)
{
    if (!json_is_object(p))
        return;
    static const char *const states[] = {"done", "running", "queued", "failed", "cancelled",
                                         "collapsed"};
    printf("%s:", grid);
    const char *sep = " ";
    for (size_t k = 0; k < sizeof states / sizeof *states; k++) {
        long long n = jint(p, states[k]);
        if (n || k < 3) {
            printf("%s%lld %s", sep, n, states[k]);
            sep = ", ";
        }
    }
    const json_t *left = json_object_get(p, "left_s");
    if (jint(p, "queued") + jint(p, "running") == 0)
        printf("; ended\n");
    else if (json_is_number(left)) {
        char d[32];
        fmt_duration(json_number_value(left), d, sizeof d);
        printf("; ~%s left (estimate)\n", d);
    } else
        printf("; time left not known yet\n");
}

int cmd_grids(void)
{
    conn c;
    need_conn(&c);
    json_t *r = request(&c, req_new("grids"));
    if (cli_json) {
        print_reply_json(r);
        conn_close(&c);
        return 0;
    }
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "grids"), i, v)
    {
        time_t t = (time_t)rw_json_get_num(v, "created");
        struct tm tm;
        char when[32], label[200];
        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
        snprintf(label, sizeof label, "g%-4lld %-24s %s  prio %-3lld", jint(v, "id"),
                 jstr(v, "name"), when, jint(v, "priority"));
        print_grid_progress(label, json_object_get(v, "progress"));
    }
    if (!json_array_size(json_object_get(r, "grids")))
        printf("no grids\n");
    warn_db_down(r);
    json_decref(r);
    conn_close(&c);
    return 0;
}

int cmd_ls(int argc, char **argv)
{
    const char *grid = NULL, *state = NULL;
    for (int k = 0; k < argc; k++) {
        if (!strcmp(argv[k], "--state") && k + 1 < argc)
            state = argv[++k];
        else if (argv[k][0] == '-' || grid)
            usage_error("ls", "unexpected argument '%s'", argv[k]);
        else
            grid = argv[k];
    }
    conn c;
    need_conn(&c);
    json_t *m = req_new("ls");
    if (grid)
        json_object_set_new(m, "grid", json_string(grid));
    if (state)
        json_object_set_new(m, "state", json_string(state));
    json_t *r = request(&c, m);
    if (cli_json) {
        print_reply_json(r);
        conn_close(&c);
        return 0;
    }
    print_job_header();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "jobs"), i, v)
    {
        print_job_row(v);
        /* why it failed (collapsed), where only those are asked for */
        if (state && (!strcmp(state, "failed") || !strcmp(state, "collapsed")) &&
            json_is_string(json_object_get(v, "error")))
            printf("       %s\n", jstr(v, "error"));
    }
    if (grid)
        print_grid_progress(grid, json_object_get(r, "progress"));
    warn_db_down(r);
    json_decref(r);
    conn_close(&c);
    return 0;
}

static void print_time(const char *label, const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_number(v))
        return;
    time_t t = (time_t)json_number_value(v);
    struct tm tm;
    char buf[64];
    localtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    printf("%-10s %s\n", label, buf);
}

/* The fields in which two jobs' specs differ, side by side, compared by
 * name: a field only one spec has shows "(absent)" on the other side. */
int cmd_diff(const char *ja, const char *jb)
{
    enum { MAXD = 256 };
    conn c;
    need_conn(&c);
    const char *arg[2] = {ja, jb};
    char title[2][RW_JOB_NAME_MAX + 32];
    rw_spec *spec = malloc(2 * sizeof *spec);
    rw_spec_delta *d = calloc(MAXD, sizeof *d);
    if (!spec || !d)
        die("out of memory");
    for (int k = 0; k < 2; k++) {
        json_t *m = req_new("show");
        json_object_set_new(m, "job", json_string(arg[k]));
        json_t *r = request(&c, m);
        const json_t *j = json_object_get(r, "job");
        snprintf(title[k], sizeof title[k], "j%lld %s", jint(j, "id"), jstr(j, "name"));
        const char *text = jstr(r, "spec");
        char err[1024];
        if (rw_spec_parse(text, strlen(text), title[k], "", &spec[k], err, sizeof err) != 0)
            die("diff: %s", err);
        json_decref(r);
    }
    conn_close(&c);
    int n = rw_spec_diff(&spec[0], &spec[1], d, MAXD);
    if (n < 0)
        die("diff: a spec cannot be rendered");
    printf("%-32s %-28s %s\n", "field", title[0], title[1]);
    for (int k = 0; k < n && k < MAXD; k++)
        printf("%-32s %-28s %s\n", d[k].name, d[k].in & RW_DELTA_A ? d[k].a : "(absent)",
               d[k].in & RW_DELTA_B ? d[k].b : "(absent)");
    printf("%d field%s differ%s\n", n, n == 1 ? "" : "s", n == 1 ? "s" : "");
    free(spec);
    free(d);
    return 0;
}

/* One line of a stored canonical spec as a person reads it: floats in
 * their fewest digits (specs stored before the canonical YAML wrote them
 * so carry 0.000300000014), lists element by element. */
static void print_spec_line(const char *line, int len)
{
    const char *colon = memchr(line, ':', (size_t)len);
    char val[RW_SPEC_VALUE_MAX], out[64];
    if (!colon || colon + 1 >= line + len || (size_t)(line + len - colon) >= sizeof val) {
        printf("  %.*s\n", len, line);
        return;
    }
    snprintf(val, sizeof val, "%.*s", (int)(line + len - colon - 1), colon + 1);
    printf("  %.*s:", (int)(colon - line), line);
    char *p = val;
    while (*p == ' ')
        p++;
    if (*p != '[') {
        rw_spec_value_short(p, out, sizeof out);
        printf(" %s\n", strlen(p) < sizeof out ? out : p);
        return;
    }
    printf(" [");
    char *save = NULL;
    int k = 0;
    for (char *e = strtok_r(p + 1, ",]", &save); e; e = strtok_r(NULL, ",]", &save)) {
        rw_spec_value_short(e, out, sizeof out);
        printf("%s%s", k++ ? ", " : "", out);
    }
    printf("]\n");
}

int cmd_show(const char *job)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("show");
    json_object_set_new(m, "job", json_string(job));
    json_t *r = request(&c, m);
    if (cli_json) {
        print_reply_json(r);
        conn_close(&c);
        return 0;
    }
    json_t *j = json_object_get(r, "job");
    printf("job        j%lld %s (grid g%lld)\n", jint(j, "id"), jstr(j, "name"), jint(j, "grid"));
    printf("state      %s%s%s\n", jstr(j, "state"), json_is_string(json_object_get(j, "error")) ? ": " : "",
           jstr(j, "error"));
    printf("devices    %lld   priority %lld   attempts %lld (lost %lld)\n", jint(j, "devices"),
           jint(j, "priority"), jint(j, "attempts"), jint(j, "lost"));
    print_time("created", j, "created");
    print_time("started", j, "started");
    print_time("finished", j, "finished");
    const json_t *pr = json_object_get(r, "progress");
    if (json_is_object(pr)) {
        char d[32] = "?";
        if (json_is_number(json_object_get(pr, "left_s")))
            fmt_duration(rw_json_get_num(pr, "left_s"), d, sizeof d);
        printf("progress   epoch %lld of %lld, ~%s of training left\n", jint(j, "epoch"),
               jint(pr, "epochs"), d);
    }
    printf("run dir    %s\n", jstr(r, "run_dir"));
    const json_t *snaps = json_object_get(r, "snapshots");
    size_t ns = json_array_size(snaps);
    if (ns) { /* what sphere --snapshots draws from: the first few and the last */
        printf("snapshots  %zu, epochs", ns);
        for (size_t k = 0; k < ns && k < 8; k++)
            printf(" %lld", (long long)json_integer_value(json_array_get(snaps, k)));
        if (ns > 8)
            printf(" ... %lld", (long long)json_integer_value(json_array_get(snaps, ns - 1)));
        printf("\n");
    }
    if (json_is_string(json_object_get(r, "tensorboard")))
        printf("tensorboard %s\n", jstr(r, "tensorboard"));
    char al[32], un[32], acc[32];
    fmt_num(al, sizeof al, j, "align_last10", "%.4e", 1);
    fmt_num(un, sizeof un, j, "uniform_last10", "%+.4f", 1);
    fmt_num(acc, sizeof acc, j, "linear_acc", "%.2f%%", 100);
    printf("result     L_align %s  L_uniform %s (last 10 epochs)  linear eval %s\n", al, un, acc);
    size_t i;
    json_t *v;
    printf("attempts:\n");
    json_array_foreach(json_object_get(r, "attempts"), i, v) printf(
        "  #%lld on worker %s: %s%s%s\n", jint(v, "id"), jstr(v, "worker"), jstr(v, "outcome"),
        json_is_string(json_object_get(v, "error")) ? ": " : "", jstr(v, "error"));
    printf("spec:\n");
    const char *s = jstr(r, "spec");
    while (*s) {
        const char *e = strchr(s, '\n');
        int n = e ? (int)(e - s) : (int)strlen(s);
        print_spec_line(s, n);
        s += n + (e ? 1 : 0);
    }
    json_decref(r);
    conn_close(&c);
    return 0;
}

static void print_log_line(const json_t *v)
{
    time_t t = (time_t)json_number_value(json_object_get(v, "t"));
    struct tm tm;
    char ts[32];
    localtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%H:%M:%S", &tm);
    printf("%s %s%s\n", ts, strcmp(jstr(v, "kind"), "log") ? "* " : "", jstr(v, "text"));
}

int cmd_logs(int argc, char **argv)
{
    const char *job = NULL;
    long tail = 0;
    int follow = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--tail") && i + 1 < argc) {
            char *end;
            tail = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || tail < 0)
                usage_error("logs", "--tail: '%s' is not a count", argv[i]);
        }
        else if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--follow"))
            follow = 1;
        else if (!job)
            job = argv[i];
        else
            usage_error("logs", "unexpected argument '%s'", argv[i]);
    }
    if (!job)
        usage_error("logs", "which job?");
    conn c;
    need_conn(&c);
    /* the last line printed: after a reconnect, the tail is printed from
     * the line after it */
    json_t *last = NULL;
    for (int again = 0;; again = 1) {
        json_t *m = req_new("logs");
        json_object_set_new(m, "job", json_string(job));
        if (tail > 0 || again)
            json_object_set_new(m, "tail", json_integer(again ? 5000 : tail));
        if (follow)
            json_object_set_new(m, "follow", json_true());
        json_t *r = request(&c, m);
        long long id = rw_msg_id(r);
        json_t *lines = json_object_get(r, "lines");
        size_t from = 0, i;
        json_t *v;
        json_array_foreach(lines, i, v) if (last && json_equal(v, last)) from = i + 1;
        for (i = from; i < json_array_size(lines); i++) {
            print_log_line(json_array_get(lines, i));
            json_decref(last);
            last = json_incref(json_array_get(lines, i));
        }
        json_decref(r);
        fflush(stdout);
        /* then the job's new lines as they come, until it has ended */
        char why[256] = "";
        while (follow) {
            json_t *e = NULL;
            if (rw_frame_recv_fd(c.fd, &c.r, &e, -1, why, sizeof why) <= 0)
                break;
            if (rw_msg_id(e) == id && !strcmp(jstr(e, "type"), "watch_end")) {
                follow = 0;
            } else if (rw_msg_id(e) == id && !strcmp(jstr(e, "kind"), "log")) {
                print_log_line(json_object_get(e, "line"));
                json_decref(last);
                last = json_incref(json_object_get(e, "line"));
            } else if (rw_msg_id(e) == id && !strcmp(jstr(e, "kind"), "daemon")) {
                printf("* %s\n", jstr(e, "text"));
            }
            fflush(stdout);
            json_decref(e);
        }
        conn_close(&c);
        if (!follow)
            break;
        if (!why[0])
            snprintf(why, sizeof why, "connection closed");
        reconnect(&c, why);
        printf("* runawayd is back\n");
    }
    json_decref(last);
    return 0;
}

int cmd_workers(void)
{
    conn c;
    need_conn(&c);
    json_t *r = request(&c, req_new("workers"));
    if (cli_json) {
        print_reply_json(r);
        conn_close(&c);
        return 0;
    }
    printf("%-4s %-8s %-9s %-8s %-8s %-16s %-6s %s\n", "slot", "device", "state", "pid", "backend",
           "host", "job", "starts");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "workers"), i, v)
    {
        char job[32] = "-";
        if (jint(v, "job"))
            snprintf(job, sizeof job, "j%lld", jint(v, "job"));
        printf("%-4lld %-8s %-9s %-8lld %-8s %-16s %-6s %lld%s\n", jint(v, "slot"), jstr(v, "device"),
               jstr(v, "state"), jint(v, "pid"), jstr(v, "backend"), jstr(v, "host"), job,
               jint(v, "starts"), json_is_true(json_object_get(v, "remote")) ? " (remote)" : "");
    }
    json_decref(r);
    conn_close(&c);
    return 0;
}

int cmd_cancel(const char *target)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("cancel");
    json_object_set_new(m, "target", json_string(target));
    json_t *r = request(&c, m);
    printf("cancelled %lld job%s\n", jint(r, "cancelled"), jint(r, "cancelled") == 1 ? "" : "s");
    json_decref(r);
    conn_close(&c);
    return 0;
}

int cmd_priority(const char *target, const char *value)
{
    char *end;
    long p = strtol(value, &end, 10);
    if (!*value || *end)
        die("priority: '%s' is not a whole number", value);
    conn c;
    need_conn(&c);
    json_t *m = req_new("priority");
    json_object_set_new(m, "target", json_string(target));
    json_object_set_new(m, "priority", json_integer(p));
    json_t *r = request(&c, m);
    long long n = jint(r, "updated");
    printf("priority %ld for %lld job%s%s\n", p, n, n == 1 ? "" : "s",
           n ? " (the queued ones take their new place)" : ": none had not finished");
    json_decref(r);
    conn_close(&c);
    return 0;
}

int cmd_requeue(const char *target)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("requeue");
    json_object_set_new(m, "target", json_string(target));
    json_t *r = request(&c, m);
    long long n = jint(r, "requeued");
    printf("requeued %lld job%s%s\n", n, n == 1 ? "" : "s",
           n ? " (each resumes from its checkpoint)"
             : ": none had failed or been cancelled (a collapsed job is not requeued)");
    json_decref(r);
    conn_close(&c);
    return 0;
}

/* Removed folders, one a line; sibling run folders as DIR/{12,13,14}. */
static void print_removed(const json_t *paths)
{
    size_t n = json_array_size(paths), i;
    const char *first = json_string_value(json_array_get(paths, 0));
    const char *slash = first ? strrchr(first, '/') : NULL;
    size_t dlen = slash ? (size_t)(slash - first + 1) : 0;
    int siblings = n > 1 && slash;
    json_t *v;
    json_array_foreach(paths, i, v)
    {
        const char *p = json_string_value(v);
        siblings &= !strncmp(p, first, dlen) && !strchr(p + dlen, '/');
    }
    if (!siblings) {
        json_array_foreach(paths, i, v) printf("  %s\n", json_string_value(v));
        return;
    }
    printf("  %.*s{", (int)dlen, first);
    json_array_foreach(paths, i, v) printf("%s%s", i ? "," : "", json_string_value(v) + dlen);
    printf("}\n");
}

int cmd_rm(const char *target)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("rm");
    json_object_set_new(m, "target", json_string(target));
    json_t *r = request(&c, m);
    int grid = !strcmp(jstr(r, "kind"), "grid");
    long long nj = jint(r, "jobs"), nm = jint(r, "metrics");
    printf("removed %c%lld %s (%lld job%s, %lld metric%s)", grid ? 'g' : 'j', jint(r, "target"),
           jstr(r, "name"), nj, nj == 1 ? "" : "s", nm, nm == 1 ? "" : "s");
    if (!grid && json_is_true(json_object_get(r, "grid_removed")))
        printf(", and its grid g%lld, which had no other job", jint(r, "grid"));
    printf("\n");
    print_removed(json_object_get(r, "runs"));
    print_removed(json_object_get(r, "tensorboard"));
    size_t i;
    json_t *v;
    json_t *errs = json_object_get(r, "errors");
    json_array_foreach(errs, i, v) fprintf(stderr, "runaway: rm: cannot remove %s\n",
                                           json_string_value(v));
    if (jint(r, "errors_more"))
        fprintf(stderr, "runaway: rm: and %lld more\n", jint(r, "errors_more"));
    if (json_array_size(errs))
        fprintf(stderr, "runaway: rm: the jobs are gone from the database; remove those files "
                        "by hand\n");
    int rc = json_array_size(errs) ? 1 : 0;
    json_decref(r);
    conn_close(&c);
    return rc;
}

/* ------------------------------------------------------------------------ */

/* runaway submit SPEC.yaml [KEY=VALUE...] [--priority P] [-n|--dry-run] */
int cmd_submit(int n, char **a)
{
    long prio = 0;
    int has_prio = 0, dry = 0, nwords = 0;
    const char *path = NULL;
    char **words = calloc((size_t)n + 1, sizeof *words);
    if (!words)
        die("out of memory");
    for (int k = 0; k < n; k++) {
        if (!strcmp(a[k], "--priority")) {
            char *end;
            prio = strtol(a[++k], &end, 10);
            if (*end || end == a[k])
                usage_error("submit", "--priority: '%s' is not a whole number", a[k]);
            has_prio = 1;
        } else if (!strcmp(a[k], "--dry-run") || !strcmp(a[k], "-n")) {
            dry = 1;
        } else if (!path)
            path = a[k];
        else if (strchr(a[k], '='))
            words[nwords++] = a[k];
        else
            usage_error("submit", "unexpected argument '%s' (fields are set as FIELD=VALUE, "
                        "as optim.lr=1e-3)", a[k]);
    }
    if (nwords > RW_OVERRIDES_MAX)
        usage_error("submit", "more than %d FIELD=VALUE words", RW_OVERRIDES_MAX);
    int rc = 0;
    if (dry) {
        rc = dry_run(path, words, nwords);
    } else {
        conn c = {.fd = -1};
        json_t *r = do_submit(&c, path, words, nwords, has_prio, prio);
        print_submitted(r);
        json_decref(r);
        conn_close(&c);
    }
    free(words);
    return rc;
}
