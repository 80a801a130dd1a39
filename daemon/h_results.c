/* Client requests for results: curves and metrics of jobs and grids,
 * the paper's table, a checkpoint's bytes (export), a sphere. Several
 * grids or jobs merge by variant after checking each is one experiment. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/handlers.h"
#include "daemon/offload.h"
#include "daemon/query.h"
#include "daemon/stats.h"
#include "proto/grid.h"
#include "proto/msg.h"
#include "proto/spec.h"

/* Mean of L_align and L_uniform over a job's last 10 epochs, each epoch's
 * newest row (a resumed attempt re-reports epochs after its checkpoint). */
static int job_last10(rd_store *d, int64_t job, double *align, double *uniform)
{
    sqlite3_stmt *st = rd_db_prep(d,
        "SELECT align, uniform FROM metrics WHERE id IN (SELECT MAX(id) FROM metrics WHERE "
        "job_id=? AND kind='epoch' GROUP BY epoch) ORDER BY epoch DESC LIMIT 10");
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    double sa = 0, su = 0;
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        sa += sqlite3_column_double(st, 0);
        su += sqlite3_column_double(st, 1);
        n++;
    }
    sqlite3_finalize(st);
    if (!n)
        return -1;
    *align = sa / n;
    *uniform = su / n;
    return 0;
}

/* A per-epoch metric (rank: the effective rank; w_cos_i: a linear
 * predictor's cosine with I) at the job's last epoch that measured it (its
 * newest row): where training left it. */
static int job_final(rd_store *d, int64_t job, const char *col, double *out)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT %s FROM metrics WHERE job_id=? AND kind='epoch' AND %s IS "
             "NOT NULL ORDER BY epoch DESC, id DESC LIMIT 1", col, col);
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : -1;
    if (rc == 0)
        *out = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    return rc;
}

static void mean_std(const double *x, int n, double *mean, double *std)
{
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    *mean = n ? s / n : NAN;
    for (int i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *std = n > 1 ? sqrt(ss / (n - 1)) : (n == 1 ? 0 : NAN); /* sample std over seeds */
}

/* Rows in a curves reply, over all its jobs: ~130 bytes each, so a reply
 * stays far below the frame limit; longer curves are thinned evenly. */
#define CURVE_ROWS_MAX 4000

/* One job's curve: per epoch (its newest row), [epoch, loss, align,
 * uniform, collapse, knn, rank, linear, w_cos_i], at most `cap` rows (first
 * and last kept). */
static json_t *job_curve(rd_store *d, int64_t job, size_t cap)
{
    json_t *all = json_array();
    sqlite3_stmt *st = rd_db_prep(d,
        "SELECT epoch, loss, align, uniform, collapse, knn, rank, linear, w_cos_i FROM metrics "
        "WHERE id IN "
        "(SELECT "
        "MAX(id) FROM metrics WHERE job_id=? AND kind='epoch' GROUP BY epoch) ORDER BY epoch");
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        while (sqlite3_step(st) == SQLITE_ROW) {
            json_t *row = json_array();
            for (int i = 0; i < 9; i++)
                json_array_append_new(row, rd_col_json(st, i));
            json_array_append_new(all, row);
        }
        sqlite3_finalize(st);
    }
    size_t n = json_array_size(all);
    if (n <= cap)
        return all;
    json_t *thin = json_array();
    for (size_t k = 0; k < cap; k++)
        json_array_append(thin, json_array_get(all, cap > 1 ? k * (n - 1) / (cap - 1) : n - 1));
    json_decref(all);
    return thin;
}

/* ------------------------------------------------------------------------ */
/* Several grids or jobs as one: `table` and `curves` merge their jobs by
 * variant name (seeds added in a later grid, a variant trained later),
 * after checking that each variant is one experiment. */

typedef struct target_set {
    size_t n; /* targets, repeats dropped */
    char kind[RW_TARGETS_MAX];
    int64_t id[RW_TARGETS_MAX];
    char *set; /* their jobs' ids as JSON text, the ?1 of IN_SET */
} target_set;

