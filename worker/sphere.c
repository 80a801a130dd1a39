/* The representation on the circle (the paper's Figure 3): PCA to 2-D,
 * onto the unit circle, a kernel density of the angles, and the numbers
 * that say how spread the points are. See sphere.h. */
#include "worker/sphere.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#undef I /* cblas.h includes <complex.h> */

#include "worker/data_internal.h"
#include "worker/eval.h"

/* LAPACK (in OpenBLAS, which Debian ships without lapacke.h): eigenvalues
 * and eigenvectors of a symmetric matrix, a range of them by index. The
 * trailing lengths are the Fortran strings' hidden arguments. */
extern void dsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a,
                    const int *lda, const double *vl, const double *vu, const int *il,
                    const int *iu, const double *abstol, int *m, double *w, double *z,
                    const int *ldz, int *isuppz, double *work, const int *lwork, int *iwork,
                    const int *liwork, int *info, size_t, size_t, size_t);

/* LAPACK: singular values (jobz "N") of a column-major m x n matrix. */
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda,
                    double *s, double *u, const int *ldu, double *vt, const int *ldvt,
                    double *work, const int *lwork, int *iwork, int *info, size_t);

#define TWO_PI 6.283185307179586

/* The top two principal components of f: comp (2, D), variances lam[2]
 * (largest first), the total variance *trace and the mean mu (D). */
static int pca2(const float *f, int n, int D, double *mu, double *comp, double lam[2],
                double *trace, char *err, size_t errlen)
{
    double *x = malloc((size_t)n * D * sizeof(double));
    double *c = calloc((size_t)D * D, sizeof(double));
    double *z = malloc((size_t)2 * D * sizeof(double));
    int *isuppz = malloc(4 * sizeof(int));
    int rc = -1;
    double *work = NULL;
    int *iwork = NULL;
    if (!x || !c || !z || !isuppz) {
        snprintf(err, errlen, "sphere: out of memory");
        goto done;
    }
    memset(mu, 0, (size_t)D * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int d = 0; d < D; d++)
            mu[d] += f[(size_t)i * D + d];
    for (int d = 0; d < D; d++)
        mu[d] /= n;
    for (int i = 0; i < n; i++)
        for (int d = 0; d < D; d++)
            x[(size_t)i * D + d] = f[(size_t)i * D + d] - mu[d];
    /* covariance, upper triangle (row-major C = X^T X / (n - 1)) */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, D, n, 1.0 / (n - 1), x, D, 0.0, c, D);
    *trace = 0;
    for (int d = 0; d < D; d++)
        *trace += c[(size_t)d * D + d];
    if (!(*trace > 0)) {
        snprintf(err, errlen, "sphere: all %d representations are the same point (complete "
                 "collapse): PCA has no direction to project on", n);
        goto done;
    }
    if (D == 1) {
        snprintf(err, errlen, "sphere: the representation has one dimension: no 2-D projection");
        goto done;
    }
    /* Row-major upper = column-major lower of the same symmetric matrix. */
    int il = D - 1, iu = D, m = 0, info = 0, lwork = -1, liwork = -1, iw_q;
    double vl = 0, vu = 0, abstol = 0, w[2] = {0, 0}, wq;
    const int nD = D;
    dsyevr_("V", "I", "L", &nD, c, &nD, &vl, &vu, &il, &iu, &abstol, &m, w, z, &nD, isuppz, &wq,
            &lwork, &iw_q, &liwork, &info, 1, 1, 1);
    lwork = (int)wq;
    liwork = iw_q;
    work = malloc((size_t)lwork * sizeof(double));
    iwork = malloc((size_t)liwork * sizeof(int));
    if (!work || !iwork) {
        snprintf(err, errlen, "sphere: out of memory");
        goto done;
    }
    dsyevr_("V", "I", "L", &nD, c, &nD, &vl, &vu, &il, &iu, &abstol, &m, w, z, &nD, isuppz, work,
            &lwork, iwork, &liwork, &info, 1, 1, 1);
    if (info != 0 || m != 2) {
        snprintf(err, errlen, "sphere: LAPACK dsyevr failed (info %d, %d eigenvalues)", info, m);
        goto done;
    }
    /* ascending: column 1 is the largest */
    for (int k = 0; k < 2; k++) {
        const double *v = z + (size_t)(1 - k) * D;
        int big = 0;
        for (int d = 1; d < D; d++)
            if (fabs(v[d]) > fabs(v[big]))
                big = d;
        double sg = v[big] < 0 ? -1.0 : 1.0;
        for (int d = 0; d < D; d++)
            comp[(size_t)k * D + d] = sg * v[d];
        lam[k] = w[1 - k] > 0 ? w[1 - k] : 0;
    }
    rc = 0;
