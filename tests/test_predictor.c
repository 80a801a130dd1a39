/* The predictor studies after the paper (Tian, Chen and Ganguli 2021), each
 * held to its defining property on the CPU backend:
 *
 *   directpred  W = U diag(p) U^T of the F the model keeps, checked against
 *               an eigendecomposition of the test's own (Jacobi); F follows
 *               the momentum formula from the projections by hand; W is set
 *               every K steps and not between; dL/dy flows through W as
 *               through a linear predictor; a resumed job is the
 *               uninterrupted one, bit for bit.
 *   frozen      the predictor's weights are its initialization after N
 *               steps (weight decay on), its Adam moments untouched, while
 *               the encoder moves.
 *   lr mult     0 follows the frozen trajectory; 2 makes the predictor's
 *               first Adam step exactly twice mult 1's. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "proto/spec.h"
#include "worker/directpred.h"
#include "worker/model.h"
#include "worker/safetensors.h"
#include "worker/train.h"
#include "worker/weights.h"

#define N_IMG 8
#define S_IMG 16
#define D_MAX 16

static kb_backend *be;
static char tmp[64];

static void setup(void)
{
    be = kb_cpu_create(1);
    cr_assert_not_null(be);
    snprintf(tmp, sizeof tmp, "/tmp/rw-pred-XXXXXX");
    cr_assert_not_null(mkdtemp(tmp));
}

static void teardown(void)
{
    kb_destroy(be);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    (void)!system(cmd);
}

TestSuite(predictor, .init = setup, .fini = teardown, .timeout = 300);

static uint64_t rng_state;
static double urand(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 11) * (1.0 / 9007199254740992.0);
}

/* ---------------------------------------------------------------- helpers */

static rw_model_cfg tiny(rw_predictor pred)
{
    rw_model_cfg c = {
        .stem = RW_STEM_CIFAR, .width = 4, .proj_hidden = 10, .proj_out = 6, .predictor = pred,
        .pred_hidden = 12, .loss = {.kind = KB_LOSS_BYOL},
        .directpred = {.every = 1, .momentum = 0.9f, .eps = 0.1f},
    };
    return c;
}

static rw_model *make(const rw_model_cfg *c, uint64_t seed)
{
    char err[256];
    rw_model *m = rw_model_create(be, c, seed, err, sizeof err);
    cr_assert_not_null(m, "%s", err);
    return m;
}

/* Both views of N_IMG random images (a feature map of 2 N_IMG), batch k. */
static float *views(int k)
{
    size_t n = (size_t)2 * N_IMG * 3 * S_IMG * S_IMG;
    float *h = malloc(n * sizeof *h), *x = be->alloc(be, n * sizeof *h);
    rng_state = 1000 + (uint64_t)k;
    for (size_t i = 0; i < n; i++)
        h[i] = (float)(2 * urand() - 1);
    be->fmap_upload(be, x, h, 2 * N_IMG, 3, S_IMG, S_IMG);
    free(h);
    return x;
}

static void step(rw_model *m, const float *x, float lr, float wd)
{
    cr_assert_eq(rw_model_forward_backward(m, x, N_IMG, S_IMG, NULL), 0, "%s", rw_model_error(m));
    cr_assert_eq(rw_model_update(m, lr, wd, 0.99f), 0, "%s", rw_model_error(m));
}

/* A host copy of n floats of backend memory at p. */
static float *down(const float *p, size_t n)
{
    float *h = malloc(n * sizeof *h);
    be->download(be, h, p, n * sizeof *h);
    return h;
}

/* Where the predictor starts in the buffer: its first tensor. */
static size_t pred_off(rw_model *m)
{
    for (int i = 0; i < rw_model_ntensors(m); i++) {
        const rw_named *t = rw_model_tensor(m, i);
        if (t->kind == RW_T_PARAM && !strncmp(t->name, "predictor", 9))
            return t->off;
    }
    cr_assert_fail("no predictor");
    return 0;
}

/* Eigendecomposition of a symmetric n x n matrix by cyclic Jacobi
 * rotations, independent of LAPACK: a (destroyed) -> eigenvalues s, and
 * eigenvectors as the columns of v (row-major). */