#define IN_SET "id IN (SELECT value FROM json_each(?1))"

static const char *jstr(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static void target_set_free(target_set *t)
{
    free(t->set);
    memset(t, 0, sizeof *t);
}

/* The request's targets: `one` (a string) or `many` (a list), exactly one of
 * the two; grids_only: a job is not one. -1 after replying. */
static int targets_arg(rd_store *d, rd_answer *a, json_t *m, const char *one, const char *many,
                       int grids_only, target_set *t)
{
    memset(t, 0, sizeof *t);
    json_t *o = json_object_get(m, one), *l = json_object_get(m, many);
    if (!o == !l) {
        rd_answer_fail(a, RW_E_BAD_MESSAGE, "%s: give %s or %s, not %s",
                       json_string_value(json_object_get(m, "type")), one, many,
                       o ? "both" : "neither");
        return -1;
    }
    json_t *names = o ? json_pack("[O]", o) : json_incref(l);
    size_t i;
    json_t *v;
    int rc = 0;
    json_t *jobs = json_array();
    json_array_foreach(names, i, v)
    {
        const char *s = json_string_value(v);
        char kind = 'g';
        int64_t tid = grids_only ? rd_resolve_grid(d, s) : 0;
        if (grids_only ? !tid : rd_resolve_target(d, s, &kind, &tid) != 0) {
            rd_answer_fail(a, RW_E_NOT_FOUND,
                           grids_only ? "no grid '%s'" : "no job or grid '%s'", s);
            rc = -1;
            break;
        }
        size_t k = 0;
        while (k < t->n && !(t->kind[k] == kind && t->id[k] == tid))
            k++;
        if (k < t->n)
            continue;
        t->kind[t->n] = kind;
        t->id[t->n++] = tid;
        json_t *ids = rd_query_rows(d, kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1 ORDER BY id"
                                                : "SELECT id FROM jobs WHERE id=?1",
                                 tid, RW_GRID_JOBS_MAX);
        size_t k2;
        json_t *r;
        json_array_foreach(ids, k2, r) json_array_append(jobs, json_object_get(r, "id"));
        json_decref(ids);
    }
    json_decref(names);
    if (rc == 0 && !(t->set = json_dumps(jobs, JSON_COMPACT))) {
        rd_answer_fail(a, RW_E_INTERNAL, "out of memory");
        rc = -1;
    }
    json_decref(jobs);
    if (rc != 0)
        target_set_free(t);
    return rc;
}

/* Rows of sql over a target set (?1), as query_rows. */
static json_t *set_rows(rd_store *d, const char *sql, const target_set *t, size_t max)
{
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (st)
        sqlite3_bind_text(st, 1, t->set, -1, SQLITE_TRANSIENT);
    return rd_rows_of(st, max);
}

/* A job's stored spec as what it trains, with what may differ between
 * seeds of one experiment (seed, threads, the device budget, logging,
 * checkpoints, the collapse alarm) at their defaults. 0, or -1 if it
 * cannot be read. */
static int job_trained_spec(rd_store *d, int64_t job, rw_spec *t)
{
    sqlite3_stmt *st = rd_db_prep(d, "SELECT spec FROM jobs WHERE id=?");
    rw_spec *s = malloc(sizeof *s), *def = malloc(sizeof *def);
    int rc = -1;
    if (st && s && def) {
        sqlite3_bind_int64(st, 1, job);
        char err[512];
        const char *text = sqlite3_step(st) == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0)
                                                           : NULL;
        if (text && rw_spec_parse(text, strlen(text), "stored spec", "", s, err, sizeof err) == 0) {
            rw_spec_defaults(def);
            rw_spec_trained(s, t);
            t->seed = 0;
            t->threads = def->threads;
            t->data.loader_threads = def->data.loader_threads;
            t->data.device_budget_mb = def->data.device_budget_mb;
            t->log = def->log;
            t->checkpoint = def->checkpoint;
            t->monitor = def->monitor; /* watches training, changes none of it */
            rc = 0;
        }
    }
    if (st)
        sqlite3_finalize(st);
    free(s);
    free(def);
    return rc;
}

