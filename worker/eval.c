/* Linear evaluation protocol and kNN monitor on frozen encoder features. */
#include "worker/eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/optim.h"

#define EVAL_CHUNK 256 /* images per feature forward pass */

int rw_eval_features(rw_model *m, const rw_dataset *ds, int size, const float mean[3],
                     const float std[3], float *out)
{
    kb_backend *be = rw_model_backend(m);
    int F = rw_model_feat_dim(m);
    size_t img = (size_t)3 * size * size;
    int chunk = ds->n < EVAL_CHUNK ? ds->n : EVAL_CHUNK;
    float *host = malloc((size_t)chunk * img * sizeof(float));
    void *dev = be->alloc(be, be->fmap_bytes(be, chunk, 3, size, size));
    int rc = host && dev ? 0 : -1;
    for (int i0 = 0; rc == 0 && i0 < ds->n; i0 += chunk) {
        int n = ds->n - i0 < chunk ? ds->n - i0 : chunk;
        /* BatchNorm in eval mode makes each row independent of the chunk,
         * but a chunk of 1 is still fine either way. */
        for (int i = 0; i < n; i++)
            rw_image_plain(ds, i0 + i, size, mean, std, host + (size_t)i * img);
        be->fmap_upload(be, dev, host, n, 3, size, size);
        rc = rw_model_features(m, dev, n, size, 0, out + (size_t)i0 * F);
    }
    free(host);
    if (dev)
        be->free(be, dev);
    return rc;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Labels past the classifier's classes would index past its logits. */
static int check_labels(const char *what, const uint8_t *l, int n, int classes, char *err,
                        size_t errlen)
{
    if (classes < 1 || classes > RW_CLASSES_MAX) {
        snprintf(err, errlen, "%s: %d classes is not in 1..%d", what, classes, RW_CLASSES_MAX);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (l[i] >= classes) {
            snprintf(err, errlen, "%s: image %d has label %d, not one of the %d classes", what, i,
                     l[i], classes);
            return -1;
        }
    }
    return 0;
}

#define PROBE_BN_EPS 1e-5     /* BatchNorm1d's */
#define PROBE_BN_MOMENTUM 0.1 /* its running statistics' */

/* Per feature, over n rows of x (n, F): the mean, and the variance (biased:
 * what normalizes; unbiased: what a BatchNorm's running variance keeps). */
static void column_stats(const float *x, int n, int F, double *mean, double *var,
                         double *var_unbiased)
{
    for (int j = 0; j < F; j++)
        mean[j] = var[j] = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < F; j++)
            mean[j] += x[(size_t)i * F + j];
    for (int j = 0; j < F; j++)
        mean[j] /= n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < F; j++) {
            double d = x[(size_t)i * F + j] - mean[j];
            var[j] += d * d;
        }
    for (int j = 0; j < F; j++) {
        if (var_unbiased)
            var_unbiased[j] = n > 1 ? var[j] / (n - 1) : var[j];
        var[j] /= n;
    }
}

/* x (n, F) in place: (x - mean) / sqrt(var + eps). */
static void normalize_rows(float *x, int n, int F, const double *mean, const double *var,
                           double eps)
{
    for (int j = 0; j < F; j++) {
        double inv = 1.0 / sqrt(var[j] + eps);
        for (int i = 0; i < n; i++)
            x[(size_t)i * F + j] = (float)((x[(size_t)i * F + j] - mean[j]) * inv);
    }
}

/* The features as the probe sees them: backend copies of both splits
 * standardized with the training split's statistics (*tr, *te), or, for
 * batchnorm, the training split on the host (*host) for the batches and
 * running statistics for the test split. NULL outputs: features as they
 * are. */
typedef struct probe_view {
    float *tr, *te;     /* backend (n, F), owned; NULL: the caller's */
    float *host;        /* batchnorm: (ntr, F) host copy of the training split */
    float *batch;       /* batchnorm: one batch on the host */
    double *mean, *var, *run_mean, *run_var, *var_u;
} probe_view;