static void jacobi(double *a, int n, double *s, double *v)
{
    for (int i = 0; i < n * n; i++)
        v[i] = i % (n + 1) == 0;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                *(i == j ? &diag : &off) += a[i * n + j] * a[i * n + j];
        if (off <= 1e-30 * diag)
            break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                if (a[p * n + q] == 0)
                    continue;
                double th = (a[q * n + q] - a[p * n + p]) / (2 * a[p * n + q]);
                double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                double c = 1 / sqrt(t * t + 1), sn = t * c;
                for (int k = 0; k < n; k++) { /* A J, then J^T A, and V J */
                    double kp = a[k * n + p], kq = a[k * n + q];
                    a[k * n + p] = c * kp - sn * kq;
                    a[k * n + q] = sn * kp + c * kq;
                }
                for (int k = 0; k < n; k++) {
                    double pk = a[p * n + k], qk = a[q * n + k];
                    a[p * n + k] = c * pk - sn * qk;
                    a[q * n + k] = sn * pk + c * qk;
                }
                for (int k = 0; k < n; k++) {
                    double kp = v[k * n + p], kq = v[k * n + q];
                    v[k * n + p] = c * kp - sn * kq;
                    v[k * n + q] = sn * kp + c * kq;
                }
            }
    }
    for (int i = 0; i < n; i++)
        s[i] = a[i * n + i];
}

/* DirectPred's W of F by the test's own eigendecomposition; 0 when F has
 * no positive eigenvalue. */
static int w_by_hand(const double *F, int D, double eps, double *W)
{
    double a[D_MAX * D_MAX], s[D_MAX], v[D_MAX * D_MAX], smax = -INFINITY;
    memcpy(a, F, sizeof(double) * D * D);
    jacobi(a, D, s, v);
    for (int j = 0; j < D; j++)
        smax = fmax(smax, s[j]);
    if (!(smax > 0))
        return 0;
    for (int i = 0; i < D; i++)
        for (int k = 0; k < D; k++) {
            double acc = 0;
            for (int j = 0; j < D; j++)
                acc += v[i * D + j] * (sqrt(fmax(s[j], 0) / smax) + eps) * v[k * D + j];
            W[i * D + k] = acc;
        }
    return 1;
}

/* W (float) against the hand's: within 1e-6 of W's largest entry (float
 * rounding of entries of size ~1; LAPACK and Jacobi agree to ~1e-14). */
static void same_w(const float *W, const double *F, int D, double eps, const char *what)
{
    double ref[D_MAX * D_MAX], big = 0, worst = 0;
    cr_assert(w_by_hand(F, D, eps, ref), "%s: F has no positive eigenvalue", what);
    for (int i = 0; i < D * D; i++) {
        big = fmax(big, fabs(ref[i]));
        worst = fmax(worst, fabs(W[i] - ref[i]));
    }
    cr_expect(worst <= 1e-6 * big, "%s: W off the hand's by %.3g (largest entry %.3g)", what,
              worst, big);
    for (int i = 0; i < D; i++)
        for (int k = 0; k < D; k++)
            cr_expect(W[i * D + k] == W[k * D + i], "%s: W is not symmetric at %d,%d", what, i, k);
}

/* ---------------------------------------------------------------- directpred */

/* The host's math alone: W is a function of F (its eigenvalues mapped,
 * its eigenvectors kept), whatever the basis; F with no positive
 * eigenvalue sets nothing. */
