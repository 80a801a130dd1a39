/* Job spec parser: YAML -> a small bounded tree -> rw_spec.
 *
 * Three layers, so that the daemon can reuse the lower two for grid files:
 *   1. rw_ytree_parse (proto/ytree.c): libyaml events -> an owned tree
 *      (bounded depth, node count and input size; aliases and several
 *      documents rejected).
 *   2. spec_apply_map: applies one mapping node, found at a dotted path
 *      prefix, on top of an existing rw_spec (overrides). Driven by one field
 *      table, so the allowed keys of every mapping come from the same place
 *      as the types and ranges.
 *   3. rw_spec_validate (proto/spec_check.c): re-checks every field of a struct against the same
 *      table (the struct may have been built by code or by grid overrides),
 *      then the cross-field rules and the files the spec points at.
 */
#include "proto/spec.h"
#include "proto/spec_table.h"
#include "proto/spec_tree.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define SPEC_FILE_MAX RW_YAML_MAX
#define SAMPLE_MAX 40            /* how much of a bad value an error quotes */


/* Quotes at most SAMPLE_MAX bytes of user input, non-printables as '?', so
 * an error line stays one readable line whatever the file holds. */
static void sample(char *out, size_t outlen, const char *s, size_t len) {
    size_t o = 0;
    for (size_t i = 0; i < len && o + 4 < outlen; i++) {
        if (i == SAMPLE_MAX) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[o] = '\0';
}

/* "123" or "+123": what strtoull reads exactly. */
static int exact_digits(const char *t) {
    if (*t == '+') t++;
    if (!*t) return 0;
    for (; *t; t++)
        if (*t < '0' || *t > '9') return 0;
    return 1;
}

#define fields rw_field_table

void rw_spec_defaults(rw_spec *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "byol");
    s->seed = 0;
    s->threads = 0;
    s->devices = 1;
    s->precision = RW_PREC_TF32;
    s->deterministic = 1;
    s->dist.overlap = 1;
    s->dist.bucket_mb = 25;
    s->dist.grad_dtype = RW_GRAD_FP32;
    s->data.kind = RW_DATA_SYNTHETIC;
    s->data.synthetic_train = 5000;
    s->data.synthetic_test = 1000;
    s->data.synthetic_seed = 0;
    s->data.synthetic_style = RW_SYNTH_CLUTTERED;
    s->data.labels = RW_LABELS_FINE;
    s->data.unlabeled = 1;
    s->data.image_size = 96;
    s->data.augment = RW_AUG_BYOL;
    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2470f, 0.2435f, 0.2616f};
    memcpy(s->data.mean, mean, sizeof mean);
    memcpy(s->data.std, std, sizeof std);
    s->data.loader_threads = 2;
    s->data.device_budget_mb = 0; /* half the device's free memory */
    s->data.cache_size = 96; /* image_size's, unless given (rw_spec_resolve) */
    s->data.skip_bad = 0;
    s->model.arch = RW_ARCH_RESNET18;
    s->model.stem = RW_STEM_IMAGENET;
    s->model.width = 64;
    s->model.proj_hidden = 512;
    s->model.proj_out = 128;
    s->model.predictor = RW_PRED_MLP;
    s->model.pred_hidden = 512;
    s->model.pred_frozen = 0;
    s->model.directpred.every = 1; /* DirectPred's defaults */
    s->model.directpred.momentum = 0.99f;
    s->model.directpred.eps = 0.1f;
    s->loss.kind = RW_LOSS_BYOL;
    s->loss.alpha = 1.0f;
    s->loss.beta = 1.0f;
    s->loss.tangential = 0;
    s->optim.lr = 3.0e-4f;
    s->optim.weight_decay = 0.0f;
    s->optim.batch_size = 128;
    s->optim.epochs = 300;
    s->optim.max_steps = 0;
    s->optim.schedule = RW_LR_CONSTANT;
    s->optim.warmup_epochs = 0;
    s->optim.predictor_lr_mult = 1.0f;
    s->ema.tau = 0.996f;
    s->ema.schedule = RW_TAU_CONSTANT;
    s->eval.linear_epochs = 100;
    s->eval.linear_lr = 5.0e-4f;
    s->eval.linear_batch_size = 256;
    s->eval.linear_every = 0;
    s->eval.knn_every = 0;
    s->eval.knn_k = 200;
    s->eval.knn_temperature = 0.1f;
    s->eval.rank_every = 1;
    s->eval.rank_samples = 1024;
    s->log.every_steps = 0;
    s->checkpoint.every_epochs = 0;
    s->checkpoint.every_minutes = 0;
    s->checkpoint.snapshot_every = 0;
    /* measured on the quickstart grid (docs/specs.md#the-collapse-alarm):
     * between its healthy runs and its runs without a predictor, with room
     * on both sides; the rank, which healthy small runs also lose, is not
     * judged unless asked */
    s->monitor.collapse.action = RW_ALARM_WARN;
    s->monitor.collapse.rank_below = 0;
    s->monitor.collapse.rank_share_below = 0;
    s->monitor.collapse.uniform_above = -0.3f;
    s->monitor.collapse.std_below = 0.25f;
    s->monitor.collapse.patience = 2;
}


