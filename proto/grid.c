/* Grid files on the spec parser's tree (proto/spec_tree.h). */
#include "proto/grid.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/spec_tree.h"

#define AXIS_MAX 256

static int key_is(const ynode *k, const char *s)
{
    return k->kind == YN_SCALAR && k->len == strlen(s) && !strcmp(k->text, s);
}

static const ynode *map_get(const ynode *map, const char *key)
{
    for (size_t i = 0; i + 1 < map->nkids; i += 2)
        if (key_is(map->kids[i], key))
            return map->kids[i + 1];
    return NULL;
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

/* The default grid name: the origin's base name without .yaml/.yml, with
 * characters outside [A-Za-z0-9_.-] replaced. */
static void default_name(const char *origin, char *out, size_t outlen)
{
    const char *b = strrchr(origin, '/');
    b = b ? b + 1 : origin;
    size_t n = strlen(b);
    if (n > 5 && !strcmp(b + n - 5, ".yaml"))
        n -= 5;
    else if (n > 4 && !strcmp(b + n - 4, ".yml"))
        n -= 4;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outlen; i++)
        out[o++] = name_char(b[i]) ? b[i] : '_';
    out[o] = '\0';
    if (!o)
        snprintf(out, outlen, "grid");
}

/* ---- grid.sweep: spec fields taking each value of a list ---- */

#define SWEEP_MAX 8 /* fields swept at once */

typedef struct sweep_axis {
    char path[96];      /* dotted spec field, e.g. loss.beta */
    const char *leaf;   /* what the variant name calls it: the last part of the path */
    const ynode *vals;  /* the list */
} sweep_axis;

static void path_tree_free(ynode *n, const ynode *value)
{
    while (n && n != value) {
        ynode *next = n->nkids == 2 ? n->kids[1] : NULL;
        if (n->nkids >= 1 && n->kids[0]) {
            free(n->kids[0]->text);
            free(n->kids[0]);
        }
        free(n->kids);
        free(n);
        n = next;
    }
}

/* The mapping {a: {b: {c: value}}} for the path "a.b.c", as the spec
 * parser's tree, so that a swept value is typed and checked like any field
 * of a spec; `value` is borrowed. NULL when out of memory. */
static ynode *path_tree(const char *path, const ynode *value)
{
    const char *dot = strchr(path, '.');
    size_t n = dot ? (size_t)(dot - path) : strlen(path);
    ynode *map = calloc(1, sizeof *map), *key = calloc(1, sizeof *key);
    ynode **kids = calloc(2, sizeof *kids);
    char *text = malloc(n + 1);
    ynode *child = !map || !key || !kids || !text ? NULL : dot ? path_tree(dot + 1, value)
                                                                : (ynode *)value;
    if (!child) {
        free(map);
        free(key);
        free(kids);
        free(text);
        return NULL;
    }
    memcpy(text, path, n);
    text[n] = '\0';
    *key = (ynode){.kind = YN_SCALAR, .line = value->line, .col = value->col, .text = text,
                   .len = n, .skind = YS_PLAIN};
    kids[0] = key;
    kids[1] = child;
    *map = (ynode){.kind = YN_MAP, .line = value->line, .col = value->col, .kids = kids,
                   .nkids = 2, .cap = 2};
    return map;
}