Test(predictor, directpred_w_is_the_eigenbasis_of_F)
{
    enum { D = 7 };
    double F[D * D], A[D * D];
    float W[D * D];
    char err[256];
    rng_state = 5;
    for (int i = 0; i < D * D; i++)
        A[i] = 2 * urand() - 1;
    for (int i = 0; i < D; i++) /* F = A diag(3, 2, 1, 0.5, 0, -0.2, -1) A^T */
        for (int k = 0; k < D; k++) {
            static const double lam[D] = {3, 2, 1, 0.5, 0, -0.2, -1};
            double acc = 0;
            for (int j = 0; j < D; j++)
                acc += A[i * D + j] * lam[j] * A[k * D + j];
            F[i * D + k] = acc;
        }
    cr_assert_eq(rw_directpred_w(F, D, 0.1, W, err, sizeof err), 0, "%s", err);
    same_w(W, F, D, 0.1, "random F with negative eigenvalues");
    /* W F = F W: the same eigenvectors */
    double worst = 0;
    for (int i = 0; i < D; i++)
        for (int k = 0; k < D; k++) {
            double wf = 0, fw = 0;
            for (int j = 0; j < D; j++) {
                wf += W[i * D + j] * F[j * D + k];
                fw += F[i * D + j] * W[j * D + k];
            }
            worst = fmax(worst, fabs(wf - fw));
        }
    cr_expect(worst < 1e-5, "W F - F W = %.3g", worst);

    /* a diagonal F: p read off directly, sqrt(max(s, 0) / max s) + eps */
    double Fd[D * D] = {0};
    const double s[D] = {4, 1, 0.25, 0, -3, 2, 0.01};
    for (int i = 0; i < D; i++)
        Fd[i * D + i] = s[i];
    cr_assert_eq(rw_directpred_w(Fd, D, 0.5, W, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < D; i++)
        for (int k = 0; k < D; k++) {
            double want = i == k ? sqrt(fmax(s[i], 0) / 4) + 0.5 : 0;
            cr_expect(fabs(W[i * D + k] - want) < 1e-6, "diagonal F: W[%d][%d] = %.9g, want %g",
                      i, k, W[i * D + k], want);
        }

    /* nothing learned: W stays as it was */
    double Fz[D * D] = {0};
    Fz[0] = -1;
    for (int i = 0; i < D * D; i++)
        W[i] = 7;
    cr_expect_eq(rw_directpred_w(Fz, D, 0.1, W, err, sizeof err), 1);
    cr_expect(W[0] == 7 && W[D * D - 1] == 7);
}

/* F <- rho F + (1 - rho) E[y y^T], E over both views' projections: after
 * step 1, (1 - rho) C1; after step 2, rho (1 - rho) C1 + (1 - rho) C2,
 * each C from the projections the step's predictor read, by hand. */
Test(predictor, directpred_f_follows_the_momentum_formula)
{
    rw_model_cfg c = tiny(RW_PRED_DIRECTPRED);
    c.directpred.momentum = 0.75f;
    rw_model *m = make(&c, 3);
    const int D = c.proj_out, NN = 2 * N_IMG;
    const double rho = 0.75;
    double want[D_MAX * D_MAX] = {0};
    for (int k = 0; k < 2; k++) {
        float *x = views(k);
        cr_assert_eq(rw_model_forward_backward(m, x, N_IMG, S_IMG, NULL), 0);
        float *y = down(rw_model_pred_input(m), (size_t)NN * D);
        float *slot = down(rw_model_grads(m) + pred_off(m), (size_t)D * D);
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double e = 0;
                for (int r = 0; r < NN; r++)
                    e += (double)y[r * D + i] * y[r * D + j];
                e /= NN;
                /* float sums of 16 products: ~1e-6 of the entries' scale */
                cr_expect(fabs(slot[i * D + j] - e) <= 1e-5 * (1 + fabs(e)),
                          "step %d: E[y y^T][%d][%d] = %.9g, by hand %.9g", k + 1, i, j,
                          slot[i * D + j], e);
                want[i * D + j] = rho * want[i * D + j] + (1 - rho) * e;
            }
        cr_assert_eq(rw_model_update(m, 1e-3f, 0, 0.99f), 0, "%s", rw_model_error(m));
        const double *F = rw_model_directpred_corr(m);
        for (int i = 0; i < D * D; i++)
            cr_expect(fabs(F[i] - want[i]) <= 1e-5 * (1 + fabs(want[i])),
                      "step %d: F[%d] = %.9g, by hand %.9g", k + 1, i, F[i], want[i]);
        free(y);
        free(slot);
        be->free(be, x);
    }
    rw_model_free(m);
}

/* K = 3: W is the initialization through steps 1 and 2, U diag(p) U^T of
 * the F of step 3 after it, unchanged through steps 4 and 5, anew at 6. */