done:
    free(x), free(c), free(z), free(isuppz), free(work), free(iwork);
    return rc;
}

/* The angle of row r's projection, or NAN when it lands on the origin:
 * closer than 1e-6 of the first component's standard deviation. */
static double angle_of(const float *r, int D, const double *mu, const double *comp, double sd1)
{
    double p[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        for (int d = 0; d < D; d++)
            p[k] += (r[d] - mu[d]) * comp[(size_t)k * D + d];
    if (hypot(p[0], p[1]) <= 1e-6 * sd1)
        return NAN;
    double a = atan2(p[1], p[0]);
    return a < 0 ? a + TWO_PI : a;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int rw_sphere_fit(const float *f, int n, int D, const float *pairs, int npairs, rw_sphere *out,
                  char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (n < 3 || D < 1) {
        snprintf(err, errlen, "sphere: %d points of width %d: need at least 3", n, D);
        return -1;
    }
    if (npairs > RW_SPHERE_PAIRS_MAX)
        npairs = RW_SPHERE_PAIRS_MAX;
    double *mu = malloc((size_t)D * sizeof(double));
    double *comp = malloc((size_t)2 * D * sizeof(double));
    double *th = malloc((size_t)n * sizeof(double));
    double lam[2], trace;
    int rc = -1;
    if (!mu || !comp || !th) {
        snprintf(err, errlen, "sphere: out of memory");
        goto done;
    }
    if (pca2(f, n, D, mu, comp, lam, &trace, err, errlen) != 0)
        goto done;
    out->D = D;
    out->evr[0] = lam[0] / trace;
    out->evr[1] = lam[1] / trace;
    double sd1 = sqrt(lam[0]);
    int m = 0;
    for (int i = 0; i < n; i++) {
        double a = angle_of(f + (size_t)i * D, D, mu, comp, sd1);
        if (isnan(a))
            out->n_centre++;
        else
            th[m++] = a;
    }
    out->n = m;
    if (m < 2) {
        snprintf(err, errlen, "sphere: %d of %d points project onto the origin", n - m, n);
        goto done;
    }
    double cx = 0, cy = 0;
    for (int i = 0; i < m; i++)
        cx += cos(th[i]), cy += sin(th[i]);
    out->R = hypot(cx, cy) / m;
    /* |u_i - u_j|^2 = 2 - 2 cos(th_i - th_j) */
    double s = 0;
    for (int i = 0; i < m; i++)
        for (int j = i + 1; j < m; j++)
            s += 2 * exp(-4.0 + 4.0 * cos(th[i] - th[j]));
    out->uniform = log(s / ((double)m * (m - 1)));
    /* densest 45-degree arc: a window sliding over the sorted angles, the
     * circle unrolled twice */
    qsort(th, (size_t)m, sizeof *th, cmp_double);
    int best = 0;
    for (int i = 0, j = 0; i < m; i++) {
        if (j < i)
            j = i;
        while (j < i + m && th[j % m] + (j >= m ? TWO_PI : 0) - th[i] <= TWO_PI / 8 + 1e-12)
            j++;
        if (j - i > best)
            best = j - i;
    }
    out->densest = (double)best / m;
    /* wrapped normal kernel: the bandwidth is small enough that the
     * neighbouring wraps (+-2 pi) hold all the mass that matters */
    const double h = RW_SPHERE_BANDWIDTH, norm = 1.0 / (m * h * sqrt(TWO_PI));
    for (int b = 0; b < RW_SPHERE_BINS; b++) {
        double phi = (b + 0.5) * TWO_PI / RW_SPHERE_BINS, acc = 0;
        for (int i = 0; i < m; i++)
            for (int k = -1; k <= 1; k++) {
                double u = (phi - th[i] + k * TWO_PI) / h;
                acc += exp(-0.5 * u * u);
            }
        out->density[b] = acc * norm;
    }
    out->npairs = npairs;
    for (int k = 0; k < npairs; k++)
        for (int v = 0; v < 2; v++) {
            double a = angle_of(pairs + (size_t)(2 * k + v) * D, D, mu, comp, sd1);
            out->pair_deg[k][v] = a * (360.0 / TWO_PI);
        }
    rc = 0;
done:
    free(mu), free(comp), free(th);
    return rc;
}

#define SPHERE_CHUNK 256

/* Projections (eval mode) of the n images `img` (an index each) or, with
 * views != NULL, of T1/T2 pairs: row 2k+v is view v of image img[k]. */
static int project(rw_model *m, const rw_dataset *ds, const rw_spec *s, const int *img, int n,
                   int views, float *f, char *err, size_t errlen)
{
    kb_backend *be = rw_model_backend(m);
    int S = s->data.image_size, D = s->model.proj_out, rows = views ? 2 * n : n;
    size_t px = (size_t)3 * S * S;
    int chunk = rows < SPHERE_CHUNK ? rows : SPHERE_CHUNK;
    chunk += chunk & 1; /* a pair's two views go together */
    float *host = malloc((size_t)chunk * px * sizeof(float));
    float *scratch = views ? malloc(RW_AUG_SCRATCH(S) * sizeof(float)) : NULL;
    void *x = be->alloc(be, be->fmap_bytes(be, chunk, 3, S, S));
    float *y = be->alloc(be, (size_t)chunk * D * sizeof(float));
    int rc = -1;
    if (!host || (views && !scratch) || !x || !y) {
        snprintf(err, errlen, "projections: out of memory");
        goto done;
    }
    for (int r0 = 0; r0 < rows; r0 += chunk) {
        int c = rows - r0 < chunk ? rows - r0 : chunk;
        for (int r = 0; r < c; r++) {
            float *o = host + (size_t)r * px;
            if (views)
                rw_aug_view(ds, img[(r0 + r) / 2], s->seed, 0, (r0 + r) & 1, s->data.augment, S,
                            s->data.mean, s->data.std, o, scratch);
            else
                rw_image_plain(ds, img[r0 + r], S, s->data.mean, s->data.std, o);
        }
        be->fmap_upload(be, x, host, c, 3, S, S);
        if (rw_model_project(m, x, c, S, 0, y) != 0) {
            snprintf(err, errlen, "projections: forward pass failed: %s", rw_model_error(m));
            goto done;
        }
        be->download(be, f + (size_t)r0 * D, y, (size_t)c * D * sizeof(float));
    }
    rc = 0;
done:
    if (x)
        be->free(be, x);
    if (y)
        be->free(be, y);
    free(host), free(scratch);
    return rc;
}

/* Image k * n / nsamples for k < count: the whole set, every class. */
static int *spread(const rw_dataset *ds, int nsamples, int count)
{
    int *idx = malloc((size_t)(count > 0 ? count : 1) * sizeof(int));
    for (int k = 0; idx && k < count; k++)
        idx[k] = (int)((long long)k * ds->n / nsamples);
    return idx;
}

int rw_project_samples(rw_model *m, const rw_dataset *ds, const rw_spec *s, int nsamples,
                       float *f, char *err, size_t errlen)
{
    int *idx = spread(ds, nsamples, nsamples);
    if (!idx) {
        snprintf(err, errlen, "projections: out of memory");
        return -1;
    }
    int rc = project(m, ds, s, idx, nsamples, 0, f, err, errlen);
    free(idx);
    return rc;
}

int rw_effective_rank(const float *f, int n, int D, double *rank, char *err, size_t errlen)
{
    double *z = malloc((size_t)(n > 0 ? n : 1) * D * sizeof(double));
    double *sv = malloc((size_t)D * sizeof(double));
    int *iwork = malloc((size_t)8 * D * sizeof(int));
    double *work = NULL;
    int rc = -1, used = 0;
    *rank = NAN;
    if (!z || !sv || !iwork) {
        snprintf(err, errlen, "effective rank: out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const float *r = f + (size_t)i * D;
        double nn = 0;
        for (int d = 0; d < D; d++)
            nn += (double)r[d] * r[d];
        if (!(nn > 0) || !isfinite(nn))
            continue;
        double inv = 1.0 / sqrt(nn);
        for (int d = 0; d < D; d++)
            z[(size_t)used * D + d] = r[d] * inv;
        used++;
    }
    if (used == 0) {
        rc = 0;
        goto done;
    }
    /* The rows, row-major, are the columns of a column-major D x used
     * matrix: the same singular values. An SVD rather than the eigenvalues
     * of the Gram matrix: their square roots would lift rounding (~1e-16)
     * to ~1e-8 and a collapsed set would read a rank of 1.000004. */
    const int m = D, nc = used, one = 1;
    int lwork = -1, info = 0, k = m < nc ? m : nc;
    double wq, dummy;
    dgesdd_("N", &m, &nc, z, &m, sv, &dummy, &one, &dummy, &one, &wq, &lwork, iwork, &info, 1);
    lwork = (int)wq;
    work = malloc((size_t)(lwork > 0 ? lwork : 1) * sizeof(double));
    if (!work) {
        snprintf(err, errlen, "effective rank: out of memory");
        goto done;
    }
    dgesdd_("N", &m, &nc, z, &m, sv, &dummy, &one, &dummy, &one, work, &lwork, iwork, &info, 1);
    if (info != 0) {
        snprintf(err, errlen, "effective rank: LAPACK dgesdd failed (info %d)", info);
        goto done;
    }
    double sum = 0, h = 0;
    for (int q = 0; q < k; q++)
        sum += sv[q];
    for (int q = 0; q < k; q++) {
        double p = sv[q] / sum;
        if (p > 0)
            h -= p * log(p);
    }
    *rank = exp(h);
    rc = 0;
done:
    free(z), free(sv), free(iwork), free(work);
    return rc;
}

int rw_rank_model(rw_model *m, const rw_dataset *ds, const rw_spec *s, int nsamples,
                  double *rank, char *err, size_t errlen)
{
    if (nsamples > ds->n)
        nsamples = ds->n;
    float *f = malloc((size_t)nsamples * s->model.proj_out * sizeof(float));
    if (!f) {
        snprintf(err, errlen, "effective rank: out of memory");
        return -1;
    }
    int rc = rw_project_samples(m, ds, s, nsamples, f, err, errlen);
    if (rc == 0)
        rc = rw_effective_rank(f, nsamples, s->model.proj_out, rank, err, errlen);
    free(f);
    return rc;
}

int rw_sphere_model(rw_model *m, const rw_dataset *ds, const rw_spec *s, int nsamples,
                    int npairs, rw_sphere *out, char *err, size_t errlen)
{
    int D = s->model.proj_out;
    if (nsamples > ds->n)
        nsamples = ds->n;
    if (npairs > RW_SPHERE_PAIRS_MAX)
        npairs = RW_SPHERE_PAIRS_MAX;
    if (npairs > nsamples)
        npairs = nsamples;
    float *f = malloc((size_t)nsamples * D * sizeof(float));
    float *pf = malloc((size_t)(2 * npairs + 1) * D * sizeof(float));
    int *idx = spread(ds, nsamples, npairs);
    int rc = -1;
    if (!f || !pf || !idx) {
        snprintf(err, errlen, "sphere: out of memory");
        goto done;
    }
    if (rw_project_samples(m, ds, s, nsamples, f, err, errlen) != 0 ||
        (npairs > 0 && project(m, ds, s, idx, npairs, 1, pf, err, errlen) != 0))
        goto done;
    rc = rw_sphere_fit(f, nsamples, D, pf, npairs, out, err, errlen);
done:
    free(f), free(pf), free(idx);
    return rc;
}

int rw_sphere_write(const rw_sphere *sp, const char *label, const char *path, char *err,
                    size_t errlen)
{
    FILE *fp = fopen(path, "w");
    if (!fp) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        return -1;
    }
    fprintf(fp, "# runaway sphere: %s\n", label);
    fprintf(fp, "# points %d centre %d width %d evr %.6f %.6f R %.6f uniform %.6f densest45 %.6f\n",
            sp->n, sp->n_centre, sp->D, sp->evr[0], sp->evr[1], sp->R, sp->uniform, sp->densest);
    fprintf(fp, "# angle_deg density_per_rad\n");
    for (int b = 0; b < RW_SPHERE_BINS; b++)
        fprintf(fp, "%.1f %.9g\n", (b + 0.5) * 360.0 / RW_SPHERE_BINS, sp->density[b]);
    /* closes the curve */
    fprintf(fp, "%.1f %.9g\n\n\n# view pairs: x y on the unit circle, a blank line after each\n",
            360.0 + 0.5 * 360.0 / RW_SPHERE_BINS, sp->density[0]);
    int any = 0;
    for (int k = 0; k < sp->npairs; k++) {
        if (isnan(sp->pair_deg[k][0]) || isnan(sp->pair_deg[k][1]))
            continue;
        for (int v = 0; v < 2; v++) {
            double a = sp->pair_deg[k][v] * (TWO_PI / 360.0);
            fprintf(fp, "%.6f %.6f\n", cos(a), sin(a));
        }
        fprintf(fp, "\n");
        any = 1;
    }
    if (!any) /* gnuplot wants the block to exist */
        fprintf(fp, "NaN NaN\n\n");
    if (fclose(fp) != 0) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
