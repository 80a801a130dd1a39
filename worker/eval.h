/* Evaluation of a frozen encoder: features, the linear evaluation protocol
 * (softmax classifier on frozen 512-d features, the paper's appendix C), and
 * the kNN monitor (k=200, cosine similarity, temperature-weighted vote). */
#ifndef RUNAWAY_WORKER_EVAL_H
#define RUNAWAY_WORKER_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "proto/spec.h"
#include "worker/data.h"
#include "worker/model.h"

/* Encoder features (eval mode, no augmentation, images resized to `size`)
 * of every image of ds: out (ds->n, F) backend memory. 0 or -1. */
int rw_eval_features(rw_model *m, const rw_dataset *ds, int size, const float mean[3],
                     const float std[3], float *out);

typedef struct rw_linear_cfg {
    int epochs;    /* 100 in the paper */
    float lr;      /* 5e-4 */
    int batch;     /* 256 */
    uint64_t seed; /* classifier init and epoch shuffles */
    rw_linear_norm normalize; /* RW_LINEAR_RAW in the paper */
} rw_linear_cfg;

/* Trains Linear(F, classes) with Adam on (ftr, ltr) and returns the top-1
 * accuracy on (fte, lte) in acc; features are backend memory (n, F). A
 * label outside 0..classes-1 is an error that names the image.
 * normalize: RW_LINEAR_STANDARDIZE maps every feature to zero mean and unit
 * variance with the training split's statistics (both splits);
 * RW_LINEAR_BATCHNORM puts BatchNorm1d(F, affine=False) before the layer:
 * each training batch normalized with its own statistics, which update
 * running ones (momentum 0.1, PyTorch's), and the test split with those. */
int rw_linear_eval(kb_backend *be, const float *ftr, const uint8_t *ltr, int ntr,
                   const float *fte, const uint8_t *lte, int nte, int F, int classes,
                   const rw_linear_cfg *cfg, double *acc, char *err, size_t errlen);

/* kNN top-1 accuracy: each test feature votes over its k most cosine-similar
 * train features, weights exp(sim / T). Features need not be normalized. */
int rw_knn(kb_backend *be, const float *ftr, const uint8_t *ltr, int ntr, const float *fte,
           const uint8_t *lte, int nte, int F, int classes, int k, float T, double *acc,
           char *err, size_t errlen);

/* Convenience: features of the labeled training images (train->labeled)
 * and of the test set from the model, then the linear protocol / kNN over
 * train->classes classes. */
int rw_eval_linear_model(rw_model *m, const rw_dataset *train, const rw_dataset *test, int size,
                         const float mean[3], const float std[3], const rw_linear_cfg *cfg,
                         double *acc, char *err, size_t errlen);
int rw_eval_knn_model(rw_model *m, const rw_dataset *train, const rw_dataset *test, int size,
                      const float mean[3], const float std[3], int k, float T, double *acc,
                      char *err, size_t errlen);

#endif