Test(predictor, directpred_sets_w_every_k_steps_and_not_between)
{
    rw_model_cfg c = tiny(RW_PRED_DIRECTPRED);
    c.directpred.every = 3;
    rw_model *m = make(&c, 4);
    const int D = c.proj_out;
    const size_t off = pred_off(m), dd = (size_t)D * D;
    float *w0 = down(rw_model_params(m) + off, dd), *last = w0;
    for (int k = 1; k <= 7; k++) {
        float *x = views(k);
        step(m, x, 1e-3f, 0);
        be->free(be, x);
        float *w = down(rw_model_params(m) + off, dd);
        char what[64];
        snprintf(what, sizeof what, "after step %d", k);
        if (k % 3 == 0) {
            same_w(w, rw_model_directpred_corr(m), D, c.directpred.eps, what);
            cr_expect(memcmp(w, last, dd * sizeof *w) != 0, "%s: W did not change", what);
        } else {
            cr_expect(memcmp(w, last, dd * sizeof *w) == 0, "%s: W changed between updates",
                      what);
        }
        if (last != w0)
            free(last);
        last = w;
    }
    double cos_i, asym;
    cr_assert_eq(rw_model_predictor_vs_identity(m, &cos_i, &asym), 0);
    cr_expect(isfinite(cos_i) && asym == 0, "W against I: cos %g, asym %g (W is symmetric)",
              cos_i, asym);
    free(last);
    free(w0);
    rw_model_free(m);
}

/* DirectPred and a linear predictor of the same seed start from the same W;
 * dL/dy flows through it the same way, so every gradient but W's own slot
 * (E[y y^T] for DirectPred) is the same to the bit. */
Test(predictor, directpred_gradient_flows_as_through_a_linear_predictor)
{
    rw_model_cfg cd = tiny(RW_PRED_DIRECTPRED), cl = tiny(RW_PRED_LINEAR);
    rw_model *md = make(&cd, 6), *ml = make(&cl, 6);
    cr_assert_eq(rw_model_nparams(md), rw_model_nparams(ml));
    const size_t np = rw_model_nparams(md), off = pred_off(md);
    float *x = views(0);
    cr_assert_eq(rw_model_forward_backward(md, x, N_IMG, S_IMG, NULL), 0);
    cr_assert_eq(rw_model_forward_backward(ml, x, N_IMG, S_IMG, NULL), 0);
    float *gd = down(rw_model_grads(md), np), *gl = down(rw_model_grads(ml), np);
    cr_expect(memcmp(gd, gl, off * sizeof *gd) == 0, "encoder and projector gradients differ");
    double nz = 0;
    for (size_t i = 0; i < off; i++)
        nz += fabs(gd[i]);
    cr_expect_gt(nz, 0, "no gradient reached the encoder");
    free(gd);
    free(gl);
    be->free(be, x);
    rw_model_free(md);
    rw_model_free(ml);
}

/* ---------------------------------------------------------------- frozen, lr mult */

/* Frozen, with weight decay on (which alone would move a weight): after 4
 * steps the predictor's parameters are the initialization's bits and
 * their Adam moments still 0, the encoder's have moved. */
Test(predictor, frozen_predictor_keeps_its_initialization)
{
    rw_model_cfg c = tiny(RW_PRED_MLP_BN);
    c.pred_frozen = 1;
    rw_model *m = make(&c, 8);
    const size_t np = rw_model_nparams(m), off = pred_off(m);
    float *p0 = down(rw_model_params(m), np);
    for (int k = 0; k < 4; k++) {
        float *x = views(k);
        step(m, x, 1e-2f, 1e-2f);
        be->free(be, x);
    }
    float *p = down(rw_model_params(m), np), *mm = down(rw_model_adam_m(m), np),
          *vv = down(rw_model_adam_v(m), np), *g = down(rw_model_grads(m), np);
    cr_expect(memcmp(p + off, p0 + off, (np - off) * sizeof *p) == 0,
              "the frozen predictor moved");
    for (size_t i = off; i < np; i++)
        cr_assert(mm[i] == 0 && vv[i] == 0 && g[i] == 0,
                  "the predictor's Adam moments or gradient at %zu: %g %g %g", i - off, mm[i],
                  vv[i], g[i]);
    size_t moved = 0;
    for (size_t i = 0; i < off; i++)
        moved += p[i] != p0[i];
    cr_expect_gt(moved, off / 2, "only %zu of the %zu other parameters moved", moved, off);
    free(p0), free(p), free(mm), free(vv), free(g);
    rw_model_free(m);
}

/* Multiplier 0 steps the predictor by 0 * (its Adam ratio): the same
 * parameters as frozen, step after step, the whole model included (only
 * its Adam moments differ). */