typedef struct apply_ctx {
    const char *origin;
    const char *basedir; /* "" = leave relative paths as written */
    char *err;
    size_t errlen;
} apply_ctx;

/* " (line L)" after an error; nothing for a node of line 0, which came from
 * the command line (rw_overrides_tree), not from a file. */
static const char *line_note(int line, char buf[32]) {
    if (line <= 0) return "";
    snprintf(buf, 32, " (line %d)", line);
    return buf;
}

/* "got 'abc'", "got a mapping", "got null", "got boolean 'true'"... */
static void got_text(const ynode *n, char *out, size_t outlen) {
    char smp[SAMPLE_MAX * 2];
    if (n->kind == YN_MAP) {
        snprintf(out, outlen, "got a mapping");
    } else if (n->kind == YN_SEQ) {
        snprintf(out, outlen, "got a list");
    } else if (rw_ynode_is_null(n)) {
        snprintf(out, outlen, "got null");
    } else {
        sample(smp, sizeof smp, n->text, n->len);
        if (rw_ynode_bool(n) >= 0)
            snprintf(out, outlen, "got boolean '%s'", smp);
        else if (n->skind == YS_STRING)
            snprintf(out, outlen, "got string '%s'", smp);
        else
            snprintf(out, outlen, "got '%s'", smp);
    }
}

/* Every field error: "origin: path: what, got X (line L)". */
static int field_err(const apply_ctx *cx, const char *path, const ynode *n, const char *what) {
    char got[SAMPLE_MAX * 3];
    got_text(n, got, sizeof got);
    char ln[32];
    rw_spec_err(cx->err, cx->errlen, "%s: %s: %s, %s%s", cx->origin, path, what, got,
            line_note(n->line, ln));
    return -1;
}