/* Reads grid.sweep into axes; the number of combinations, or -1. */
static long parse_sweep(const ynode *n, const char *origin, sweep_axis *ax, size_t *nax,
                        char *err, size_t errlen)
{
    if (n->kind != YN_MAP || n->nkids == 0 || n->nkids / 2 > SWEEP_MAX) {
        snprintf(err, errlen, "%s: grid.sweep: must be a mapping of 1..%d spec fields (as "
                 "loss.beta) to lists of values (line %d)", origin, SWEEP_MAX, n->line);
        return -1;
    }
    long comb = 1;
    *nax = 0;
    for (size_t i = 0; i + 1 < n->nkids; i += 2) {
        const ynode *k = n->kids[i], *v = n->kids[i + 1];
        int ok = k->kind == YN_SCALAR && k->len > 0 && k->len < sizeof ax->path &&
                 strlen(k->text) == k->len && k->text[0] != '.' && k->text[k->len - 1] != '.' &&
                 !strstr(k->text, "..");
        for (size_t c = 0; ok && c < k->len; c++)
            ok = name_char(k->text[c]) && k->text[c] != '-';
        if (!ok) {
            snprintf(err, errlen, "%s: grid.sweep: %.60s: not a spec field path (as loss.beta) "
                     "(line %d)", origin, k->kind == YN_SCALAR ? k->text : "?", k->line);
            return -1;
        }
        if (key_is(k, "seed") || key_is(k, "name")) {
            snprintf(err, errlen, "%s: grid.sweep.%s: not swept (seeds are the grid's seed axis; "
                     "names come from the variants) (line %d)", origin, k->text, k->line);
            return -1;
        }
        if (v->kind != YN_SEQ || v->nkids == 0 || v->nkids > AXIS_MAX) {
            snprintf(err, errlen, "%s: grid.sweep.%s: must be a list of 1..%d values (line %d)",
                     origin, k->text, AXIS_MAX, v->line);
            return -1;
        }
        sweep_axis *a = &ax[(*nax)++];
        memcpy(a->path, k->text, k->len + 1);
        const char *dot = strrchr(a->path, '.');
        a->leaf = dot ? dot + 1 : a->path;
        a->vals = v;
        for (size_t j = 0; j < v->nkids; j++) {
            const ynode *x = v->kids[j];
            int name_ok = x->kind == YN_SCALAR && x->len > 0 && strlen(x->text) == x->len;
            for (size_t c = 0; name_ok && c < x->len; c++)
                name_ok = name_char(x->text[c]);
            if (!name_ok) {
                snprintf(err, errlen, "%s: grid.sweep.%s[%zu]: values are scalars written with "
                         "[A-Za-z0-9_.-] (they become part of the variant's name) (line %d)",
                         origin, a->path, j, x->line);
                return -1;
            }
        }
        comb *= (long)v->nkids;
        if (comb > RW_GRID_JOBS_MAX) {
            snprintf(err, errlen, "%s: grid.sweep: more than %d combinations", origin,
                     RW_GRID_JOBS_MAX);
            return -1;
        }
    }
    int alike[SWEEP_MAX] = {0}; /* two fields named alike: the whole path names each */
    for (size_t i = 0; i < *nax; i++)
        for (size_t j = 0; j < *nax; j++)
            alike[i] |= i != j && !strcmp(ax[i].leaf, ax[j].leaf);
    for (size_t i = 0; i < *nax; i++)
        if (alike[i])
            ax[i].leaf = ax[i].path;
    return comb;
}

/* Applies combination `c` (the first field varying slowest) on *s and
 * appends "-LEAF-VALUE" per field to the variant's name. */
static int apply_sweep(const sweep_axis *ax, size_t nax, long c, const char *origin,
                       const char *basedir, rw_spec *s, char *name, size_t namelen, char *err,
                       size_t errlen)
{
    long div = 1;
    for (size_t i = 0; i < nax; i++)
        div *= (long)ax[i].vals->nkids;
    for (size_t i = 0; i < nax; i++) {
        div /= (long)ax[i].vals->nkids;
        size_t k = (size_t)((c / div) % (long)ax[i].vals->nkids);
        const ynode *val = ax[i].vals->kids[k];
        char where[RW_PATH_MAX + 160];
        snprintf(where, sizeof where, "%s: grid.sweep.%s[%zu]", origin, ax[i].path, k);
        ynode *t = path_tree(ax[i].path, val);
        if (!t) {
            snprintf(err, errlen, "%s: out of memory", where);
            return -1;
        }
        int rc = rw_spec_apply_tree(t, where, basedir, s, err, errlen);
        path_tree_free(t, val);
        if (rc != 0)
            return -1;
        size_t o = strlen(name);
        if (snprintf(name + o, namelen - o, "-%s-%s", ax[i].leaf, val->text) >= (int)(namelen - o)) {
            snprintf(err, errlen, "%s: the variant's name %s... is longer than %zu characters",
                     where, name, namelen - 1);
            return -1;
        }
    }
    return 0;
}