/* Whether the variants of a merged set are each one experiment: one
 * variant's jobs from several grids train the same spec but for the seed,
 * and no seed of it counts twice (two finished jobs). 0, or -1 with why. */
static int targets_disagree(rd_store *d, const target_set *t, char *why, size_t len)
{
    json_t *firsts = set_rows(d, "SELECT variant, grid_id, MIN(id) AS id FROM jobs WHERE " IN_SET
                                 " GROUP BY variant, grid_id ORDER BY variant, MIN(id)",
                              t, RW_TARGETS_MAX * RW_GRID_JOBS_MAX);
    rw_spec *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    rw_spec_delta *delta = malloc(sizeof *delta);
    int rc = 0, a_ok = 0;
    const json_t *ref = NULL;
    size_t i;
    json_t *v;
    if (!a || !b || !delta) {
        snprintf(why, len, "out of memory");
        rc = -1;
    }
    json_array_foreach(firsts, i, v)
    {
        if (rc)
            break;
        if (!ref || strcmp(jstr(ref, "variant"), jstr(v, "variant"))) {
            ref = v;
            a_ok = job_trained_spec(d, json_integer_value(json_object_get(v, "id")), a) == 0;
            continue;
        }
        int b_ok = job_trained_spec(d, json_integer_value(json_object_get(v, "id")), b) == 0;
        /* by field name: a field only one side has (the unified loss's
         * weights) is a difference, and the fields after it stay aligned */
        int nd = a_ok && b_ok ? rw_spec_diff(a, b, delta, 1) : -1;
        if (nd != 0) {
            long long ga = json_integer_value(json_object_get(ref, "grid_id")),
                      gb = json_integer_value(json_object_get(v, "grid_id")),
                      ja = json_integer_value(json_object_get(ref, "id")),
                      jb = json_integer_value(json_object_get(v, "id"));
            char what[3 * RW_SPEC_FIELD_MAX] = "its stored spec cannot be read";
            if (nd > 0) {
                char va[RW_SPEC_FIELD_MAX] = "absent", vb[RW_SPEC_FIELD_MAX] = "absent";
                if (delta->in & RW_DELTA_A)
                    rw_spec_value_short(delta->a, va, sizeof va);
                if (delta->in & RW_DELTA_B)
                    rw_spec_value_short(delta->b, vb, sizeof vb);
                snprintf(what, sizeof what, "%s is %s in g%lld (j%lld), %s in g%lld (j%lld)",
                         delta->name, va, ga, ja, vb, gb, jb);
            }
            snprintf(why, len, "variant '%s' is not the same experiment in g%lld and g%lld: %s; "
                     "table them apart", jstr(v, "variant"), ga, gb, what);
            rc = -1;
        }
    }
    json_decref(firsts);
    free(a);
    free(b);
    free(delta);
    if (rc)
        return rc;
    json_t *twice = set_rows(d, "SELECT variant, seed, GROUP_CONCAT('j' || id, ' and ') AS ids "
                                "FROM jobs WHERE " IN_SET " AND state IN ('done','collapsed') "
                                "GROUP BY variant, seed "
                                "HAVING COUNT(*) > 1 ORDER BY MIN(id) LIMIT 1",
                             t, 1);
    if (json_array_size(twice)) {
        const json_t *r = json_array_get(twice, 0);
        snprintf(why, len, "variant '%s' seed %lld finished twice (%s): its numbers would count "
                 "twice; leave one of them out (rm it, or table the grids apart)",
                 jstr(r, "variant"), (long long)json_integer_value(json_object_get(r, "seed")),
                 jstr(r, "ids"));
        rc = -1;
    }
    json_decref(twice);
    return rc;
}

