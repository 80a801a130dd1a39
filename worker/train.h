/* Training one job: the loop around the model's step, metrics, evaluation,
 * checkpoints. Used by `runaway-worker run` (standalone) and by the daemon
 * worker, which passes hooks to stream metrics and to learn of cancellation. */
#ifndef RUNAWAY_WORKER_TRAIN_H
#define RUNAWAY_WORKER_TRAIN_H

#include <stddef.h>

#include "kernels/backend.h"
#include "proto/spec.h"
#include "worker/data.h"

typedef struct rw_metrics {
    int epoch;          /* 1-based epoch the numbers belong to */
    long step;          /* optimizer steps done so far */
    double loss;        /* the optimized objective, mean over the period */
    double align;       /* L_align(q.f), mean over the period */
    double uniform;     /* L_uniform(f), t = 2, mean over the period */
    double collapse;    /* collapse std of normalized projections, mean */
    double knn;         /* kNN top-1 accuracy in [0,1]; NaN when not computed */
    double pairs_per_s; /* image pairs per second over the period */
    double tau;         /* EMA rate of the period's last step */
    double lr;          /* the last optimizer step's learning rate; NaN: no step */
    double rank;        /* effective rank of the projections (eval.rank); NaN: not computed */
    double linear;      /* linear evaluation top-1 in [0,1] (eval.linear.every); NaN: not run */
    double w_cos_i;     /* a linear predictor's cosine with I at the epoch's end; NaN: none */
    double w_asym;      /* its antisymmetric share; NaN: none (rw_square_vs_identity) */
} rw_metrics;

/* The collapse alarm going off at an epoch's end (worker/collapse.h). */
#define RW_COLLAPSE_WHY_MAX 512
typedef struct rw_collapse_alarm {
    int epoch;  /* the epoch it went off at; 0: it did not */
    long step;
    int stop;   /* 1: the job ends there (monitor.collapse.action stop); 0: a warning */
    /* the values judged (rank_peak: the highest rank measured up to the
     * epoch); NaN: not measured */
    double rank, rank_peak, uniform, collapse;
    char why[RW_COLLAPSE_WHY_MAX]; /* the thresholds crossed, for people */
} rw_collapse_alarm;

typedef struct rw_train_hooks {
    void *ud;
    void (*on_step)(void *ud, const rw_metrics *m);  /* every log.every_steps */
    void (*on_epoch)(void *ud, const rw_metrics *m); /* every epoch */
    int (*should_stop)(void *ud);                    /* non-zero: stop soon */
    void (*on_log)(void *ud, const char *line);      /* human-readable progress */
    /* Called after every step and around each evaluation: the worker's
     * watchdog takes a long silence for a hang. */
    void (*on_progress)(void *ud);
    /* A resumed job's report from its checkpoint, made again (kind "step"
     * or "epoch"; rw_train_opts.replay); NULL: none are. */
    void (*on_replay)(void *ud, const rw_metrics *m, const char *kind);
    /* The collapse alarm went off (after the epoch's on_epoch); NULL: not told. */
    void (*on_collapse)(void *ud, const rw_collapse_alarm *a);
} rw_train_hooks;

typedef struct rw_train_result {
    rw_metrics last;       /* the final epoch */
    double align_last10;   /* mean of L_align over the last min(10, epochs) epochs */
    double uniform_last10; /* same for L_uniform */
    double linear_acc;     /* linear evaluation top-1 in [0,1]; NaN if skipped */
    int stopped;           /* 1 if should_stop ended it early */
    rw_collapse_alarm collapsed; /* .epoch > 0: the collapse alarm ended it there */
} rw_train_result;

struct kb_comm;

typedef struct rw_train_opts {
    const char *out_dir; /* checkpoint.safetensors and weights go here; NULL: none */
    int resume;          /* continue from out_dir/checkpoint.safetensors if present */
    /* On resuming, the checkpoint's epoch reports past epoch
     * replay_epochs_after and its step reports past step
     * replay_steps_after go to on_replay before training goes on: the
     * daemon holds rows up to there (one killed while its database took
     * no writes never stored the rest). 0: no replay. */
    int replay;
    int replay_epochs_after;
    long replay_steps_after;
    /* Data parallel: the ranks of one job, each with 1/world of the global
     * batch; rank 0 owns checkpoints, evaluation and the hooks' metrics
     * (computed over the global batch). NULL: a single process. */
    struct kb_comm *comm;
    int check_every;      /* compare teacher/parameter checksums every K steps (0: 100) */
    int host_data;        /* 1: views rendered on the CPU even on the CUDA backend */
    int no_graphs;        /* 1: never capture the step as CUDA graphs */
    /* Tests only: this rank nudges its teacher after this step, which the
     * checksum must catch (-1: never). */
    int test_perturb_rank;
    long test_perturb_step;
} rw_train_opts;

/* runaway's cache folder: $XDG_CACHE_HOME/runaway, else ~/.cache/runaway
 * (synthetic sets, STL-10's row-major copies; all of it may be deleted). */
void rw_cache_dir(char *out, size_t outlen);

/* Where the synthetic set of a spec lives: data.path, else a folder in the
 * cache folder named by its parameters. */
void rw_synth_dir(const rw_spec *spec, char *out, size_t outlen);

/* The EMA rate after optimizer step `step` (0-based) of `total`: ema.tau,
 * or with ema.schedule cosine BYOL's 1 - (1 - tau) (cos(pi k / K) + 1) / 2,
 * rising to 1 at the end. Training passes the steps of optim.epochs as
 * total, like rw_lr_at's. */
float rw_tau_at(const rw_spec *s, long step, long total);

/* The learning rate of optimizer step `step` (0-based) of `total`, with
 * per_epoch steps an epoch: a linear warm-up over optim.warmup_epochs
 * (step k: lr (k+1) / W), then optim.lr, or with optim.schedule cosine
 * lr (1 + cos(pi (k - W) / (total - W))) / 2. A pure function of the step,
 * so a resumed job follows the same curve. Training passes the steps of
 * optim.epochs as total: optim.max_steps cuts the curve, it does not
 * squeeze it, so a cut run is the start of the full one. */
float rw_lr_at(const rw_spec *s, long step, long per_epoch, long total);

/* Loads the train and test splits the spec names (generating the synthetic
 * set when needed; STL-10 through its cache in rw_cache_dir, with what the
 * cache did said to notice, which may be NULL). 0 or -1 with a reason. */
int rw_load_data(const rw_spec *spec, rw_data_notice notice, void *ud, rw_dataset *train,
                 rw_dataset *test, char *err, size_t errlen);

/* Trains the job the spec describes on `be`. Returns 0, or -1 with a reason
 * in err (bad data, bad init file, out of memory, loss not finite); never
 * exits. */
int rw_train(const rw_spec *spec, kb_backend *be, const rw_train_opts *opts,
             const rw_train_hooks *hooks, rw_train_result *res, char *err, size_t errlen);

#endif