Test(predictor, lr_mult_zero_follows_the_frozen_trajectory)
{
    rw_model_cfg cf = tiny(RW_PRED_MLP), cz = tiny(RW_PRED_MLP);
    cf.pred_frozen = 1;
    rw_model *mf = make(&cf, 9), *mz = make(&cz, 9);
    char err[256];
    cr_assert_eq(rw_model_set_predictor_lr_mult(mz, 0.0f, err, sizeof err), 0, "%s", err);
    const size_t np = rw_model_nparams(mf), off = pred_off(mf);
    for (int k = 0; k < 4; k++) {
        float *x = views(k);
        step(mf, x, 1e-2f, 1e-3f);
        step(mz, x, 1e-2f, 1e-3f);
        be->free(be, x);
        float *a = down(rw_model_params(mf), np), *b = down(rw_model_params(mz), np);
        cr_expect(memcmp(a, b, np * sizeof *a) == 0, "step %d: the parameters differ", k + 1);
        free(a), free(b);
    }
    float *vz = down(rw_model_adam_v(mz), np);
    cr_expect_neq(vz[off], 0, "multiplier 0 still keeps the predictor's Adam moments");
    free(vz);
    rw_model_free(mf);
    rw_model_free(mz);
}

/* Adam's first step is lr/bc1 * m/(sqrt(v)/sqrt(bc2) + eps) with m = (1 -
 * b1) g, v = (1 - b2) g^2: lr g / (|g| + eps). Multiplier 2 doubles it
 * exactly (lr * 2 is exact in float, so is its step size): each predictor
 * weight moves by twice mult 1's move, to the rounding of the subtraction
 * from the weight, and the rest of the model moves the same. */
Test(predictor, lr_mult_two_doubles_the_first_adam_step)
{
    rw_model_cfg c = tiny(RW_PRED_MLP);
    rw_model *m1 = make(&c, 10), *m2 = make(&c, 10);
    char err[256];
    cr_assert_eq(rw_model_set_predictor_lr_mult(m2, 2.0f, err, sizeof err), 0, "%s", err);
    const size_t np = rw_model_nparams(m1), off = pred_off(m1);
    const float lr = 1e-3f;
    float *x = views(0);
    float *p0 = down(rw_model_params(m1), np);
    cr_assert_eq(rw_model_forward_backward(m1, x, N_IMG, S_IMG, NULL), 0);
    cr_assert_eq(rw_model_forward_backward(m2, x, N_IMG, S_IMG, NULL), 0);
    float *g = down(rw_model_grads(m1), np), *g2 = down(rw_model_grads(m2), np);
    cr_assert(memcmp(g, g2, np * sizeof *g) == 0, "the same step gave other gradients");
    cr_assert_eq(rw_model_update(m1, lr, 0, 0.99f), 0);
    cr_assert_eq(rw_model_update(m2, lr, 0, 0.99f), 0);
    float *p1 = down(rw_model_params(m1), np), *p2 = down(rw_model_params(m2), np);
    cr_expect(memcmp(p1, p2, off * sizeof *p1) == 0, "the rest of the model moved otherwise");
    int checked = 0;
    for (size_t i = off; i < np; i++) {
        const double ulp = nextafterf(fabsf(p0[i]), INFINITY) - fabsf(p0[i]);
        const double d1 = (double)p1[i] - p0[i], d2 = (double)p2[i] - p0[i];
        const double want = -(double)lr * g[i] / (fabs(g[i]) + 1e-8);
        cr_expect(fabs(d1 - want) <= ulp + 1e-6 * lr, "mult 1 at %zu: moved %.9g, want %.9g",
                  i - off, d1, want);
        cr_expect(fabs(d2 - 2 * d1) <= 2 * ulp, "mult 2 at %zu: moved %.9g, twice mult 1's %.9g",
                  i - off, d2, 2 * d1);
        checked += fabs(g[i]) > 1e-6;
    }
    cr_expect_gt(checked, (int)(np - off) / 2, "most of the predictor had a gradient");
    free(p0), free(g), free(g2), free(p1), free(p2);
    be->free(be, x);
    rw_model_free(m1);
    rw_model_free(m2);
}

/* ---------------------------------------------------------------- jobs */