/* ---- loss weights a job's loss does not use ---- */

#define SET_ALPHA 1u
#define SET_BETA 2u

/* Which of loss.alpha, loss.beta a mapping of spec fields sets. */
static unsigned weights_set(const ynode *spec)
{
    const ynode *l = spec && spec->kind == YN_MAP ? map_get(spec, "loss") : NULL;
    if (!l || l->kind != YN_MAP)
        return 0;
    return (map_get(l, "alpha") ? SET_ALPHA : 0) | (map_get(l, "beta") ? SET_BETA : 0);
}

/* alpha and beta weigh the unified loss only: a variant named raft whose
 * beta lands on loss.kind byol would train BYOL under RAFT's name, and the
 * table would compare BYOL with itself. Refused where the grid file set the
 * weight for this job (its variant, a sweep, or a base whose own loss.kind
 * is not unified: a unified base's weights are defaults for its unified
 * variants, ignored by its byol ones). */
static int check_weights(const rw_spec *s, unsigned set, const char *where, char *err,
                         size_t errlen)
{
    if (!set || s->loss.kind == RW_LOSS_UNIFIED)
        return 0;
    snprintf(err, errlen, "%s: %s: only loss.kind unified is weighed by alpha and beta; this "
             "job's loss.kind is %s, whose loss has no weights, so it would train %s under "
             "another name: set loss.kind: unified (BYOL' beta > 0, RAFT beta < 0), or drop %s",
             where, set == SET_ALPHA ? "loss.alpha" : set == SET_BETA ? "loss.beta"
                                                                     : "loss.alpha, loss.beta",
             rw_loss_kind_name(s->loss.kind), s->loss.kind == RW_LOSS_BYOL ? "BYOL" : "it",
             set == (SET_ALPHA | SET_BETA) ? "them" : "it");
    return -1;
}

static int add_job(rw_grid *g, const rw_spec *s, const char *variant, unsigned weights,
                   char *err, size_t errlen, const char *origin)
{
    if (g->njobs == RW_GRID_JOBS_MAX) {
        snprintf(err, errlen, "%s: grid: expands to more than %d jobs", origin, RW_GRID_JOBS_MAX);
        return -1;
    }
    rw_grid_job *j = &g->jobs[g->njobs];
    memset(j, 0, sizeof *j);
    j->spec = *s;
    rw_spec_resolve(&j->spec);
    snprintf(j->variant, sizeof j->variant, "%s", variant);
    snprintf(j->name, sizeof j->name, "%s/%s/seed%llu", g->name, variant,
             (unsigned long long)s->seed);
    char where[RW_PATH_MAX + RW_JOB_NAME_MAX];
    snprintf(where, sizeof where, "%s: job %s", origin, j->name);
    if (rw_spec_validate(&j->spec, where, err, errlen) != 0 ||
        check_weights(&j->spec, weights, where, err, errlen) != 0)
        return -1;
    g->njobs++;
    return 0;
}

static int parse_seeds(const ynode *n, const char *origin, uint64_t *seeds, size_t *nseeds,
                       char *err, size_t errlen)
{
    if (n->kind != YN_SEQ || n->nkids == 0 || n->nkids > AXIS_MAX) {
        snprintf(err, errlen, "%s: grid.seed: must be a list of 1..%d seeds (line %d)", origin,
                 AXIS_MAX, n->line);
        return -1;
    }
    for (size_t i = 0; i < n->nkids; i++) {
        double v;
        const ynode *k = n->kids[i];
        if (rw_ynode_number(k, &v) != 0 || v != floor(v) || v < 0 || v > 9007199254740992.0) {
            snprintf(err, errlen, "%s: grid.seed[%zu]: must be an integer in 0..2^53 (line %d)",
                     origin, i, k->line);
            return -1;
        }
        seeds[i] = (uint64_t)v;
        for (size_t j = 0; j < i; j++) {
            if (seeds[j] == seeds[i]) {
                snprintf(err, errlen, "%s: grid.seed[%zu]: duplicate seed %llu (line %d)", origin, i,
                         (unsigned long long)seeds[i], k->line);
                return -1;
            }
        }
    }
    *nseeds = n->nkids;
    return 0;
}