/* The target's jobs: id, name, variant, seed, state. */
static json_t *target_jobs(rd_store *d, char kind, int64_t tid)
{
    return rd_query_rows(d,
                      kind == 'g' ? "SELECT id, name, variant, seed, state FROM jobs "
                                    "WHERE grid_id=?1 ORDER BY id"
                                  : "SELECT id, name, variant, seed, state FROM jobs WHERE id=?1",
                      tid, RW_GRID_JOBS_MAX);
}

/* The training curves of a job, or of every job of a grid. */
static void curves(rd_store *s, long long id, json_t *m, rd_answer *a)
{
    target_set t;
    if (targets_arg(s, a, m, "target", "targets", 0, &t) != 0)
        return;
    int any_grid = 0;
    for (size_t k = 0; k < t.n; k++)
        any_grid |= t.kind[k] == 'g';
    char why[1024];
    /* grouped by variant where a grid is among them: each must be one */
    if (t.n > 1 && any_grid && targets_disagree(s, &t, why, sizeof why) != 0) {
        rd_answer_fail(a, RW_E_STATE, "%s", why);
        target_set_free(&t);
        return;
    }
    /* linear_final: the job's result, its final linear evaluation, which
     * no epoch row holds unless eval.linear.every is set */
    json_t *jobs = set_rows(s, "SELECT id, name, variant, seed, state, linear_acc AS linear_final "
                               "FROM jobs WHERE " IN_SET " ORDER BY id",
                            &t, RW_TARGETS_MAX * RW_GRID_JOBS_MAX);
    /* a grid's worth of curves fits in a reply, not many */
    if (json_array_size(jobs) > RW_GRID_JOBS_MAX) {
        rd_answer_fail(a, RW_E_STATE, "%zu jobs are more than one plot draws (at most %d)",
                       json_array_size(jobs), RW_GRID_JOBS_MAX);
        json_decref(jobs);
        target_set_free(&t);
        return;
    }
    size_t njobs = json_array_size(jobs), cap = CURVE_ROWS_MAX / (njobs ? njobs : 1), i;
    if (cap < 2)
        cap = 2;
    json_t *j;
    json_array_foreach(jobs, i, j) json_object_set_new(
        j, "epochs", job_curve(s, json_integer_value(json_object_get(j, "id")), cap));
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "kind", json_string(any_grid ? "grid" : "job"));
    /* its name; several targets: each with its id, joined by " + " */
    char name[1024] = "";
    for (size_t k = 0; k < t.n; k++) {
        json_t *row = rd_query_rows(s, t.kind[k] == 'g' ? "SELECT name FROM grids WHERE id=?1"
                                                     : "SELECT name FROM jobs WHERE id=?1",
                                 t.id[k], 1);
        size_t at = strlen(name);
        if (t.n == 1)
            snprintf(name, sizeof name, "%s", jstr(json_array_get(row, 0), "name"));
        else
            snprintf(name + at, sizeof name - at, "%s%c%lld %s", k ? " + " : "", t.kind[k],
                     (long long)t.id[k], jstr(json_array_get(row, 0), "name"));
        json_decref(row);
    }
    json_object_set_new(r, "name", json_string(name));
    if (t.n == 1)
        json_object_set_new(r, "target_id", json_integer(t.id[0]));
    json_object_set_new(r, "columns", json_pack("[sssssssss]", "epoch", "loss", "align", "uniform",
                                                 "collapse", "knn", "rank", "linear", "w_cos_i"));
    json_object_set_new(r, "jobs", jobs);
    target_set_free(&t);
    a->reply = r;
}

/* Every metric of a job or a grid, for export: per job, the newest row of
 * each epoch (kind epoch) or step (kind step), as curves and table count
 * them, in pages ordered by (job, epoch or step) after the cursor
 * (after_job, after). */