static void probe_view_free(kb_backend *be, probe_view *v)
{
    if (v->tr)
        be->free(be, v->tr);
    if (v->te)
        be->free(be, v->te);
    free(v->host);
    free(v->batch);
    free(v->mean);
    free(v->var);
    free(v->run_mean);
    free(v->run_var);
    free(v->var_u);
}

static int probe_view_init(kb_backend *be, const rw_linear_cfg *cfg, const float *ftr, int ntr,
                           const float *fte, int nte, int F, int B, probe_view *v)
{
    memset(v, 0, sizeof *v);
    if (cfg->normalize == RW_LINEAR_RAW)
        return 0;
    v->mean = malloc((size_t)F * sizeof(double));
    v->var = malloc((size_t)F * sizeof(double));
    v->host = malloc((size_t)ntr * F * sizeof(float));
    if (!v->mean || !v->var || !v->host)
        return -1;
    be->download(be, v->host, ftr, (size_t)ntr * F * sizeof(float));
    if (cfg->normalize == RW_LINEAR_BATCHNORM) {
        v->run_mean = calloc((size_t)F, sizeof(double));
        v->run_var = malloc((size_t)F * sizeof(double));
        v->var_u = malloc((size_t)F * sizeof(double));
        v->batch = malloc((size_t)B * F * sizeof(float));
        v->te = be->alloc(be, (size_t)nte * F * sizeof(float));
        if (!v->run_mean || !v->run_var || !v->var_u || !v->batch || !v->te)
            return -1;
        for (int j = 0; j < F; j++)
            v->run_var[j] = 1; /* BatchNorm1d's initial running variance */
        return 0;
    }
    /* standardize: the training split's statistics, for both splits */
    float *hte = malloc((size_t)nte * F * sizeof(float));
    v->tr = be->alloc(be, (size_t)ntr * F * sizeof(float));
    v->te = be->alloc(be, (size_t)nte * F * sizeof(float));
    if (!hte || !v->tr || !v->te) {
        free(hte);
        return -1;
    }
    be->download(be, hte, fte, (size_t)nte * F * sizeof(float));
    column_stats(v->host, ntr, F, v->mean, v->var, NULL);
    normalize_rows(v->host, ntr, F, v->mean, v->var, 0);
    normalize_rows(hte, nte, F, v->mean, v->var, 0);
    /* a constant feature (variance 0) would divide by zero: it carries
     * nothing, so it becomes 0 */
    for (int j = 0; j < F; j++)
        if (!(v->var[j] > 0)) {
            for (int i = 0; i < ntr; i++)
                v->host[(size_t)i * F + j] = 0;
            for (int i = 0; i < nte; i++)
                hte[(size_t)i * F + j] = 0;
        }
    be->upload(be, v->tr, v->host, (size_t)ntr * F * sizeof(float));
    be->upload(be, v->te, hte, (size_t)nte * F * sizeof(float));
    free(hte);
    free(v->host);
    v->host = NULL;
    return 0;
}

/* batchnorm: the n rows perm[0..n) of the training split, normalized with
 * their own statistics, into xb; the running statistics updated. */
static void probe_bn_batch(kb_backend *be, probe_view *v, const int *perm, int n, int F,
                           float *xb)
{
    for (int i = 0; i < n; i++)
        memcpy(v->batch + (size_t)i * F, v->host + (size_t)perm[i] * F, (size_t)F * sizeof(float));
    column_stats(v->batch, n, F, v->mean, v->var, v->var_u);
    normalize_rows(v->batch, n, F, v->mean, v->var, PROBE_BN_EPS);
    for (int j = 0; j < F; j++) {
        v->run_mean[j] += PROBE_BN_MOMENTUM * (v->mean[j] - v->run_mean[j]);
        v->run_var[j] += PROBE_BN_MOMENTUM * (v->var_u[j] - v->run_var[j]);
    }
    be->upload(be, xb, v->batch, (size_t)n * F * sizeof(float));
}