static int join_path(const apply_ctx *cx, const char *field_path, const ynode *at, const char *dir,
                     const char *p, char *out) {
    int n;
    if (p[0] == '/' || !dir[0])
        n = snprintf(out, RW_PATH_MAX, "%s", p);
    else
        n = snprintf(out, RW_PATH_MAX, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", p);
    if (n < 0 || n >= RW_PATH_MAX) {
        char ln[32];
        rw_spec_err(cx->err, cx->errlen, "%s: %s: path too long (at most %d bytes once resolved)%s",
                cx->origin, field_path, RW_PATH_MAX - 1, line_note(at->line, ln));
        return -1;
    }
    return 0;
}

/* Integer fields accept YAML ints and integral floats ("1e6"): a researcher
 * writing max_steps: 1e6 means an integer. */
static int apply_scalar_field(const field *f, const ynode *n, const apply_ctx *cx, rw_spec *s) {
    char *dst = (char *)s + f->off;
    char rng[96], what[256];
    rw_field_range_text(f, rng, sizeof rng);
    switch (f->type) {
    case F_INT:
    case F_LONG:
    case F_U64: {
        double v;
        snprintf(what, sizeof what, "must be an integer %s", rng);
        if (rw_ynode_number(n, &v) || v != floor(v) || !rw_field_in_range(f, v)) return field_err(cx, f->path, n, what);
        /* the double rounds above 2^53 (2^53+1 reads as 2^53): plain digit
         * strings are also read exactly, so such values are caught */
        if (exact_digits(n->text)) {
            errno = 0;
            unsigned long long u = strtoull(n->text[0] == '+' ? n->text + 1 : n->text, NULL, 10);
            if (errno || (double)u != v || u > (unsigned long long)f->hi)
                return field_err(cx, f->path, n, what);
        }
        if (f->type == F_INT) {
            int x = (int)v;
            memcpy(dst, &x, sizeof x);
            if (f->off == O(data.cache_size)) s->data.given |= RW_GIVEN_CACHE_SIZE;
        } else if (f->type == F_LONG) {
            long x = (long)v;
            memcpy(dst, &x, sizeof x);
        } else {
            uint64_t x = (uint64_t)v;
            memcpy(dst, &x, sizeof x);
        }
        return 0;
    }
    case F_FLOAT: {
        double v;
        snprintf(what, sizeof what, "must be a number %s", rng);
        /* range checked on the stored float: 1e-50 is > 0 but its float is 0 */
        if (rw_ynode_number(n, &v) || !isfinite((float)v) || !rw_field_in_range(f, (float)v))
            return field_err(cx, f->path, n, what);
        float x = (float)v;
        memcpy(dst, &x, sizeof x);
        return 0;
    }
    case F_BOOL: {
        int b = rw_ynode_bool(n);
        if (b < 0) return field_err(cx, f->path, n, "must be true or false");
        memcpy(dst, &b, sizeof b);
        return 0;
    }
    case F_ENUM: {
        char list[160];
        rw_field_enum_list(f->enums, list, sizeof list);
        snprintf(what, sizeof what, "must be one of: %s", list);
        if (n->kind != YN_SCALAR || rw_ynode_is_null(n) || (n->skind != YS_PLAIN && n->skind != YS_STRING))
            return field_err(cx, f->path, n, what);
        for (int i = 0; f->enums[i]; i++) {
            if (!strcmp(n->text, f->enums[i]) && strlen(f->enums[i]) == n->len) {
                memcpy(dst, &i, sizeof i);
                return 0;
            }
        }
        return field_err(cx, f->path, n, what);
    }
    case F_NAME: {
        snprintf(what, sizeof what, "must be 1..%d characters from [A-Za-z0-9_.-]", RW_NAME_MAX - 1);
        if (n->kind != YN_SCALAR || rw_ynode_is_null(n) || n->skind == YS_OTHER || n->len >= RW_NAME_MAX ||
            strlen(n->text) != n->len || !rw_spec_name_ok(n->text))
            return field_err(cx, f->path, n, what);
        memcpy(dst, n->text, n->len + 1);
        return 0;
    }
    case F_PATH: {
        /* null clears the path: lets a grid variant drop the base's init */
        if (rw_ynode_is_null(n)) {
            dst[0] = '\0';
            return 0;
        }
        snprintf(what, sizeof what, "must be a non-empty path of at most %d bytes (or null for none)",
                 RW_PATH_MAX - 1);
        if (n->kind != YN_SCALAR || n->skind == YS_OTHER || n->len == 0 || n->len >= RW_PATH_MAX ||
            strlen(n->text) != n->len)
            return field_err(cx, f->path, n, what);
        char tmp[RW_PATH_MAX];
        if (join_path(cx, f->path, n, cx->basedir, n->text, tmp)) return -1;
        memcpy(dst, tmp, strlen(tmp) + 1);
        return 0;
    }
    case F_VEC3: {
        snprintf(what, sizeof what, "must be a list of 3 numbers, each %s", rng);
        if (n->kind != YN_SEQ || n->nkids != 3) return field_err(cx, f->path, n, what);
        float x[3];
        for (int i = 0; i < 3; i++) {
            double v;
            char sub[96];
            snprintf(sub, sizeof sub, "%s[%d]", f->path, i);
            snprintf(what, sizeof what, "must be a number %s", rng);
            if (rw_ynode_number(n->kids[i], &v) || !rw_field_in_range(f, (float)v))
                return field_err(cx, sub, n->kids[i], what);
            x[i] = (float)v;
        }
        memcpy(dst, x, sizeof x);
        if (f->off == O(data.mean)) s->data.given |= RW_GIVEN_MEAN;
        if (f->off == O(data.std)) s->data.given |= RW_GIVEN_STD;
        return 0;
    }
    }
    return -1;
}

/* The keys allowed in the mapping at `prefix` ("" = top level), from the
 * table: the next path component of every field under the prefix. */
/* The key of field path p in the mapping at prefix (its next component),
 * or NULL when p is not under prefix. */
static const char *key_under(const char *p, const char *prefix, size_t pl, size_t *kl) {
    if (pl && (strncmp(p, prefix, pl) || p[pl] != '.')) return NULL;
    const char *k = pl ? p + pl + 1 : p;
    *kl = strcspn(k, ".");
    return k;
}

static void allowed_keys(const char *prefix, char *out, size_t outlen) {
    size_t pl = strlen(prefix), o = 0, n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < rw_field_count; i++) {
        size_t kl, el;
        const char *k = key_under(fields[i].path, prefix, pl, &kl), *e;
        if (!k) continue;
        int dup = 0; /* an earlier field of the same key (a group's second field) */
        for (size_t j = 0; j < i && !dup; j++)
            dup = (e = key_under(fields[j].path, prefix, pl, &el)) && el == kl && !strncmp(e, k, kl);
        if (dup) continue;
        if (o < outlen)
            o += (size_t)snprintf(out + o, outlen - o, "%s%.*s", n++ ? ", " : "", (int)kl, k);
    }
}

