/* DirectPred (Tian, Chen and Ganguli 2021, "Understanding self-supervised
 * learning dynamics without contrastive pairs"): a linear predictor that is
 * not learned but set, every K steps, from the eigendecomposition of the
 * running correlation of its input.
 *
 *   F <- rho F + (1 - rho) E_batch[y y^T]        every step, y the online
 *                                                 projections of both views
 *   F = U diag(s) U^T,  W = U diag(p) U^T,
 *   p_j = sqrt(max(s_j, 0) / max_k s_k) + eps    every K steps
 *
 * p is the form of the authors' released code (eigenvalues clipped at 0,
 * over the largest, through the square root, plus eps), which does not
 * depend on F's scale. F starts at 0; their code starts it at the first
 * batch's correlation, which changes only how much that batch weighs.
 *
 * The host's part, in double: F lives on the host (the model downloads each
 * step's E[y y^T], which the backward pass leaves in the predictor's
 * gradient slot, worker/model.c) and W goes up into the parameters. */
#ifndef RUNAWAY_WORKER_DIRECTPRED_H
#define RUNAWAY_WORKER_DIRECTPRED_H

#include <stddef.h>

/* F (D, D) <- rho F + (1 - rho) C, C (D, D) the step's E[y y^T]. */
void rw_directpred_fold(double *F, const float *C, int D, double rho);

/* W (D, D, row-major) = U diag(p) U^T of F as above (LAPACK's dsyevr).
 * 0; 1 when F has no positive eigenvalue (nothing learned yet: W is left
 * as it is); -1 with the reason in err. */
int rw_directpred_w(const double *F, int D, double eps, float *W, char *err, size_t errlen);

#endif