static void tiny_spec(rw_spec *s)
{
    rw_spec_defaults(s);
    s->seed = 11;
    s->threads = 1;
    snprintf(s->data.path, sizeof s->data.path, "%s/data", tmp);
    s->data.synthetic_train = 192;
    s->data.synthetic_test = 64;
    s->data.image_size = 16;
    s->data.loader_threads = 2;
    s->model.stem = RW_STEM_CIFAR;
    s->model.width = 4;
    s->model.proj_hidden = 32;
    s->model.proj_out = 16;
    s->model.pred_hidden = 32;
    s->optim.batch_size = 32;
    s->optim.epochs = 3;
    s->optim.lr = 1e-3f;
    s->eval.linear_epochs = 0;
    s->eval.rank_every = 0;
    s->log.every_steps = 1;
}

typedef struct record {
    rw_metrics ep[4];
    int n;
    long steps, stop_after;
} record;

static void on_epoch(void *ud, const rw_metrics *m)
{
    record *r = ud;
    if (r->n < 4)
        r->ep[r->n++] = *m;
}

static void on_step(void *ud, const rw_metrics *m) { ((record *)ud)->steps = m->step; }

static int should_stop(void *ud)
{
    record *r = ud;
    return r->stop_after > 0 && r->steps >= r->stop_after;
}

static rw_train_result train(const rw_spec *s, const char *out, int resume, record *r)
{
    rw_train_hooks h = {.ud = r, .on_epoch = on_epoch, .on_step = on_step,
                        .should_stop = should_stop};
    rw_train_opts o = {.out_dir = out, .resume = resume};
    rw_train_result res;
    char err[512];
    cr_assert_eq(rw_train(s, be, &o, &h, &res, err, sizeof err), 0, "rw_train: %s", err);
    return res;
}

/* Tensor `name` of the safetensors file at path, as raw bytes (malloc'd). */
static void *tensor(const char *path, const char *name, size_t *nbytes)
{
    char err[256];
    rw_st *st = rw_st_open(path, err, sizeof err);
    cr_assert_not_null(st, "%s", err);
    const rw_st_tensor *t = rw_st_find(st, name);
    cr_assert_not_null(t, "%s: no %s", path, name);
    void *p = malloc(t->nbytes);
    memcpy(p, t->data, t->nbytes);
    *nbytes = t->nbytes;
    rw_st_close(st);
    return p;
}

static void same_tensor(const char *pa, const char *pb, const char *name)
{
    size_t na, nb;
    void *a = tensor(pa, name, &na), *b = tensor(pb, name, &nb);
    cr_expect(na == nb && memcmp(a, b, na) == 0, "%s differs between %s and %s", name, pa, pb);
    free(a);
    free(b);
}

/* F and the K-step phase are training state: a job stopped after step 8
 * (6 steps an epoch, K = 3: W last set at step 6, next at 9) and resumed
 * from its checkpoint ends with the uninterrupted job's bits -- the
 * metrics, W, the whole export and F. */
Test(predictor, directpred_resume_equals_uninterrupted)
{
    rw_spec s;
    tiny_spec(&s);
    s.model.predictor = RW_PRED_DIRECTPRED;
    s.model.directpred.every = 3;
    record full = {0}, part = {.stop_after = 8}, rest = {0};
    char o1[96], o2[96], a[128], b[128];
    snprintf(o1, sizeof o1, "%s/full", tmp);
    snprintf(o2, sizeof o2, "%s/split", tmp);
    train(&s, o1, 0, &full);
    cr_assert(train(&s, o2, 0, &part).stopped, "the stop hook did not stop the job");
    train(&s, o2, 1, &rest);
    cr_assert_eq(full.n, 3);
    cr_assert_eq(rest.n, 2, "the resumed job finished %d epochs", rest.n);
    for (int e = 0; e < 2; e++) {
        const rw_metrics *x = &rest.ep[e], *y = &full.ep[e + 1];
        cr_expect(x->loss == y->loss && x->align == y->align && x->uniform == y->uniform &&
                      x->w_cos_i == y->w_cos_i,
                  "epoch %d: loss %.9g/%.9g cos(W, I) %.9g/%.9g", y->epoch, x->loss, y->loss,
                  x->w_cos_i, y->w_cos_i);
        cr_expect(isfinite(y->w_cos_i), "DirectPred's W against I is measured");
    }
    snprintf(a, sizeof a, "%s/weights.safetensors", o1);
    snprintf(b, sizeof b, "%s/weights.safetensors", o2);
    size_t n;
    void *w = tensor(a, "predictor.weight", &n);
    free(w);
    cr_expect_eq(n, 16 * 16 * sizeof(float), "a D x D predictor without bias");
    char err[256];
    rw_st *sa = rw_st_open(a, err, sizeof err);
    cr_assert_not_null(sa, "%s", err);
    for (size_t i = 0; i < rw_st_count(sa); i++)
        same_tensor(a, b, rw_st_at(sa, i)->name);
    rw_st_close(sa);
    snprintf(a, sizeof a, "%s/checkpoint.safetensors", o1);
    snprintf(b, sizeof b, "%s/checkpoint.safetensors", o2);
    same_tensor(a, b, "directpred.corr");
    same_tensor(a, b, "optimizer.adam_m");
}