/* The command line's fields on the base (ov: their tree, or NULL). */
static int apply_overrides(const ynode *ov, const char *ovdir, rw_spec *base, char *err,
                           size_t errlen)
{
    return ov ? rw_spec_apply_tree(ov, RW_OVERRIDES_ORIGIN, ovdir, base, err, errlen) : 0;
}

/* Whether a mapping of spec fields sets the dotted path. */
static int tree_sets(const ynode *map, const char *path)
{
    const char *dot = strchr(path, '.');
    size_t n = dot ? (size_t)(dot - path) : strlen(path);
    for (size_t i = 0; map && map->kind == YN_MAP && i + 1 < map->nkids; i += 2) {
        const ynode *k = map->kids[i];
        if (k->kind == YN_SCALAR && k->len == n && !strncmp(k->text, path, n))
            return dot ? tree_sets(map->kids[i + 1], dot + 1) : 1;
    }
    return 0;
}

/* An override that every job sets again (a sweep of its field, the seed
 * axis, or every variant) would change nothing: refused, so that a
 * researcher never reads a result as the override's when it is not. */
static int check_shadowed(const ynode *ov, const char *prefix, const sweep_axis *ax, size_t nax,
                          const ynode *seeds, const ynode *variants, char *err, size_t errlen)
{
    for (size_t i = 0; ov && i + 1 < ov->nkids; i += 2) {
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", ov->kids[i]->text);
        const ynode *v = ov->kids[i + 1];
        if (v->kind == YN_MAP) {
            if (check_shadowed(v, path, ax, nax, seeds, variants, err, errlen) != 0)
                return -1;
            continue;
        }
        const char *by = NULL;
        for (size_t a = 0; a < nax; a++)
            if (!strcmp(ax[a].path, path))
                by = "grid.sweep";
        if (seeds && !strcmp(path, "seed"))
            by = "grid.seed";
        int all = variants != NULL;
        for (size_t k = 0; variants && k < variants->nkids; k++)
            all &= tree_sets(variants->kids[k], path);
        if (all && strcmp(path, "name") != 0)
            by = "every grid.variant";
        if (by) {
            snprintf(err, errlen, "%s: %s: %s sets it again for every job, so this would change "
                     "nothing (the command line sets the grid's base, under the variants, sweeps "
                     "and seeds)", RW_OVERRIDES_ORIGIN, path, by);
            return -1;
        }
    }
    return 0;
}

