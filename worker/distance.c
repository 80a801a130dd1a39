/* Two run folders' snapshots compared epoch by epoch (see distance.h).
 *
 * The tensors are told apart by name, as the files name them: the online
 * encoder is torchvision's ResNet (conv1, bn1, layerN.*), the heads are
 * projector.*, predictor.* and classifier.*, the teacher teacher.*. Only
 * float parameters count: running statistics are not trained, and a
 * num_batches_tracked is an int64. */
#include "worker/distance.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/spec.h"
#include "worker/model.h"
#include "worker/safetensors.h"

static int has_prefix(const char *s, const char *p)
{
    return !strncmp(s, p, strlen(p));
}

static int has_suffix(const char *s, const char *x)
{
    size_t n = strlen(s), m = strlen(x);
    return n >= m && !strcmp(s + n - m, x);
}

/* A trained float parameter (not a running statistic, not a counter). */
static int is_param(const rw_st_tensor *t)
{
    return t->dtype == RW_ST_F32 && !has_suffix(t->name, ".running_mean") &&
           !has_suffix(t->name, ".running_var");
}

static int is_predictor(const char *name)
{
    return has_prefix(name, "predictor.");
}

static int is_encoder(const char *name)
{
    return !has_prefix(name, "teacher.") && !has_prefix(name, "projector.") &&
           !is_predictor(name) && !has_prefix(name, "classifier.");
}