/* The spec's fields reach the model: a frozen predictor's job and a
 * multiplier-0 job export the same weights, with the predictor still at
 * the seed's initialization and the encoder moved. */
Test(predictor, frozen_and_lr_mult_from_the_spec)
{
    rw_spec s;
    tiny_spec(&s);
    s.optim.epochs = 1;
    s.model.predictor = RW_PRED_LINEAR;
    char o1[96], o2[96], a[128], b[128], init[128], err[256];
    snprintf(o1, sizeof o1, "%s/frozen", tmp);
    snprintf(o2, sizeof o2, "%s/mult0", tmp);
    snprintf(init, sizeof init, "%s/init.safetensors", tmp);
    record r1 = {0}, r2 = {0};
    s.model.pred_frozen = 1;
    train(&s, o1, 0, &r1);
    s.model.pred_frozen = 0;
    s.optim.predictor_lr_mult = 0;
    train(&s, o2, 0, &r2);
    rw_model_cfg mc;
    rw_model_cfg_from_spec(&s, &mc);
    rw_model *m = make(&mc, s.seed);
    cr_assert_eq(rw_weights_export(m, init, err, sizeof err), 0, "%s", err);
    rw_model_free(m);
    snprintf(a, sizeof a, "%s/weights.safetensors", o1);
    snprintf(b, sizeof b, "%s/weights.safetensors", o2);
    rw_st *sa = rw_st_open(a, err, sizeof err);
    cr_assert_not_null(sa, "%s", err);
    for (size_t i = 0; i < rw_st_count(sa); i++)
        same_tensor(a, b, rw_st_at(sa, i)->name);
    rw_st_close(sa);
    same_tensor(a, init, "predictor.weight");
    size_t n0, n1;
    void *c0 = tensor(init, "conv1.weight", &n0), *c1 = tensor(a, "conv1.weight", &n1);
    cr_expect(n0 == n1 && memcmp(c0, c1, n0) != 0, "the encoder did not train");
    free(c0);
    free(c1);
}

/* A checkpoint belongs to its spec's digest: each study's field enters it
 * where it changes training, and only there (the checkpoints of jobs
 * before these fields keep their digest). */
Test(predictor, spec_digest_covers_the_studies_fields)
{
    rw_spec s;
    char d0[17], d[17];
    rw_spec_defaults(&s);
    rw_spec_digest(&s, d0);
    s.model.directpred.every = 5; /* not DirectPred: no effect */
    rw_spec_digest(&s, d);
    cr_expect_str_eq(d, d0);
    rw_spec_defaults(&s);
    s.model.pred_frozen = 1;
    rw_spec_digest(&s, d);
    cr_expect_str_neq(d, d0);
    rw_spec_defaults(&s);
    s.optim.predictor_lr_mult = 10;
    rw_spec_digest(&s, d);
    cr_expect_str_neq(d, d0);
    rw_spec_defaults(&s);
    s.model.predictor = RW_PRED_DIRECTPRED;
    rw_spec_digest(&s, d0);
    const char *what[] = {"every", "momentum", "eps"};
    for (int k = 0; k < 3; k++) {
        rw_spec t = s;
        if (k == 0)
            t.model.directpred.every = 2;
        else if (k == 1)
            t.model.directpred.momentum = 0.9f;
        else
            t.model.directpred.eps = 0;
        rw_spec_digest(&t, d);
        cr_expect_str_neq(d, d0, "model.directpred.%s is not in the digest", what[k]);
    }
}