static int expand(const ynode *root, const char *origin, const char *basedir, const ynode *ov,
                  const char *ovdir, rw_grid *g, char *err, size_t errlen)
{
    char where[RW_PATH_MAX + 64];
    rw_spec base;
    rw_spec_defaults(&base);

    if (!map_get(root, "base") && !map_get(root, "grid")) {
        /* a plain spec: one job, named by the spec */
        if (rw_spec_apply_tree(root, origin, basedir, &base, err, errlen) != 0 ||
            apply_overrides(ov, ovdir, &base, err, errlen) != 0)
            return -1;
        snprintf(g->name, sizeof g->name, "%s", base.name);
        g->jobs = calloc(1, sizeof *g->jobs);
        if (!g->jobs) {
            snprintf(err, errlen, "%s: out of memory", origin);
            return -1;
        }
        return add_job(g, &base, base.name, weights_set(root) | weights_set(ov), err, errlen,
                       origin);
    }
    for (size_t i = 0; i + 1 < root->nkids; i += 2) {
        const ynode *k = root->kids[i];
        if (!(key_is(k, "name") || key_is(k, "priority") || key_is(k, "base") || key_is(k, "grid"))) {
            snprintf(err, errlen,
                     "%s: %.40s: unknown field in a grid file (allowed: name, priority, base, grid) "
                     "(line %d)",
                     origin, k->kind == YN_SCALAR ? k->text : "?", k->line);
            return -1;
        }
    }
    const ynode *n = map_get(root, "name");
    default_name(origin, g->name, sizeof g->name);
    if (n) {
        int ok = n->kind == YN_SCALAR && n->len > 0 && n->len < RW_NAME_MAX &&
                 strlen(n->text) == n->len;
        for (size_t i = 0; ok && i < n->len; i++)
            ok = name_char(n->text[i]);
        if (!ok) {
            snprintf(err, errlen, "%s: name: must be 1..%d characters from [A-Za-z0-9_.-] (line %d)",
                     origin, RW_NAME_MAX - 1, n->line);
            return -1;
        }
        memcpy(g->name, n->text, n->len + 1);
    }
    n = map_get(root, "priority");
    if (n) {
        double v;
        if (rw_ynode_number(n, &v) != 0 || v != floor(v) || fabs(v) > 1000) {
            snprintf(err, errlen, "%s: priority: must be an integer in -1000..1000 (line %d)", origin,
                     n->line);
            return -1;
        }
        g->priority = (int)v;
    }
    n = map_get(root, "base");
    if (n && !rw_ynode_is_null(n)) {
        snprintf(where, sizeof where, "%s: base", origin);
        if (n->kind != YN_MAP) {
            snprintf(err, errlen, "%s: must be a mapping of spec fields (line %d)", where, n->line);
            return -1;
        }
        if (rw_spec_apply_tree(n, where, basedir, &base, err, errlen) != 0)
            return -1;
    }
    /* the command line sets base fields: variants, sweeps and seeds go on top */
    if (apply_overrides(ov, ovdir, &base, err, errlen) != 0)
        return -1;
    /* the base's weights count against a job only where the base's own
     * loss is not the unified one (check_weights) */
    unsigned base_weights =
        base.loss.kind == RW_LOSS_UNIFIED ? 0 : weights_set(n) | weights_set(ov);

    uint64_t seeds[AXIS_MAX];
    size_t nseeds = 1;
    seeds[0] = base.seed;
    const ynode *variants = NULL;
    sweep_axis axes[SWEEP_MAX];
    size_t naxes = 0;
    long ncomb = 1;
    const ynode *gr = map_get(root, "grid");
    if (gr && !rw_ynode_is_null(gr)) {
        if (gr->kind != YN_MAP) {
            snprintf(err, errlen, "%s: grid: must be a mapping of axes (seed, variant) (line %d)",
                     origin, gr->line);
            return -1;
        }
        for (size_t i = 0; i + 1 < gr->nkids; i += 2) {
            const ynode *k = gr->kids[i];
            if (!key_is(k, "seed") && !key_is(k, "variant") && !key_is(k, "sweep")) {
                snprintf(err, errlen, "%s: grid.%.40s: unknown axis (allowed: seed, variant, "
                         "sweep) (line %d)", origin, k->kind == YN_SCALAR ? k->text : "?",
                         k->line);
                return -1;
            }
        }
        const ynode *sw = map_get(gr, "sweep");
        if (sw && (ncomb = parse_sweep(sw, origin, axes, &naxes, err, errlen)) < 0)
            return -1;
        const ynode *s = map_get(gr, "seed");
        if (s && parse_seeds(s, origin, seeds, &nseeds, err, errlen) != 0)
            return -1;
        variants = map_get(gr, "variant");
        if (variants && (variants->kind != YN_SEQ || variants->nkids == 0 ||
                         variants->nkids > AXIS_MAX)) {
            snprintf(err, errlen, "%s: grid.variant: must be a list of 1..%d variant mappings (line %d)",
                     origin, AXIS_MAX, variants->line);
            return -1;
        }
    }
    if (check_shadowed(ov, "", axes, naxes, gr && gr->kind == YN_MAP ? map_get(gr, "seed") : NULL,
                       variants, err, errlen) != 0)
        return -1;
    size_t nvar = variants ? variants->nkids : 1, per_var = (size_t)ncomb * nseeds;
    char seen[AXIS_MAX][RW_NAME_MAX]; /* the variants' names so far */
    g->jobs = calloc(nvar * per_var > RW_GRID_JOBS_MAX ? RW_GRID_JOBS_MAX : nvar * per_var,
                     sizeof *g->jobs);
    if (!g->jobs) {
        snprintf(err, errlen, "%s: out of memory", origin);
        return -1;
    }
    unsigned sweep_weights = 0;
    for (size_t i = 0; i < naxes; i++)
        sweep_weights |= !strcmp(axes[i].path, "loss.alpha")  ? SET_ALPHA
                         : !strcmp(axes[i].path, "loss.beta") ? SET_BETA
                                                              : 0;
    for (size_t v = 0; v < nvar; v++) {
        rw_spec vs = base;
        unsigned weights = base_weights | sweep_weights;
        if (variants) {
            weights |= weights_set(variants->kids[v]);
            const ynode *vn = variants->kids[v];
            snprintf(where, sizeof where, "%s: grid.variant[%zu]", origin, v);
            if (vn->kind != YN_MAP || !map_get(vn, "name")) {
                snprintf(err, errlen, "%s: must be a mapping with a name and spec fields (line %d)",
                         where, vn->line);
                return -1;
            }
            if (rw_spec_apply_tree(vn, where, basedir, &vs, err, errlen) != 0)
                return -1;
            for (size_t u = 0; u < v; u++) {
                if (!strcmp(seen[u], vs.name)) {
                    snprintf(err, errlen, "%s: name: '%s' is already the name of grid.variant[%zu] (line %d)",
                             where, vs.name, u, vn->line);
                    return -1;
                }
            }
        }
        snprintf(seen[v], sizeof seen[v], "%s", vs.name);
        for (long c = 0; c < ncomb; c++) {
            rw_spec cs = vs;
            char vname[RW_NAME_MAX];
            snprintf(vname, sizeof vname, "%s", vs.name);
            if (naxes && apply_sweep(axes, naxes, c, origin, basedir, &cs, vname, sizeof vname,
                                     err, errlen) != 0)
                return -1;
            for (size_t k = 0; k < nseeds; k++) {
                rw_spec js = cs;
                js.seed = seeds[k];
                if (add_job(g, &js, vname, weights, err, errlen, origin) != 0)
                    return -1;
            }
        }
    }
    return 0;
}