/* Applies the mapping `map`, which sits at dotted path `prefix` ("" = a whole
 * spec), on top of *s. Fields absent from the mapping keep their value in *s:
 * this is how a grid variant overrides a base spec. On error *s may be partly
 * written: callers apply to a scratch copy. */
static int spec_apply_map(const ynode *map, const char *prefix, const apply_ctx *cx, rw_spec *s) {
    char allowed[512], ln[32];
    if (map->kind != YN_MAP) {
        char got[SAMPLE_MAX * 3];
        got_text(map, got, sizeof got);
        if (prefix[0])
            rw_spec_err(cx->err, cx->errlen, "%s: %s: must be a mapping, %s%s", cx->origin, prefix,
                    got, line_note(map->line, ln));
        else
            rw_spec_err(cx->err, cx->errlen, "%s: top level: must be a mapping of fields, %s%s",
                    cx->origin, got, line_note(map->line, ln));
        return -1;
    }
    size_t pl = strlen(prefix);
    for (size_t i = 0; i + 1 < map->nkids; i += 2) {
        const ynode *key = map->kids[i], *val = map->kids[i + 1];
        char kbuf[SAMPLE_MAX * 2];
        if (key->kind != YN_SCALAR || rw_ynode_is_null(key) || strlen(key->text) != key->len) {
            allowed_keys(prefix, allowed, sizeof allowed);
            rw_spec_err(cx->err, cx->errlen, "%s: %s%skeys must be plain names (allowed: %s)%s",
                    cx->origin, prefix, pl ? ": " : "", allowed, line_note(key->line, ln));
            return -1;
        }
        char path[256];
        sample(kbuf, sizeof kbuf, key->text, key->len);
        snprintf(path, sizeof path, "%s%s%s", prefix, pl ? "." : "", kbuf);

        /* a field, or a group of fields? */
        const field *f = NULL;
        int group = 0;
        size_t ppl = strlen(path);
        for (size_t j = 0; j < rw_field_count; j++) {
            if (!strcmp(fields[j].path, path)) f = &fields[j];
            else if (!strncmp(fields[j].path, path, ppl) && fields[j].path[ppl] == '.') group = 1;
        }
        if ((!f && !group) || key->len >= sizeof kbuf - 4) {
            allowed_keys(prefix, allowed, sizeof allowed);
            rw_spec_err(cx->err, cx->errlen, "%s: %s: unknown field (allowed%s%s: %s)%s",
                    cx->origin, path, pl ? " in " : " at top level", pl ? prefix : "", allowed,
                    line_note(key->line, ln));
            return -1;
        }
        /* duplicates: earlier keys were all known, so this loop is short */
        for (size_t j = 0; j < i; j += 2) {
            if (map->kids[j]->len == key->len && !strcmp(map->kids[j]->text, key->text)) {
                rw_spec_err(cx->err, cx->errlen, "%s: %s: duplicate key on line %d (first given on line %d)",
                        cx->origin, path, key->line, map->kids[j]->line);
                return -1;
            }
        }
        if (f) {
            if (apply_scalar_field(f, val, cx, s)) return -1;
        } else if (!rw_ynode_is_null(val)) { /* "eval:" with everything commented out */
            if (spec_apply_map(val, path, cx, s)) return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Entry points */

int rw_spec_parse(const char *yaml, size_t len, const char *origin, const char *basedir, rw_spec *s,
                  char *err, size_t errlen) {
    return rw_spec_parse_with(yaml, len, origin, basedir, NULL, s, err, errlen);
}

/* The overrides on top of *s (a scratch copy). */
static int apply_overrides(const rw_overrides *ov, rw_spec *s, char *err, size_t errlen) {
    ynode *tree = NULL;
    if (!ov || rw_overrides_tree(ov, &tree, err, errlen)) return ov ? -1 : 0;
    apply_ctx cx = {RW_OVERRIDES_ORIGIN, ov->basedir ? ov->basedir : "", err, errlen};
    int rc = tree ? spec_apply_map(tree, "", &cx, s) : 0;
    rw_ytree_free(tree);
    return rc;
}

int rw_spec_parse_with(const char *yaml, size_t len, const char *origin, const char *basedir,
                       const rw_overrides *ov, rw_spec *s, char *err, size_t errlen) {
    if (!origin) origin = "spec";
    if (!basedir) basedir = "";
    if (len > SPEC_FILE_MAX) {
        rw_spec_err(err, errlen, "%s: too large (%zu bytes; a spec is at most %u bytes)", origin, len,
                SPEC_FILE_MAX);
        return -1;
    }
    ynode *root = NULL;
    if (rw_ytree_parse(yaml, len, origin, &root, err, errlen)) return -1;
    if (!root || rw_ynode_is_null(root)) {
        rw_ytree_free(root);
        rw_spec_err(err, errlen, "%s: empty spec: expected a mapping of fields (name, seed, data, model, "
                             "loss, optim, ...)", origin);
        return -1;
    }
    /* a scratch copy: the caller's struct changes only on success */
    rw_spec tmp;
    rw_spec_defaults(&tmp);
    apply_ctx cx = {origin, basedir, err, errlen};
    int rc = spec_apply_map(root, "", &cx, &tmp);
    rw_ytree_free(root);
    if (rc == 0) rc = apply_overrides(ov, &tmp, err, errlen);
    rw_spec_resolve(&tmp);
    if (rc == 0) rc = rw_spec_validate(&tmp, origin, err, errlen);
    if (rc == 0) *s = tmp;
    return rc;
}

int rw_spec_load(const char *path, rw_spec *s, char *err, size_t errlen) {
    return rw_spec_load_with(path, NULL, s, err, errlen);
}

int rw_spec_load_with(const char *path, const rw_overrides *ov, rw_spec *s, char *err,
                      size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rw_spec_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rw_spec_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        rw_spec_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size > (off_t)SPEC_FILE_MAX) {
        rw_spec_err(err, errlen, "%s: too large (%lld bytes; a spec is at most %u bytes)", path,
                (long long)st.st_size, SPEC_FILE_MAX);
        close(fd);
        return -1;
    }
    /* read up to the limit + 1 so a file that grows meanwhile is still caught */
    char *buf = malloc(SPEC_FILE_MAX + 1);
    if (!buf) {
        rw_spec_err(err, errlen, "%s: out of memory", path);
        close(fd);
        return -1;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, SPEC_FILE_MAX + 1 - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rw_spec_err(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return -1;
        }
        if (r == 0 || (len += (size_t)r) == SPEC_FILE_MAX + 1) break;
    }
    close(fd);
    if (len == 0) {
        free(buf);
        rw_spec_err(err, errlen, "%s: empty file: expected a mapping of fields (name, seed, data, model, "
                             "loss, optim, ...)", path);
        return -1;
    }

    /* Relative paths in the spec are relative to its folder, made absolute
     * because the daemon and workers do not share the CLI's working directory. */
    char dir[RW_PATH_MAX], absdir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, sizeof dir, ".");
    } else if (slash == path) {
        snprintf(dir, sizeof dir, "/");
    } else if ((size_t)(slash - path) < sizeof dir) {
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    } else {
        free(buf);
        rw_spec_err(err, errlen, "%s: path too long", path);
        return -1;
    }
    const char *basedir = dir;
    if (realpath(dir, absdir) && strlen(absdir) < RW_PATH_MAX) basedir = absdir;

    int rc = rw_spec_parse_with(buf, len, path, basedir, ov, s, err, errlen);
    free(buf);
    return rc;
}

int rw_spec_classes(const rw_spec *s) {
    if (s->data.kind == RW_DATA_CIFAR100)
        return s->data.labels == RW_LABELS_COARSE ? 20 : 100;
    return 10;
}

/* ------------------------------------------------------------------------ */
/* Reuse by grid files (proto/spec_tree.h) */

int rw_spec_apply_tree(const ynode *map, const char *origin, const char *basedir, rw_spec *s,
                       char *err, size_t errlen) {
    apply_ctx cx = {origin, basedir ? basedir : "", err, errlen};
    return spec_apply_map(map, "", &cx, s);
}

