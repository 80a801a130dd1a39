/* The model's tensors in safetensors files: export (torchvision names for the
 * encoder), init from such a file, and full training checkpoints. */
#ifndef RUNAWAY_WORKER_WEIGHTS_H
#define RUNAWAY_WORKER_WEIGHTS_H

#include <stddef.h>

#include "worker/data.h"
#include "worker/model.h"
#include "worker/train.h"

/* What an export says about the weights it holds, in its "runaway"
 * metadata entry (JSON): the spec they were trained on, after how many
 * epochs, on which data. */
typedef struct rw_export_info {
    char *spec_yaml; /* canonical YAML (rw_spec_to_yaml); NULL: not known */
    int epoch;       /* epochs completed; -1: not known */
    char data_digest[RW_DATA_DIGEST_MAX]; /* "": not known */
} rw_export_info;

/* Reads the info a checkpoint or an exported file records (an older file
 * records less: the rest is "not known"). spec_yaml is malloc'd:
 * rw_export_info_free. 0, or -1 with the reason in err. */
int rw_export_info_read(const char *path, rw_export_info *info, char *err, size_t errlen);
void rw_export_info_free(rw_export_info *info);

/* Online encoder (torchvision names, incl. num_batches_tracked),
 * projector.*, predictor.*, teacher.* (parameters and running stats).
 * encoder_only: the online encoder's tensors alone, exactly the keys
 * torchvision's ResNet has (but fc.*). info: NULL, or what the metadata
 * says of the weights' origin. */
int rw_weights_export_ex(rw_model *m, const char *path, const rw_export_info *info,
                         int encoder_only, char *err, size_t errlen);
/* The full export without origin (tests, a model of no job). */
int rw_weights_export(rw_model *m, const char *path, char *err, size_t errlen);

/* Loads an exported file (or a checkpoint) into the model: every online
 * tensor must be present with the right shape; teacher.* is used when
 * present, else the teacher starts as a copy of the online network. */
int rw_weights_init(rw_model *m, const char *path, char *err, size_t errlen);

/* The model configuration a weights file or checkpoint was written with. */
int rw_weights_model_cfg(const char *path, rw_model_cfg *c, char *err, size_t errlen);

/* Everything a resumed job needs to continue exactly. */
typedef struct rw_train_state {
    char spec_digest[17]; /* hex of a hash of the training-relevant spec */
    /* the canonical spec, recorded in the checkpoint for export (not read
     * back on resuming: the digest decides); NULL: not recorded */
    const char *spec_yaml;
    char data_digest[RW_DATA_DIGEST_MAX]; /* the training set's; "": not recorded */
    int epoch;            /* epochs completed */
    long batch;           /* batches done in the current epoch */
    long step;            /* optimizer steps done */
    double sums[5];       /* partial-epoch sums: loss, align, uniform, collapse, steps */
    double step_sums[5];  /* the same over the log.every_steps window in progress */
    double elapsed;       /* training seconds in the current epoch so far */
    int nhist;            /* epochs of history below */
    rw_metrics *hist;     /* per-epoch metrics, malloc'd (nhist) */
    /* the log.every_steps reports so far (rank 0's), malloc'd: what a
     * daemon killed while its database took no writes never stored, a
     * resumed attempt reports again from here (as the epochs from hist) */
    long nsteps, capsteps;
    rw_metrics *steps;
} rw_train_state;

int rw_checkpoint_save(rw_model *m, const rw_train_state *ts, const char *path, char *err,
                       size_t errlen);
/* ts->hist and ts->steps are allocated; free() them. The file's spec digest must match
 * expect_digest (a checkpoint of another spec is refused by name), and its
 * data digest, where it has one, expect_data (unless NULL): a checkpoint
 * written on other data is refused too. */
int rw_checkpoint_load(rw_model *m, const char *path, const char *expect_digest,
                       const char *expect_data, rw_train_state *ts, char *err, size_t errlen);

/* A hash of the spec fields that change training (not name/log/threads). */
void rw_spec_digest(const rw_spec *s, char out[17]);

#endif