/* The canonical YAML of what a job's spec trains (rw_spec_trained): two
 * jobs alike in this train the same. Its FNV-1a hash, or 0 when it cannot
 * be rendered. */
static uint64_t spec_hash(const rw_spec *s, char *yaml, size_t len)
{
    rw_spec t;
    rw_spec_trained(s, &t);
    if (rw_spec_to_yaml(&t, yaml, len) < 0)
        return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *c = yaml; *c; c++)
        h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
    return h;
}

/* Two jobs of a grid that train the same spec (same seed, fields alike but
 * the variant's name) waste a worker and put two equal rows in the table:
 * a variant listed twice, a sweep value repeated, or a field that does not
 * apply to the job (model.predictor_hidden without an MLP predictor). */
static int check_distinct(const rw_grid *g, const char *origin, char *err, size_t errlen)
{
    if (g->njobs < 2)
        return 0;
    uint64_t *h = calloc(g->njobs, sizeof *h);
    char *a = malloc(RW_SPEC_YAML_MAX), *b = malloc(RW_SPEC_YAML_MAX);
    int rc = 0;
    if (!h || !a || !b) {
        snprintf(err, errlen, "%s: out of memory", origin);
        rc = -1;
    }
    for (size_t i = 0; !rc && i < g->njobs; i++)
        h[i] = spec_hash(&g->jobs[i].spec, a, RW_SPEC_YAML_MAX);
    for (size_t i = 0; !rc && i < g->njobs; i++)
        for (size_t j = 0; !rc && j < i; j++) {
            if (!h[i] || h[i] != h[j])
                continue;
            spec_hash(&g->jobs[i].spec, a, RW_SPEC_YAML_MAX);
            spec_hash(&g->jobs[j].spec, b, RW_SPEC_YAML_MAX);
            if (strcmp(a, b) != 0)
                continue;
            snprintf(err, errlen, "%s: jobs %s and %s would train the same: their specs differ "
                     "only in the variant's name (a variant listed twice, a sweep value "
                     "repeated, or a field that does not apply to them); repeat a job with "
                     "grid.seed", origin, g->jobs[j].name, g->jobs[i].name);
            rc = -1;
        }
    free(h);
    free(a);
    free(b);
    return rc;
}