static void metrics(rd_store *s, long long id, json_t *m, rd_answer *a)
{
    char kind;
    int64_t tid;
    if (rd_target_resolve(s, m, &kind, &tid, a) != 0)
        return;
    const char *mk = json_string_value(json_object_get(m, "kind"));
    if (strcmp(mk, "epoch") && strcmp(mk, "step")) {
        rd_answer_fail(a, RW_E_BAD_MESSAGE, "metrics: kind is epoch or step, not '%s'", mk);
        return;
    }
    const char *key = mk; /* a fixed column name: epoch or step */
    json_t *jl = json_object_get(m, "limit"), *ja = json_object_get(m, "after"),
           *jj = json_object_get(m, "after_job");
    int64_t limit = jl ? json_integer_value(jl) : RW_METRICS_PAGE_MAX;
    int64_t after = ja ? json_integer_value(ja) : -1, after_job = jj ? json_integer_value(jj) : 0;
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SELECT job_id, epoch, step, loss, align, uniform, collapse, knn, pairs_per_s, tau, "
             "lr, rank, linear, w_cos_i, w_asym FROM metrics WHERE id IN (SELECT MAX(id) FROM metrics WHERE job_id IN (%s) "
             "AND kind=?2 GROUP BY job_id, %s) AND (job_id > ?3 OR (job_id = ?3 AND %s > ?4)) "
             "ORDER BY job_id, %s LIMIT ?5",
             kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1" : "?1", key, key, key);
    sqlite3_stmt *st = rd_db_prep(s, sql);
    if (!st) {
        rd_answer_fail(a, RW_E_INTERNAL, "metrics: %s", sqlite3_errmsg(s->db));
        return;
    }
    sqlite3_bind_int64(st, 1, tid);
    sqlite3_bind_text(st, 2, mk, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, after_job);
    sqlite3_bind_int64(st, 4, after);
    sqlite3_bind_int64(st, 5, limit + 1); /* one more says whether there is more */
    json_t *rows = json_array();
    int more = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if ((int64_t)json_array_size(rows) == limit) {
            more = 1;
            break;
        }
        json_t *row = json_array();
        for (int i = 0; i < sqlite3_column_count(st); i++)
            json_array_append_new(row, rd_col_json(st, i));
        json_array_append_new(rows, row);
    }
    sqlite3_finalize(st);
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "columns",
                        json_pack("[sssssssssssssss]", "job", "epoch", "step", "loss", "align",
                                  "uniform", "collapse", "knn", "pairs_per_s", "tau", "lr", "rank",
                                  "linear", "w_cos_i", "w_asym"));
    json_object_set_new(r, "rows", rows);
    json_object_set_new(r, "more", json_boolean(more));
    /* who the rows belong to, once */
    if (!jj)
        json_object_set_new(r, "jobs", target_jobs(s, kind, tid));
    a->reply = r;
}

/* The spec of a variant's first job, parsed into *spec: 0, or -1. */
static int variant_spec(rd_store *d, const target_set *t, const char *variant, rw_spec *spec)
{
    sqlite3_stmt *st = rd_db_prep(d, "SELECT spec FROM jobs WHERE " IN_SET " AND variant=?2 "
                                     "ORDER BY id LIMIT 1");
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, t->set, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, variant, -1, SQLITE_TRANSIENT);
    int rc = -1;
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *text = (const char *)sqlite3_column_text(st, 0);
        char err[512];
        rc = text && rw_spec_parse(text, strlen(text), "stored spec", "", spec, err,
                                   sizeof err) == 0 ? 0 : -1;
    }
    sqlite3_finalize(st);
    return rc;
}

/* The linear evaluation a variant's accuracy comes from, in words: its
 * epochs, Adam's learning rate, the batch, what the features went through. */
