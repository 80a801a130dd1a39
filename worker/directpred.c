/* DirectPred's predictor from the correlation of its input (see
 * directpred.h). */
#include "worker/directpred.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (in OpenBLAS, which Debian ships without lapacke.h): eigenvalues
 * and eigenvectors of a symmetric matrix. The trailing lengths are the
 * Fortran strings' hidden arguments. */
extern void dsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a,
                    const int *lda, const double *vl, const double *vu, const int *il,
                    const int *iu, const double *abstol, int *m, double *w, double *z,
                    const int *ldz, int *isuppz, double *work, const int *lwork, int *iwork,
                    const int *liwork, int *info, size_t, size_t, size_t);

void rw_directpred_fold(double *F, const float *C, int D, double rho)
{
    const size_t n = (size_t)D * D;
    for (size_t i = 0; i < n; i++)
        F[i] = rho * F[i] + (1.0 - rho) * (double)C[i];
}

int rw_directpred_w(const double *F, int D, double eps, float *W, char *err, size_t errlen)
{
    const size_t n = (size_t)D * D;
    double *a = malloc(n * sizeof *a), *z = malloc(n * sizeof *z);
    double *s = malloc((size_t)D * sizeof *s), *p = malloc((size_t)D * sizeof *p);
    int *isuppz = malloc(2 * (size_t)D * sizeof *isuppz);
    double *work = NULL;
    int *iwork = NULL, rc = -1;
    if (!a || !z || !s || !p || !isuppz) {
        snprintf(err, errlen, "directpred: out of memory for a %dx%d eigendecomposition", D, D);
        goto done;
    }
    /* dsyevr overwrites its input; F is symmetric, so row- and
     * column-major are the same matrix */
    memcpy(a, F, n * sizeof *a);
    const int nD = D;
    int il = 1, iu = D, m = 0, info = 0, lwork = -1, liwork = -1, iwq = 0;
    double vl = 0, vu = 0, abstol = 0, wq = 0;
    dsyevr_("V", "A", "L", &nD, a, &nD, &vl, &vu, &il, &iu, &abstol, &m, s, z, &nD, isuppz, &wq,
            &lwork, &iwq, &liwork, &info, 1, 1, 1);
    lwork = (int)wq;
    liwork = iwq;
    work = malloc((size_t)(lwork > 1 ? lwork : 1) * sizeof *work);
    iwork = malloc((size_t)(liwork > 1 ? liwork : 1) * sizeof *iwork);
    if (info != 0 || !work || !iwork) {
        snprintf(err, errlen, "directpred: LAPACK dsyevr's workspace query failed (info %d)",
                 info);
        goto done;
    }
    dsyevr_("V", "A", "L", &nD, a, &nD, &vl, &vu, &il, &iu, &abstol, &m, s, z, &nD, isuppz, work,
            &lwork, iwork, &liwork, &info, 1, 1, 1);
    if (info != 0 || m != D) {
        snprintf(err, errlen, "directpred: LAPACK dsyevr failed (info %d, %d of %d eigenvalues)",
                 info, m, D);
        goto done;
    }
    /* ascending: the last is the largest */
    const double smax = s[D - 1];
    if (!(smax > 0) || !isfinite(smax)) {
        rc = 1;
        goto done;
    }
    for (int j = 0; j < D; j++)
        p[j] = sqrt(fmax(s[j], 0.0) / smax) + eps;
    /* W = U diag(p) U^T, column j of z (column-major) the j-th eigenvector;
     * the upper triangle, mirrored, so that W is symmetric to the bit */
    for (int i = 0; i < D; i++)
        for (int k = i; k < D; k++) {
            double acc = 0;
            for (int j = 0; j < D; j++)
                acc += z[(size_t)j * D + i] * p[j] * z[(size_t)j * D + k];
            W[(size_t)i * D + k] = W[(size_t)k * D + i] = (float)acc;
        }
    rc = 0;
done:
    free(a), free(z), free(s), free(p), free(isuppz), free(work), free(iwork);
    return rc;
}