int rw_grid_parse(const char *yaml, size_t len, const char *origin, const char *basedir,
                  rw_grid *g, char *err, size_t errlen)
{
    return rw_grid_parse_with(yaml, len, origin, basedir, NULL, g, err, errlen);
}

int rw_grid_parse_with(const char *yaml, size_t len, const char *origin, const char *basedir,
                       const rw_overrides *ov, rw_grid *g, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    if (!origin)
        origin = "grid";
    ynode *root = NULL, *ovt = NULL;
    if (rw_ytree_parse(yaml, len, origin, &root, err, errlen) != 0)
        return -1;
    if (rw_overrides_tree(ov, &ovt, err, errlen) != 0) {
        rw_ytree_free(root);
        return -1;
    }
    const char *ovdir = ov && ov->basedir ? ov->basedir : basedir;
    int rc = -1;
    if (!root || rw_ynode_is_null(root)) {
        snprintf(err, errlen, "%s: empty: expected a spec or a grid (base, grid)", origin);
    } else if (root->kind != YN_MAP) {
        snprintf(err, errlen, "%s: top level: must be a mapping (a spec, or a grid with base and grid) (line %d)",
                 origin, root->line);
    } else {
        rc = expand(root, origin, basedir, ovt, ovdir, g, err, errlen);
        if (rc == 0)
            rc = check_distinct(g, origin, err, errlen);
    }
    rw_ytree_free(root);
    rw_ytree_free(ovt);
    if (rc != 0)
        rw_grid_free(g);
    return rc;
}

int rw_grid_read_file(const char *path, size_t max, char **text, size_t *len, char *basedir,
                      size_t basedirlen, char *err, size_t errlen)
{
    *text = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    char *buf = malloc(max + 1);
    size_t n = 0;
    while (buf && n <= max) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (!buf || n > max) {
        snprintf(err, errlen, "%s: too large (at most %zu bytes)", path, max);
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    char dir[PATH_MAX], abs[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (!realpath(dir, abs) || strlen(abs) >= basedirlen) {
        snprintf(err, errlen, "%s: cannot resolve its folder", path);
        free(buf);
        return -1;
    }
    snprintf(basedir, basedirlen, "%s", abs);
    *text = buf;
    *len = n;
    return 0;
}

int rw_grid_load(const char *path, rw_grid *g, char *err, size_t errlen)
{
    char *text;
    size_t len;
    char basedir[RW_PATH_MAX];
    memset(g, 0, sizeof *g);
    if (rw_grid_read_file(path, 1u << 20, &text, &len, basedir, sizeof basedir, err, errlen) != 0)
        return -1;
    int rc = rw_grid_parse(text, len, path, basedir, g, err, errlen);
    free(text);
    return rc;
}

void rw_grid_free(rw_grid *g)
{
    free(g->jobs);
    g->jobs = NULL;
    g->njobs = 0;
}