static void linear_protocol(const rw_spec *s, char *out, size_t len)
{
    static const char *const norm[] = {"raw features", "features standardized",
                                       "BatchNorm (no affine) before the layer"};
    snprintf(out, len, "%d epochs of Adam at lr %g, batch %d, %s", s->eval.linear_epochs,
             (double)s->eval.linear_lr, s->eval.linear_batch_size,
             norm[s->eval.linear_normalize]);
}

/* A difference from the baseline counts where Welch's t-test over the seeds
 * finds it, two-sided: the seeds' spread alone moves a mean that much. */
#define BASELINE_P 0.05

/* Marks, as the paper's Table 1 highlights them, the rows that differ from
 * the random baseline's (the first baseline row with numbers) beyond the
 * spread of their seeds: L_uniform(f) higher (less spread than an untrained
 * encoder) or linear accuracy lower is worse, the other way better. Per
 * metric: <m>_vs_baseline (worse, better, ns: not significant, n=1: a side
 * has one seed, no spread to test against), and where tested <m>_p and
 * <m>_worse. */
static void mark_against_baseline(json_t *rows, json_t *reply)
{
    const json_t *base = NULL;
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v) if (!base && json_is_true(json_object_get(v, "baseline")) &&
                                       json_integer_value(json_object_get(v, "n")) > 0) base = v;
    if (!base)
        return;
    json_object_set(reply, "baseline", json_object_get(base, "variant"));
    const struct {
        const char *name, *n;
        int higher_is_worse;
    } cmp[] = {{"uniform", "n", 1}, {"acc", "acc_n", 0}};
    json_array_foreach(rows, i, v)
    {
        if (json_is_true(json_object_get(v, "baseline")))
            continue;
        for (size_t k = 0; k < sizeof cmp / sizeof *cmp; k++) {
            char mean[32], std[32], key[40];
            snprintf(mean, sizeof mean, "%s_mean", cmp[k].name);
            snprintf(std, sizeof std, "%s_std", cmp[k].name);
            const json_t *a = json_object_get(v, mean), *b = json_object_get(base, mean);
            if (!json_is_number(a) || !json_is_number(b))
                continue;
            rd_welch w;
            const char *verdict = "n=1";
            if (rd_stats_welch(json_number_value(a), json_number_value(json_object_get(v, std)),
                               (int)json_integer_value(json_object_get(v, cmp[k].n)),
                               json_number_value(b), json_number_value(json_object_get(base, std)),
                               (int)json_integer_value(json_object_get(base, cmp[k].n)),
                               &w) == 0) {
                int higher = w.t > 0, worse = w.p < BASELINE_P && higher == cmp[k].higher_is_worse;
                verdict = w.p >= BASELINE_P ? "ns" : worse ? "worse" : "better";
                snprintf(key, sizeof key, "%s_p", cmp[k].name);
                json_object_set_new(v, key, json_real(w.p));
                snprintf(key, sizeof key, "%s_worse", cmp[k].name);
                json_object_set_new(v, key, json_boolean(worse));
            }
            snprintf(key, sizeof key, "%s_vs_baseline", cmp[k].name);
            json_object_set_new(v, key, json_string(verdict));
        }
    }
}

/* The epochs at which the collapse alarm stopped a variant's jobs, in job
 * order (their results say). */
