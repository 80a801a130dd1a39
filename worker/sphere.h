/* The representation on the circle, as the paper's Figure 3 draws it: the
 * projections f(x) of training images, reduced to 2-D by PCA and normalized
 * onto the unit circle. Where they sit shows collapse (one arc) or spread
 * (all around); numbers summarize it. */
#ifndef RUNAWAY_WORKER_SPHERE_H
#define RUNAWAY_WORKER_SPHERE_H

#include <stddef.h>

#include "proto/spec.h"
#include "worker/data.h"
#include "worker/model.h"

#define RW_SPHERE_BINS 360       /* density at each degree */
#define RW_SPHERE_PAIRS_MAX 16   /* samples shown with their two views */
#define RW_SPHERE_BANDWIDTH 0.1  /* the density's kernel, radians (~5.7 degrees) */

typedef struct rw_sphere {
    int n;          /* points on the circle */
    int n_centre;   /* points PCA put at the origin: no direction, left out */
    int D;          /* the representation's width */
    double evr[2];  /* share of the variance along the first and second component */
    double R;       /* |mean of the unit vectors|: 0 evenly spread, 1 all at one point */
    double uniform; /* log mean_{i != j} exp(-2 |u_i - u_j|^2): L_uniform on the circle */
    double densest; /* the largest share of the points on any 45-degree arc */
    /* wrapped-normal kernel density per radian at (i + 0.5) degrees; its
     * integral over the circle is 1 */
    double density[RW_SPHERE_BINS];
    int npairs;
    double pair_deg[RW_SPHERE_PAIRS_MAX][2]; /* sample k's two views, degrees; NAN at the origin */
} rw_sphere;

/* f (n, D) host rows. PCA (LAPACK's dsyevr on the covariance) fits on f;
 * pairs (2 * npairs, D), rows 2k and 2k+1 the two views of sample k, are
 * projected with the same components. Each component's sign makes its
 * largest entry positive, so the picture is a function of the data.
 * -1 with err when n < 3, out of memory, or every row is the same point
 * (complete collapse: no direction to project on). */
int rw_sphere_fit(const float *f, int n, int D, const float *pairs, int npairs, rw_sphere *out,
                  char *err, size_t errlen);

/* The model's projections f(x), eval mode, of nsamples training images
 * spread evenly over ds (image k * n / nsamples), un-augmented: f
 * (nsamples, projector width) host rows. nsamples <= ds->n. */
int rw_project_samples(rw_model *m, const rw_dataset *ds, const rw_spec *s, int nsamples,
                       float *f, char *err, size_t errlen);

/* The effective rank of the representation (RankMe, Garrido et al. 2023):
 * the rows of f (n, D) normalized, their singular values s_k (LAPACK's
 * dgesdd), p_k =
 * s_k / sum s, rank = exp(-sum p_k log p_k): D when every direction carries
 * the same weight, 1 for one point (complete collapse), between for a
 * dimensional collapse. Rows of zero length have no direction and are left
 * out; *rank is NAN when none is left. -1 only when out of memory. */
int rw_effective_rank(const float *f, int n, int D, double *rank, char *err, size_t errlen);

/* rw_project_samples of min(nsamples, ds->n) images, then rw_effective_rank. */
int rw_rank_model(rw_model *m, const rw_dataset *ds, const rw_spec *s, int nsamples,
                  double *rank, char *err, size_t errlen);

/* The model's projections (eval mode) of nsamples training images spread
 * evenly over ds, un-augmented, and of T1/T2 of the first npairs of them
 * (epoch 0's views), then rw_sphere_fit. */
int rw_sphere_model(rw_model *m, const rw_dataset *ds, const rw_spec *s, int nsamples,
                    int npairs, rw_sphere *out, char *err, size_t errlen);

/* The data file that `runaway sphere` draws: a '#' header with the label
 * and the numbers, then index 0: angle_deg density; index 1: per pair two
 * rows x y on the unit circle (a blank line after each). */
int rw_sphere_write(const rw_sphere *sp, const char *label, const char *path, char *err,
                    size_t errlen);

#endif