/* The output layer's tensors, whose sign model.predictor_negated flips. */
static int is_pred_out(const char *name, const char *prefix)
{
    size_t n = prefix ? strlen(prefix) : 0;
    return prefix && !strncmp(name, prefix, n) &&
           (!strcmp(name + n, ".weight") || !strcmp(name + n, ".bias"));
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* dir/snapshots' epochs, ascending, into *out (malloc'd): how many, or -1. */
static int list_snapshots(const char *dir, int **out, char *err, size_t errlen)
{
    char sd[4200];
    snprintf(sd, sizeof sd, "%s/snapshots", dir);
    *out = NULL;
    DIR *d = opendir(sd);
    if (!d) {
        if (errno == ENOENT && access(dir, R_OK | X_OK) == 0)
            snprintf(err, errlen, "%s has no snapshots: its spec sets no "
                     "checkpoint.snapshot_every, or no epoch has ended yet", dir);
        else
            snprintf(err, errlen, "%s: %s", errno == ENOENT ? dir : sd, strerror(errno));
        return -1;
    }
    int n = 0, cap = 0, e;
    char tail[8];
    struct dirent *de;
    while ((de = readdir(d))) {
        if (sscanf(de->d_name, "weights-e%d.safetenso%7s", &e, tail) != 2 || strcmp(tail, "rs"))
            continue;
        if (n == cap) {
            int *more = realloc(*out, (size_t)(cap = cap ? 2 * cap : 64) * sizeof **out);
            if (!more) {
                closedir(d);
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            *out = more;
        }
        (*out)[n++] = e;
    }
    closedir(d);
    if (n == 0) {
        snprintf(err, errlen, "%s has no snapshots yet (snapshots/ is empty)", dir);
        return -1;
    }
    qsort(*out, (size_t)n, sizeof **out, cmp_int);
    return n;
}

/* The spec a run trains: its run folder's spec.yaml. */
static int load_run_spec(const char *dir, rw_spec *s, char *err, size_t errlen)
{
    char p[4200], e[1024];
    snprintf(p, sizeof p, "%s/spec.yaml", dir);
    if (rw_spec_load(p, s, e, sizeof e) != 0) {
        snprintf(err, errlen, "%s (the run's spec, to know which side started from -W0)", e);
        return -1;
    }
    return 0;
}

typedef struct sums {
    double diff2, ref2;
    size_t n;
} sums;

/* The encoder's (pred 0) or the predictor's (pred 1) parameters of a and
 * b summed into *s. 1: compared; 0: b has none of them (pred only); -1:
 * the two differ in their tensors (err says which). */
static int compare(const rw_st *a, const rw_st *b, int pred, const char *out_prefix, int sign,
                   sums *s, char *err, size_t errlen)
{
    size_t na = 0, nb = 0;
    for (size_t i = 0; i < rw_st_count(b); i++) {
        const rw_st_tensor *t = rw_st_at(b, i);
        nb += is_param(t) && (pred ? is_predictor(t->name) : is_encoder(t->name));
    }
    for (size_t i = 0; i < rw_st_count(a); i++) {
        const rw_st_tensor *ta = rw_st_at(a, i);
        if (!is_param(ta) || !(pred ? is_predictor(ta->name) : is_encoder(ta->name)))
            continue;
        na++;
        const rw_st_tensor *tb = rw_st_find(b, ta->name);
        int same = tb && tb->dtype == ta->dtype && tb->ndim == ta->ndim;
        for (int d = 0; same && d < ta->ndim; d++)
            same = tb->shape[d] == ta->shape[d];
        if (!same) {
            if (pred)
                return 0;
            snprintf(err, errlen, "the encoders differ (other architectures?): %s is %s in "
                     "the second run", ta->name, tb ? "of another shape" : "missing");
            return -1;
        }
        /* the files are ours: aligned little-endian floats (safetensors.h) */
        const float *x = ta->data, *y = tb->data;
        double sg = pred && is_pred_out(ta->name, out_prefix) ? sign : 1;
        for (int64_t k = 0; k < ta->numel; k++) {
            double d = (double)x[k] - sg * (double)y[k];
            s->diff2 += d * d;
            s->ref2 += (double)x[k] * x[k];
        }
        s->n += (size_t)ta->numel;
    }
    if (na != nb) {
        if (pred)
            return 0;
        snprintf(err, errlen, "the encoders differ (other architectures?): %zu tensors and %zu",
                 na, nb);
        return -1;
    }
    return na > 0;
}

/* JSON null where a's tensors are all zero and b's are not: no relative
 * distance (JSON has no infinity). */
static json_t *relative(const sums *s)
{
    if (s->diff2 == 0)
        return json_real(0); /* equal, whatever the size (an all-zero W included) */
    return s->ref2 > 0 ? json_real(sqrt(s->diff2 / s->ref2)) : json_null();
}

/* One epoch of both runs: the pair's distances and how far run a moved
 * from its first snapshot a0, appended to o's arrays. 0, or -1 with err. */
static int epoch_row(json_t *o, const rw_st *a0, const char *dir_a, const char *dir_b, int e,
                     const char *out_prefix, int sign, int *both_pred, char *err, size_t errlen)
{
    char pa[4200], pb[4200];
    snprintf(pa, sizeof pa, "%s/snapshots/weights-e%05d.safetensors", dir_a, e);
    snprintf(pb, sizeof pb, "%s/snapshots/weights-e%05d.safetensors", dir_b, e);
    rw_st *a = rw_st_open(pa, err, errlen), *b = a ? rw_st_open(pb, err, errlen) : NULL;
    sums se = {0}, sp = {0}, me = {0}, mp = {0};
    int ce = a && b ? compare(a, b, 0, NULL, 1, &se, err, errlen) : -1;
    int cp = ce > 0 ? compare(a, b, 1, out_prefix, sign, &sp, err, errlen) : -1;
    /* a's own snapshots share its tensors: no error to expect */
    if (ce > 0 && compare(a, a0, 0, NULL, 1, &me, err, errlen) > 0 && cp > 0)
        compare(a, a0, 1, NULL, 1, &mp, err, errlen);
    rw_st_close(a);
    rw_st_close(b);
    if (ce == 0)
        snprintf(err, errlen, "%s: no encoder tensors (not a runaway weights file?)", pa);
    if (ce <= 0)
        return -1;
    *both_pred &= cp > 0;
    json_object_set_new(o, "params", json_integer((json_int_t)se.n));
    json_array_append_new(json_object_get(o, "epochs"), json_integer(e));
    json_array_append_new(json_object_get(o, "encoder"), relative(&se));
    json_array_append_new(json_object_get(o, "predictor"), cp > 0 ? relative(&sp) : json_null());
    json_array_append_new(json_object_get(o, "moved_a"), relative(&me));
    json_array_append_new(json_object_get(o, "moved_a_predictor"),
                          cp > 0 ? relative(&mp) : json_null());
    return 0;
}

int rw_distance_dirs(const char *dir_a, const char *dir_b, json_t **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    int *ea = NULL, *eb = NULL, rc = -1, na, nb;
    rw_spec sa, sb;
    rw_st *a0 = NULL;
    json_t *o = json_object();
    if ((na = list_snapshots(dir_a, &ea, err, errlen)) < 0 ||
        (nb = list_snapshots(dir_b, &eb, err, errlen)) < 0 ||
        load_run_spec(dir_a, &sa, err, errlen) != 0 || load_run_spec(dir_b, &sb, err, errlen) != 0)
        goto done;
    char p0[4200];
    snprintf(p0, sizeof p0, "%s/snapshots/weights-e%05d.safetensors", dir_a, ea[0]);
    if (!(a0 = rw_st_open(p0, err, errlen)))
        goto done;
    /* Theorem 5.1's W moves as -W on the side that started negated */
    int sign = sa.model.predictor_negated != sb.model.predictor_negated ? -1 : 1;
    const char *out_prefix = sa.model.predictor == sb.model.predictor
                                 ? rw_predictor_out_prefix(sa.model.predictor)
                                 : NULL;
    const char *arrays[] = {"epochs", "encoder", "predictor", "moved_a", "moved_a_predictor",
                            "only_a", "only_b"};
    for (size_t k = 0; k < sizeof arrays / sizeof *arrays; k++)
        json_object_set_new(o, arrays[k], json_array());
    json_object_set_new(o, "sign", json_integer(sign));
    json_object_set_new(o, "start_a", json_integer(ea[0]));
    int both_pred = 1;
    for (int i = 0, j = 0; i < na || j < nb;) {
        if (j >= nb || (i < na && ea[i] < eb[j]))
            json_array_append_new(json_object_get(o, "only_a"), json_integer(ea[i++]));
        else if (i >= na || eb[j] < ea[i])
            json_array_append_new(json_object_get(o, "only_b"), json_integer(eb[j++]));
        else if (epoch_row(o, a0, dir_a, dir_b, ea[i++], out_prefix, sign, &both_pred, err,
                           errlen) != 0)
            goto done;
        else
            j++;
    }
    if (json_array_size(json_object_get(o, "epochs")) == 0) {
        snprintf(err, errlen, "%s and %s have no snapshot of the same epoch", dir_a, dir_b);
        goto done;
    }
    if (!both_pred) {
        json_object_set_new(o, "predictor", json_null());
        json_object_set_new(o, "moved_a_predictor", json_null());
    }
    *out = o;
    o = NULL;
    rc = 0;
done:
    json_decref(o);
    rw_st_close(a0);
    free(ea);
    free(eb);
    return rc;
}