/* batchnorm: the test split normalized with the running statistics. */
static int probe_bn_test(kb_backend *be, probe_view *v, const float *fte, int nte, int F)
{
    float *h = malloc((size_t)nte * F * sizeof(float));
    if (!h)
        return -1;
    be->download(be, h, fte, (size_t)nte * F * sizeof(float));
    normalize_rows(h, nte, F, v->run_mean, v->run_var, PROBE_BN_EPS);
    be->upload(be, v->te, h, (size_t)nte * F * sizeof(float));
    free(h);
    return 0;
}

int rw_linear_eval(kb_backend *be, const float *ftr, const uint8_t *ltr, int ntr,
                   const float *fte, const uint8_t *lte, int nte, int F, int classes,
                   const rw_linear_cfg *cfg, double *acc, char *err, size_t errlen)
{
    if (check_labels("linear eval: train split", ltr, ntr, classes, err, errlen) != 0 ||
        check_labels("linear eval: test split", lte, nte, classes, err, errlen) != 0)
        return -1;
    const int K = classes;
    int B = cfg->batch < ntr ? cfg->batch : ntr;
    size_t np = (size_t)K * F + K;
    float *p = be->alloc(be, np * sizeof(float));
    float *g = be->alloc(be, np * sizeof(float));
    float *mm = be->alloc(be, np * sizeof(float));
    float *vv = be->alloc(be, np * sizeof(float));
    float *xb = be->alloc(be, (size_t)B * F * sizeof(float));
    float *logits = be->alloc(be, (size_t)(B > EVAL_CHUNK ? B : EVAL_CHUNK) * K * sizeof(float));
    float *dlogits = be->alloc(be, (size_t)B * K * sizeof(float));
    int32_t *lb = be->alloc(be, (size_t)(B > EVAL_CHUNK ? B : EVAL_CHUNK) * sizeof(int32_t));
    float *out = be->alloc(be, 2 * sizeof(float));
    kb_adam_consts *kd = be->alloc(be, sizeof(kb_adam_consts));
    float *hp = malloc(np * sizeof(float));
    int *perm = malloc((size_t)ntr * sizeof(int));
    int32_t *hl = malloc((size_t)(B > EVAL_CHUNK ? B : EVAL_CHUNK) * sizeof(int32_t));
    int rc = -1;
    probe_view view = {0};
    if (!p || !g || !mm || !vv || !xb || !logits || !dlogits || !lb || !out || !kd || !hp || !perm || !hl) {
        snprintf(err, errlen, "linear eval: out of memory");
        goto done;
    }
    if (ntr < 1 || nte < 1) {
        snprintf(err, errlen, "linear eval: empty split");
        goto done;
    }
    if (probe_view_init(be, cfg, ftr, ntr, fte, nte, F, B, &view) != 0) {
        snprintf(err, errlen, "linear eval: out of memory for the normalized features");
        goto done;
    }
    if (view.tr)
        ftr = view.tr;
    /* nn.Linear default init from the seed. */
    uint64_t s = cfg->seed * 0x9E3779B97F4A7C15ull + 0x11;
    double bound = 1.0 / sqrt((double)F);
    for (size_t i = 0; i < np; i++)
        hp[i] = (float)(((mix64(s + i) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0) * bound);
    be->upload(be, p, hp, np * sizeof(float));
    float *W = p, *b = p + (size_t)K * F;
    float *dW = g, *db = g + (size_t)K * F;
    long step = 0;
    for (int i = 0; i < ntr; i++)
        perm[i] = i;
    for (int ep = 0; ep < cfg->epochs; ep++) {
        for (int i = ntr - 1; i > 0; i--) {
            int j = (int)(mix64(cfg->seed ^ ((uint64_t)ep << 32) ^ (uint64_t)i) % (uint64_t)(i + 1));
            int t = perm[i]; perm[i] = perm[j]; perm[j] = t;
        }
        for (int i0 = 0; i0 < ntr; i0 += B) {
            int n = ntr - i0 < B ? ntr - i0 : B;
            for (int i = 0; i < n; i++) {
                if (!view.host)
                    be->copy(be, xb + (size_t)i * F, ftr + (size_t)perm[i0 + i] * F,
                             (size_t)F * sizeof(float));
                hl[i] = ltr[perm[i0 + i]];
            }
            if (view.host)
                probe_bn_batch(be, &view, perm + i0, n, F, xb);
            be->upload(be, lb, hl, (size_t)n * sizeof(int32_t));
            be->linear_forward(be, xb, n, F, W, NULL, b, K, logits);
            be->softmax_xent(be, logits, lb, n, K, dlogits, out);
            be->linear_backward(be, xb, W, NULL, dlogits, n, F, K, NULL, dW, db);
            kb_adam_consts k = kb_adam_consts_init(cfg->lr, 0.9f, 0.999f, 1e-8f, 0.0f, ++step);
            be->upload(be, kd, &k, sizeof k);
            kb_update u = {.params = p, .grads = g, .adam_m = mm, .adam_v = vv, .n = np,
                           .k = kd};
            be->update(be, &u); /* zeroes g for the next batch */
        }
    }
    if (view.host && probe_bn_test(be, &view, fte, nte, F) != 0) {
        snprintf(err, errlen, "linear eval: out of memory for the normalized features");
        goto done;
    }
    if (view.te)
        fte = view.te;
    long correct = 0;
    for (int i0 = 0; i0 < nte; i0 += EVAL_CHUNK) {
        int n = nte - i0 < EVAL_CHUNK ? nte - i0 : EVAL_CHUNK;
        for (int i = 0; i < n; i++)
            hl[i] = lte[i0 + i];
        be->upload(be, lb, hl, (size_t)n * sizeof(int32_t));
        be->linear_forward(be, fte + (size_t)i0 * F, n, F, W, NULL, b, K, logits);
        be->softmax_xent(be, logits, lb, n, K, NULL, out);
        float o[2];
        be->download(be, o, out, sizeof o);
        correct += (long)lrintf(o[1]);
    }
    *acc = (double)correct / nte;
    rc = 0;
done:
    {
        void *bufs[] = {p, g, mm, vv, xb, logits, dlogits, lb, out, kd};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
            if (bufs[i])
                be->free(be, bufs[i]);
    }
    probe_view_free(be, &view);
    free(hp);
    free(perm);
    free(hl);
    return rc;
}

/* Row-normalizes (n, F) backend features into a new buffer. */
static float *normalized(kb_backend *be, const float *f, int n, int F)
{
    float *y = be->alloc(be, (size_t)n * F * sizeof(float));
    float *nrm = be->alloc(be, (size_t)n * sizeof(float));
    if (y && nrm)
        be->l2norm_forward(be, f, n, F, y, nrm);
    if (nrm)
        be->free(be, nrm);
    if (!nrm && y) {
        be->free(be, y);
        y = NULL;
    }
    return y;
}

int rw_knn(kb_backend *be, const float *ftr, const uint8_t *ltr, int ntr, const float *fte,
           const uint8_t *lte, int nte, int F, int classes, int k, float T, double *acc,
           char *err, size_t errlen)
{
    if (check_labels("kNN: train split", ltr, ntr, classes, err, errlen) != 0 ||
        check_labels("kNN: test split", lte, nte, classes, err, errlen) != 0)
        return -1;
    if (k > ntr)
        k = ntr;
    const int chunk = 64;
    float *a = normalized(be, ftr, ntr, F);
    float *b = normalized(be, fte, nte, F);
    float *sim = be->alloc(be, (size_t)chunk * ntr * sizeof(float));
    float *hs = malloc((size_t)chunk * ntr * sizeof(float));
    int *top = malloc((size_t)k * sizeof(int));
    float *topv = malloc((size_t)k * sizeof(float));
    int rc = -1;
    if (!a || !b || !sim || !hs || !top || !topv) {
        snprintf(err, errlen, "kNN: out of memory");
        goto done;
    }
    long correct = 0;
    for (int i0 = 0; i0 < nte; i0 += chunk) {
        int n = nte - i0 < chunk ? nte - i0 : chunk;
        /* sim (n, ntr) = test rows . train rows */
        be->linear_forward(be, b + (size_t)i0 * F, n, F, a, NULL, NULL, ntr, sim);
        be->download(be, hs, sim, (size_t)n * ntr * sizeof(float));
        for (int i = 0; i < n; i++) {
            const float *row = hs + (size_t)i * ntr;
            /* Keep the k best in a small sorted array: k << ntr. */
            int cnt = 0;
            for (int j = 0; j < ntr; j++) {
                float v = row[j];
                if (cnt == k && v <= topv[k - 1])
                    continue;
                int pos = cnt < k ? cnt++ : k - 1;
                while (pos > 0 && topv[pos - 1] < v) {
                    topv[pos] = topv[pos - 1];
                    top[pos] = top[pos - 1];
                    pos--;
                }
                topv[pos] = v;
                top[pos] = j;
            }
            double votes[RW_CLASSES_MAX] = {0};
            for (int j = 0; j < cnt; j++)
                votes[ltr[top[j]]] += exp(topv[j] / T);
            int best = 0;
            for (int c = 1; c < classes; c++)
                if (votes[c] > votes[best])
                    best = c;
            correct += best == lte[i0 + i];
        }
    }
    *acc = (double)correct / nte;
    rc = 0;
done:
    if (a)
        be->free(be, a);
    if (b)
        be->free(be, b);
    if (sim)
        be->free(be, sim);
    free(hs);
    free(top);
    free(topv);
    return rc;
}

/* Features of the labeled training images and of the test images. */
static int features_pair(rw_model *m, const rw_dataset *train, const rw_dataset *test, int size,
                         const float mean[3], const float std[3], float **ftr, float **fte,
                         char *err, size_t errlen)
{
    kb_backend *be = rw_model_backend(m);
    int F = rw_model_feat_dim(m);
    rw_dataset lab = rw_dataset_labeled(train);
    *ftr = be->alloc(be, (size_t)lab.n * F * sizeof(float));
    *fte = be->alloc(be, (size_t)test->n * F * sizeof(float));
    if (!*ftr || !*fte || rw_eval_features(m, &lab, size, mean, std, *ftr) != 0 ||
        rw_eval_features(m, test, size, mean, std, *fte) != 0) {
        snprintf(err, errlen, "evaluation: out of memory computing features");
        if (*ftr)
            be->free(be, *ftr);
        if (*fte)
            be->free(be, *fte);
        return -1;
    }
    return 0;
}

int rw_eval_linear_model(rw_model *m, const rw_dataset *train, const rw_dataset *test, int size,
                         const float mean[3], const float std[3], const rw_linear_cfg *cfg,
                         double *acc, char *err, size_t errlen)
{
    kb_backend *be = rw_model_backend(m);
    float *ftr, *fte;
    if (features_pair(m, train, test, size, mean, std, &ftr, &fte, err, errlen) != 0)
        return -1;
    int rc = rw_linear_eval(be, ftr, train->labels, train->labeled, fte, test->labels, test->n,
                            rw_model_feat_dim(m), train->classes, cfg, acc, err, errlen);
    be->free(be, ftr);
    be->free(be, fte);
    return rc;
}

int rw_eval_knn_model(rw_model *m, const rw_dataset *train, const rw_dataset *test, int size,
                      const float mean[3], const float std[3], int k, float T, double *acc,
                      char *err, size_t errlen)
{
    kb_backend *be = rw_model_backend(m);
    float *ftr, *fte;
    if (features_pair(m, train, test, size, mean, std, &ftr, &fte, err, errlen) != 0)
        return -1;
    int rc = rw_knn(be, ftr, train->labels, train->labeled, fte, test->labels, test->n,
                    rw_model_feat_dim(m), train->classes, k, T, acc, err, errlen);
    be->free(be, ftr);
    be->free(be, fte);
    return rc;
}