static json_t *collapsed_epochs(rd_store *s, const target_set *t, const char *variant)
{
    sqlite3_stmt *st = rd_db_prep(s, "SELECT json_extract(result, '$.collapsed_epoch') FROM jobs "
                                     "WHERE " IN_SET " AND variant=?2 AND state='collapsed' "
                                     "ORDER BY id");
    json_t *l = json_array();
    if (!st)
        return l;
    sqlite3_bind_text(st, 1, t->set, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, variant, -1, SQLITE_TRANSIENT);
    while (sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(l, rd_col_json(st, 0));
    sqlite3_finalize(st);
    return l;
}

static void table(rd_store *s, long long id, json_t *m, rd_answer *a)
{
    target_set t;
    if (targets_arg(s, a, m, "grid", "grids", 1, &t) != 0)
        return;
    char why[1024];
    if (t.n > 1 && targets_disagree(s, &t, why, sizeof why) != 0) {
        rd_answer_fail(a, RW_E_STATE, "%s", why);
        target_set_free(&t);
        return;
    }
    /* a job the collapse alarm stopped has numbers too: where it stopped */
    json_t *vars = set_rows(s, "SELECT variant, COUNT(*) AS jobs, SUM(state='done') AS done, "
                               "SUM(state='collapsed') AS collapsed FROM jobs WHERE " IN_SET
                               " GROUP BY variant ORDER BY MIN(id)",
                            &t, 1024);
    size_t i;
    json_t *v;
    json_array_foreach(vars, i, v)
    {
        const char *name = json_string_value(json_object_get(v, "variant"));
        sqlite3_stmt *st = rd_db_prep(s, "SELECT id, linear_acc FROM jobs WHERE " IN_SET " AND "
                                         "variant=?2 AND state IN ('done','collapsed') ORDER BY id");
        double al[1024], un[1024], acc[1024], rk[1024], wi[1024];
        int n = 0, nacc = 0, nrk = 0, nwi = 0;
        while (st) {
            sqlite3_bind_text(st, 1, t.set, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
            while (n < 1024 && sqlite3_step(st) == SQLITE_ROW) {
                if (job_final(s, sqlite3_column_int64(st, 0), "rank", &rk[nrk]) == 0)
                    nrk++;
                if (job_final(s, sqlite3_column_int64(st, 0), "w_cos_i", &wi[nwi]) == 0)
                    nwi++;
                if (job_last10(s, sqlite3_column_int64(st, 0), &al[n], &un[n]) == 0)
                    n++;
                if (sqlite3_column_type(st, 1) != SQLITE_NULL)
                    acc[nacc++] = sqlite3_column_double(st, 1);
            }
            sqlite3_finalize(st);
            break;
        }
        double mu, sd;
        json_object_set_new(v, "n", json_integer(n));
        mean_std(al, n, &mu, &sd);
        json_object_set_new(v, "align_mean", rw_json_num(mu));
        json_object_set_new(v, "align_std", rw_json_num(sd));
        mean_std(un, n, &mu, &sd);
        json_object_set_new(v, "uniform_mean", rw_json_num(mu));
        json_object_set_new(v, "uniform_std", rw_json_num(sd));
        mean_std(acc, nacc, &mu, &sd);
        json_object_set_new(v, "acc_n", json_integer(nacc));
        json_object_set_new(v, "acc_mean", rw_json_num(mu));
        json_object_set_new(v, "acc_std", rw_json_num(sd));
        mean_std(rk, nrk, &mu, &sd);
        json_object_set_new(v, "rank_n", json_integer(nrk));
        json_object_set_new(v, "rank_mean", rw_json_num(mu));
        json_object_set_new(v, "rank_std", rw_json_num(sd));
        if (nwi) { /* a linear predictor's variant */
            mean_std(wi, nwi, &mu, &sd);
            json_object_set_new(v, "w_cos_i_n", json_integer(nwi));
            json_object_set_new(v, "w_cos_i_mean", rw_json_num(mu));
            json_object_set_new(v, "w_cos_i_std", rw_json_num(sd));
        }
        /* the random baseline: a variant whose spec trains nothing
         * (optim.epochs 0), the row the paper compares every other with */
        rw_spec *spec = malloc(sizeof *spec);
        int parsed = spec && variant_spec(s, &t, name, spec) == 0;
        json_object_set_new(v, "baseline", json_boolean(parsed && spec->optim.epochs == 0));
        if (parsed && spec->eval.linear_epochs > 0) {
            char proto[160];
            linear_protocol(spec, proto, sizeof proto);
            json_object_set_new(v, "linear_protocol", json_string(proto));
        }
        free(spec);
        if (json_integer_value(json_object_get(v, "collapsed")) > 0)
            json_object_set_new(v, "collapsed_epochs", collapsed_epochs(s, &t, name));
    }
    json_t *r = rw_msg_new("ok", id);
    mark_against_baseline(vars, r);
    json_object_set_new(r, "grid", json_integer(t.id[0]));
    json_t *grids = json_array();
    for (size_t k = 0; k < t.n; k++) {
        json_t *gr = rd_query_rows(s, "SELECT id, name FROM grids WHERE id=?1", t.id[k], 1);
        json_array_append(grids, json_array_get(gr, 0));
        if (k == 0)
            json_object_set(r, "name", json_object_get(json_array_get(gr, 0), "name"));
        json_decref(gr);
    }
    json_object_set_new(r, "grids", grids);
    json_object_set_new(r, "rows", vars);
    target_set_free(&t);
    a->reply = r;
}

/* For a client that cannot read the run folder (another host): the
 * checkpoint's bytes from `offset`, at most `most`, as hex in
 * `data`, with `size` and `version` (inode, mtime, size: a checkpoint
 * replaced between two chunks shows as another version). -1 after
 * replying. */
static int export_chunk(rd_conn *c, long long id, const char *path, int64_t offset, size_t most,
                        json_t *r)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        rd_reply_error(c, id, RW_E_INTERNAL, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (offset > st.st_size) {
        rd_reply_error(c, id, RW_E_BAD_MESSAGE, "export: offset %lld is past the checkpoint's %lld "
                       "bytes", (long long)offset, (long long)st.st_size);
        close(fd);
        return -1;
    }
    size_t want = (size_t)(st.st_size - offset) < most ? (size_t)(st.st_size - offset) : most;
    unsigned char *buf = malloc(want ? want : 1);
    char *hex = malloc(2 * want + 1);
    ssize_t got = buf && hex ? pread(fd, buf, want, offset) : -1;
    int e = errno;
    close(fd);
    if (got != (ssize_t)want) {
        rd_reply_error(c, id, RW_E_INTERNAL, "%s: %s", path,
                       got < 0 ? strerror(e) : "shorter than it was a moment ago");
        free(buf);
        free(hex);
        return -1;
    }
    rw_hex_encode(buf, want, hex);
    char version[96];
    rw_file_version(&st, version, sizeof version);
    json_object_set_new(r, "size", json_integer(st.st_size));
    json_object_set_new(r, "version", json_string(version));
    json_object_set_new(r, "data", json_string(hex));
    free(buf);
    free(hex);
    return 0;
}

void rd_req_export(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    int64_t job = rd_job_arg(&d->store, c, id, m);
    if (!job)
        return;
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/runs/%lld/checkpoint.safetensors", d->state_dir, (long long)job);
    struct stat st;
    if (access(path, R_OK) != 0 || stat(path, &st) != 0) {
        rd_reply_error(c, id, RW_E_STATE, "job j%lld has no checkpoint yet (%s)", (long long)job,
                       path);
        return;
    }
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "checkpoint", json_string(path));
    char version[96];
    rw_file_version(&st, version, sizeof version);
    json_object_set_new(r, "version", json_string(version));
    const json_t *off = json_object_get(m, "offset"), *len = json_object_get(m, "length");
    if (off && export_chunk(c, id, path, json_integer_value(off),
                            len ? (size_t)json_integer_value(len) : RW_EXPORT_CHUNK, r) != 0) {
        json_decref(r);
        return;
    }
    rd_conn_send(c, r);
}

void rd_req_sphere(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    int64_t job = rd_job_arg(&d->store, c, id, m);
    if (job)
        rd_sphere_request(&d->spheres, c, id, job, m);
}

void rd_req_curves(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    rd_offload(&d->store, c, id, m, curves);
}

void rd_req_metrics(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    rd_offload(&d->store, c, id, m, metrics);
}

void rd_req_table(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    rd_offload(&d->store, c, id, m, table);
}
