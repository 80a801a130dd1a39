/* The training loop of one job: data, model, steps, metrics, kNN monitor,
 * checkpoints, and the final linear evaluation. */
#include "worker/train.h"
#include "worker/sphere.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kernels/collective.h"
#include "worker/collapse.h"
#include "worker/dist.h"
#include "worker/eval.h"
#include "worker/model.h"
#include "worker/step.h"
#include "worker/weights.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress(const rw_train_hooks *h)
{
    if (h && h->on_progress)
        h->on_progress(h->ud);
}

static void logf_(const rw_train_hooks *h, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void logf_(const rw_train_hooks *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rw_vnotice(h ? h->on_log : NULL, h ? h->ud : NULL, fmt, ap);
    va_end(ap);
}

/* The run folder's spec.yaml: the canonical spec this run trains (grid
 * variant and overrides applied), written whole (temporary file, fsync,
 * rename) so a reader never sees half of it. */
static int write_spec_yaml(const char *out_dir, const char *yaml, char *err, size_t errlen)
{
    char path[RW_PATH_MAX + 16], tmp[RW_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/spec.yaml", out_dir);
    snprintf(tmp, sizeof tmp, "%s/.spec.yaml.XXXXXX", out_dir);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t n = strlen(yaml), off = 0;
    while (off < n) {
        ssize_t w = write(fd, yaml + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    int e = off < n ? errno : 0;
    if (!e && (fchmod(fd, 0644) != 0 || fsync(fd) != 0))
        e = errno;
    if (close(fd) != 0 && !e)
        e = errno;
    if (!e && rename(tmp, path) != 0)
        e = errno;
    if (e) {
        unlink(tmp);
        snprintf(err, errlen, "%s: %s", path, strerror(e ? e : EIO));
        return -1;
    }
    return 0;
}

/* The weights after `epoch` epochs, kept beside the checkpoint (which the
 * next one overwrites): snapshots/weights-eNNNNN.safetensors. */
static int snapshot(rw_model *m, const char *out_dir, const rw_export_info *info, char *err,
                    size_t errlen)
{
    int epoch = info->epoch;
    char dir[RW_PATH_MAX + 16], path[RW_PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/snapshots", out_dir);
    if (rw_mkdir_p(dir, err, errlen) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/weights-e%05d.safetensors", dir, epoch);
    return rw_weights_export_ex(m, path, info, 0, err, errlen);
}

/* A checkpoint on the way (every_epochs, every_minutes). One that cannot
 * be written (a full disk, a quota) costs only the work since the last one
 * if the job is lost: training goes on, the last one stays whole (written
 * to a temporary file, renamed), and the next is tried in its turn. 1 if
 * written. */
static int periodic_save(rw_model *m, const rw_train_state *ts, const char *ckpt,
                         const rw_train_hooks *lh)
{
    char err[1024];
    if (rw_checkpoint_save(m, ts, ckpt, err, sizeof err) == 0)
        return 1;
    logf_(lh, "warning: checkpoint at epoch %d, step %ld not written (%s); training goes on, "
          "a resume starts from the last one written", ts->epoch, ts->step, err);
    return 0;
}

/* The last epoch's checkpoint. One that cannot be written (a full disk)
 * is tried again every FINAL_RETRY_S for FINAL_WAIT_S, as the job's whole
 * training since the last checkpoint rides on it; the wait tells the
 * watchdog it is alive, and a stop (cancel, shutdown) ends it. Then the job
 * fails with the reason. */
#define FINAL_RETRY_S 15
#define FINAL_WAIT_S 600

static int final_save(rw_model *m, const rw_train_state *ts, const char *ckpt,
                      const rw_train_hooks *h, char *err, size_t errlen)
{
    double t0 = now_s();
    for (;;) {
        if (rw_checkpoint_save(m, ts, ckpt, err, errlen) == 0) {
            if (now_s() - t0 > 1)
                logf_(h, "the final checkpoint is written, after %.0f s of waiting",
                      now_s() - t0);
            return 0;
        }
        if (now_s() - t0 >= FINAL_WAIT_S)
            return -1;
        if (now_s() - t0 < 1)
            logf_(h, "warning: the final checkpoint is not written (%s); trying again every "
                  "%d s for %d minutes: make room", err, FINAL_RETRY_S, FINAL_WAIT_S / 60);
        for (int i = 0; i < 2 * FINAL_RETRY_S; i++) {
            if (h && h->should_stop && h->should_stop(h->ud))
                return -1; /* err: the write's failure */
            if (h && h->on_progress)
                h->on_progress(h->ud);
            nanosleep(&(struct timespec){0, 500 * 1000 * 1000}, NULL);
        }
    }
}

/* The linear evaluation protocol (eval.linear) of the model as it is. */
static int linear_eval(rw_model *m, const rw_dataset *train, const rw_dataset *test, int S,
                       const rw_spec *spec, double *acc, char *err, size_t errlen)
{
    rw_linear_cfg lcfg = {
        .epochs = spec->eval.linear_epochs, .lr = spec->eval.linear_lr,
        .batch = spec->eval.linear_batch_size, .seed = spec->seed,
        .normalize = spec->eval.linear_normalize,
    };
    return rw_eval_linear_model(m, train, test, S, spec->data.mean, spec->data.std, &lcfg, acc,
                                err, errlen);
}

/* The checkpoint's reports past what the daemon stored, made again, in the
 * order training made them: by step, a step's report before its epoch's.
 * The daemon marks TensorBoard's restart at the first report an attempt
 * sends; all the steps first would put it past an epoch's point, which
 * TensorBoard would then show twice. */
static void replay(const rw_train_hooks *h, const rw_train_state *ts, int epochs_after,
                   long steps_after)
{
    long ns = 0, ne = 0, i = 0;
    int e = 0;
    while (i < ts->nsteps || e < ts->nhist) {
        const int step_next = i < ts->nsteps && (e >= ts->nhist ||
                                                 ts->steps[i].step <= ts->hist[e].step);
        if (step_next) {
            if (ts->steps[i].step > steps_after) {
                h->on_replay(h->ud, &ts->steps[i], "step");
                ns++;
            }
            i++;
        } else {
            if (ts->hist[e].epoch > epochs_after) {
                h->on_replay(h->ud, &ts->hist[e], "epoch");
                ne++;
            }
            e++;
        }
    }
    if (ns || ne)
        logf_(h, "%ld epoch and %ld step reports made again from the checkpoint (runawayd "
                 "stored epochs to %d, steps to %ld)", ne, ns, epochs_after, steps_after);
}

/* Kept for the checkpoint; out of memory, the report is only not kept. */
static void keep_step(rw_train_state *ts, const rw_metrics *m)
{
    if (ts->nsteps == ts->capsteps) {
        long cap = ts->capsteps ? 2 * ts->capsteps : 256;
        rw_metrics *p = realloc(ts->steps, (size_t)cap * sizeof *p);
        if (!p)
            return;
        ts->steps = p;
        ts->capsteps = cap;
    }
    ts->steps[ts->nsteps++] = *m;
}

/* Steps whose stats wait on the device before a read: the delay, in
 * steps, with which a non-finite loss is caught (log.every_steps reads
 * sooner). */
#define STATS_READ_EVERY 64

/* What folding a step's stats into the job's sums needs. */
typedef struct step_log {
    const rw_spec *spec;
    const rw_train_hooks *lh;
    rw_train_state *ts;
    int measure, lead, B;
    long per_epoch, total_steps; /* for tau and lr: per_epoch * epochs */
    long step_n;                 /* steps in the log window's pairs/s */
    double step_t0;
} step_log;

/* Folds step k's stats (k counts from 1) of epoch e (0-based) into the
 * epoch's sums and, where k ends a log.every_steps window, reports the
 * window. seen_at: the step at which they were read (> k when they waited
 * on the device). 0, or -1 with the reason when the loss is not finite. */
static int fold_step(step_log *g, const rw_step_stats *st, long k, int e, long seen_at,
                     char *err, size_t errlen)
{
    const rw_spec *spec = g->spec;
    rw_train_state *ts = g->ts;
    if (!isfinite(st->loss)) {
        int n = snprintf(err, errlen, "loss is not finite at step %ld (epoch %d)", k, e + 1);
        if (seen_at > k && n > 0 && (size_t)n < errlen)
            snprintf(err + n, errlen - (size_t)n,
                     "; seen at step %ld (the step statistics are read every %d steps, or "
                     "log.every_steps)",
                     seen_at, STATS_READ_EVERY);
        return -1;
    }
    ts->sums[0] += st->loss;
    ts->sums[1] += st->align;
    ts->sums[2] += st->uniform;
    ts->sums[3] += st->collapse;
    ts->sums[4] += 1;
    if (spec->log.every_steps <= 0)
        return 0;
    /* windows end at multiples of every_steps and their sums are
     * checkpointed, so a resumed job reports the rows (and numbers) of one
     * that never stopped */
    ts->step_sums[0] += st->loss;
    ts->step_sums[1] += st->align;
    ts->step_sums[2] += st->uniform;
    ts->step_sums[3] += st->collapse;
    ts->step_sums[4] += 1;
    g->step_n++;
    if (k % spec->log.every_steps != 0)
        return 0;
    double t = now_s(), n = ts->step_sums[4];
    float lr = rw_lr_at(spec, k - 1, g->per_epoch, g->total_steps);
    rw_metrics sm = {
        .epoch = g->measure ? 0 : e + 1, .step = k,
        .loss = ts->step_sums[0] / n, .align = ts->step_sums[1] / n,
        .uniform = ts->step_sums[2] / n, .collapse = ts->step_sums[3] / n,
        .knn = NAN, .rank = NAN, .linear = NAN, .w_cos_i = NAN, .w_asym = NAN,
        .pairs_per_s = g->step_n * g->B / (t - g->step_t0),
        .tau = rw_tau_at(spec, k - 1, g->total_steps), .lr = g->measure ? NAN : lr,
    };
    if (g->lh && g->lh->on_step)
        g->lh->on_step(g->lh->ud, &sm);
    if (g->lead)
        keep_step(ts, &sm);
    memset(ts->step_sums, 0, sizeof ts->step_sums);
    g->step_n = 0;
    g->step_t0 = t;
    return 0;
}

/* Reads the stats the device holds for the steps up to ts->step of epoch
 * e and folds them, oldest first. */
static int fold_unread(step_log *g, rw_stepper *sp, rw_dist *dist, int e, char *err,
                       size_t errlen)
{
    rw_step_stats st[STATS_READ_EVERY];
    long n;
    /* a data-parallel job's are the global batch's, read from its ranks */
    while ((n = dist ? rw_dist_read(dist, st, STATS_READ_EVERY, err, errlen)
                     : rw_stepper_read(sp, st, STATS_READ_EVERY)) > 0) {
        long first = g->ts->step - (dist ? 0 : rw_stepper_unread(sp)) - n + 1;
        for (long i = 0; i < n; i++)
            if (fold_step(g, &st[i], first + i, e, g->ts->step, err, errlen) != 0)
                return -1;
    }
    return n < 0 ? -1 : 0;
}

/* monitor.collapse at the end of the history's last epoch: rank 0 judges
 * (it alone measures the rank) and tells the other ranks where it stops the
 * job. 1: the job ends here, 0: it goes on, -1: the collective failed. */
static int collapse_end(const rw_spec *spec, const rw_train_state *ts, const rw_train_hooks *lh,
                        int lead, rw_dist *dist, int resumed, rw_train_result *res, char *err,
                        size_t errlen)
{
    int stop = lead && rw_collapse_epoch_end(spec, ts->hist, ts->nhist, lh, resumed,
                                             &res->collapsed);
    if (dist && spec->monitor.collapse.action == RW_ALARM_STOP &&
        rw_dist_bcast_int(dist, &stop, err, errlen) != 0)
        return -1;
    return stop;
}

int rw_train(const rw_spec *spec, kb_backend *be, const rw_train_opts *opts,
             const rw_train_hooks *hooks, rw_train_result *res, char *err, size_t errlen)
{
    int rc = -1;
    rw_dataset train = {0}, test = {0};
    rw_model *m = NULL;
    rw_stepper *sp = NULL;
    rw_dist *dist = NULL;
    rw_train_state ts = {0};
    char ckpt[RW_PATH_MAX + 32] = "";
    char *spec_yaml = NULL; /* the canonical spec: spec.yaml, checkpoints, exports */

    memset(res, 0, sizeof *res);
    res->linear_acc = NAN;
    res->last.knn = NAN;

    /* Data parallel: rank r trains on its 1/world of each global batch. */
    kb_comm *comm = opts && opts->comm && opts->comm->world > 1 ? opts->comm : NULL;
    int world = comm ? comm->world : 1, lead = !comm || comm->rank == 0;
    /* Only rank 0 speaks: logs, metrics, checkpoints, evaluation. */
    const rw_train_hooks *lh = lead ? hooks : NULL;

    if (rw_load_data(spec, lh ? lh->on_log : NULL, lh ? lh->ud : NULL, &train, &test, err,
                     errlen) != 0)
        goto done;
    int B = spec->optim.batch_size, S = spec->data.image_size;
    if (B > train.n) {
        snprintf(err, errlen, "optim.batch_size %d exceeds the %d training images", B, train.n);
        goto done;
    }
    if (B % world != 0) {
        snprintf(err, errlen, "optim.batch_size %d does not split evenly over %d ranks", B, world);
        goto done;
    }
    int Bl = B / world;

    /* Before any convolution is planned: plans choose algorithms per mode.
     * fp32 where tf32 was asked is only more exact: no need to say so. */
    kb_precision prec = be->set_precision(be, (kb_precision)spec->precision);
    if (prec != (kb_precision)spec->precision && spec->precision != RW_PREC_TF32)
        logf_(lh, "precision %s asked for; the %s backend computes in %s",
              kb_precision_name((kb_precision)spec->precision), be->name,
              kb_precision_name(prec));

    rw_model_cfg mc;
    rw_model_cfg_from_spec(spec, &mc);
    if (mc.classes > 0 && spec->data.kind == RW_DATA_IMAGEFOLDER)
        mc.classes = train.classes; /* the folder's, known once it is read */
    m = rw_model_create(be, &mc, spec->seed, err, errlen);
    if (!m)
        goto done;
    if (spec->init[0] && rw_weights_init(m, spec->init, err, errlen) != 0)
        goto done;
    if (rw_model_set_comm(m, comm, spec->sync_bn, err, errlen) != 0 ||
        rw_model_set_predictor_lr_mult(m, spec->optim.predictor_lr_mult, err, errlen) != 0)
        goto done;
    if (spec->model.predictor == RW_PRED_DIRECTPRED)
        logf_(lh, "directpred: W set from F every %d step(s) (momentum %g, eps %g); F folds on "
              "the host, so each step waits for the device", spec->model.directpred.every,
              (double)spec->model.directpred.momentum, (double)spec->model.directpred.eps);

    rw_stepper_cfg sc = {
        .m = m, .ds = &train, .batch = B, .shard_rank = comm ? comm->rank : 0,
        .shard_world = world, .size = S, .augment = spec->data.augment, .seed = spec->seed,
        .loader_threads = spec->data.loader_threads,
        .device_budget_mb = spec->data.device_budget_mb,
        .host_data = opts && opts->host_data, .no_graphs = opts && opts->no_graphs,
        /* SyncBN's all-reduces wait on the host, unless the backend queues them */
        .collective_forward = comm && spec->sync_bn &&
                              !(comm->device_memory && be->comm_allreduce),
        .notice = lh ? lh->on_log : NULL, .notice_ud = lh ? lh->ud : NULL,
    };
    memcpy(sc.mean, spec->data.mean, sizeof sc.mean);
    memcpy(sc.std, spec->data.std, sizeof sc.std);
    sp = rw_stepper_create(&sc, err, errlen);
    if (!sp)
        goto done;
    /* optim.epochs 0 trains nothing: one pass over the training set, no
     * update, measures the initialization (the paper's random baseline),
     * reported as epoch 0; the evaluations follow as for any job. */
    const int measure = spec->optim.epochs == 0;
    const int epochs = measure ? 1 : spec->optim.epochs;
    ts.hist = calloc((size_t)epochs, sizeof *ts.hist);
    if (!ts.hist) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    rw_spec_digest(spec, ts.spec_digest);
    rw_dataset_digest(&train, spec->threads, ts.data_digest, sizeof ts.data_digest);

    if (lead && opts && opts->out_dir) {
        if (rw_mkdir_p(opts->out_dir, err, errlen) != 0)
            goto done;
        snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", opts->out_dir);
        struct stat st;
        if (opts->resume && stat(ckpt, &st) == 0) {
            rw_train_state loaded;
            if (rw_checkpoint_load(m, ckpt, ts.spec_digest, ts.data_digest, &loaded, err,
                                   errlen) != 0)
                goto done;
            if (loaded.nhist > epochs) {
                snprintf(err, errlen, "%s: holds %d epochs, the spec asks for %d", ckpt,
                         loaded.nhist, spec->optim.epochs);
                free(loaded.hist);
                free(loaded.steps);
                goto done;
            }
            memcpy(ts.hist, loaded.hist, (size_t)loaded.nhist * sizeof *ts.hist);
            free(loaded.hist);
            loaded.hist = ts.hist;
            /* the data's, as checked (or now recorded, for an older file) */
            memcpy(loaded.data_digest, ts.data_digest, sizeof ts.data_digest);
            ts = loaded;
            logf_(lh, "resumed from %s at epoch %d, batch %ld, step %ld", ckpt, ts.epoch,
                  ts.batch, ts.step);
            if (lh && lh->on_replay && opts->replay)
                replay(lh, &ts, opts->replay_epochs_after, opts->replay_steps_after);
        }
        spec_yaml = malloc(RW_SPEC_YAML_MAX);
        if (!spec_yaml || rw_spec_to_yaml(spec, spec_yaml, RW_SPEC_YAML_MAX) < 0) {
            snprintf(err, errlen, "%s: the spec cannot be written as YAML (out of memory?)",
                     opts->out_dir);
            goto done;
        }
        if (write_spec_yaml(opts->out_dir, spec_yaml, err, errlen) != 0)
            goto done;
        ts.spec_yaml = spec_yaml;
    }

    if (comm) {
        rw_dist_cfg dc = {.overlap = spec->dist.overlap, .bucket_mb = spec->dist.bucket_mb,
                          .grad_bf16 = spec->dist.grad_dtype == RW_GRAD_BF16};
        dist = rw_dist_create(comm, be, m, Bl, spec->model.proj_out, &dc, err, errlen);
        if (!dist || rw_dist_sync_state(dist, &ts, err, errlen) != 0)
            goto done;
    }
    int check_every = opts && opts->check_every > 0 ? opts->check_every : 100;

    long per_epoch = rw_stepper_batches(sp);
    long total = per_epoch * epochs;
    if (spec->optim.max_steps > 0 && spec->optim.max_steps < total)
        total = spec->optim.max_steps;
    char unl[48] = "";
    if (train.labeled < train.n)
        snprintf(unl, sizeof unl, " (%d unlabeled)", train.n - train.labeled);
    logf_(lh, "%s: %zu parameters, %d train%s / %d test images of %d classes, %ld steps of "
              "batch %d at %dx%d on %s%s (%s)",
          spec->name, rw_model_nparams(m), train.n, unl, test.n, train.classes, total, B, S, S,
          be->name,
          comm ? " (data parallel)" : "", rw_stepper_describe(sp));

    const int snap = lead && opts && opts->out_dir && spec->checkpoint.snapshot_every > 0;
    rw_export_info origin = {.spec_yaml = spec_yaml, .epoch = 0};
    memcpy(origin.data_digest, ts.data_digest, sizeof origin.data_digest);
    if (snap && !measure && ts.epoch == 0 && ts.batch == 0 &&
        snapshot(m, opts->out_dir, &origin, err, errlen) != 0)
        goto done;

    /* pairs/s of a step window: the steps since step_t0 in this attempt */
    step_log sl = {
        .spec = spec, .lh = lh, .ts = &ts, .measure = measure, .lead = lead, .B = B,
        .per_epoch = per_epoch, .total_steps = per_epoch * epochs, .step_t0 = now_s(),
    };
    if (measure)
        logf_(lh, "optim.epochs 0: measuring the initialization over one pass, no training");
    /* monitor.collapse: a resumed job that the alarm stopped trains no
     * further (ts.epoch, unlike the history, every rank knows) */
    int collapsed = 0;
    if (!measure && ts.epoch > 0 && ts.batch == 0 &&
        (collapsed = collapse_end(spec, &ts, lh, lead, dist, 1, res, err, errlen)) < 0)
        goto done;
    /* checkpoint.every_minutes: the time of the last checkpoint (or start) */
    const double ckpt_every_s = ckpt[0] && !measure ? 60.0 * spec->checkpoint.every_minutes : 0;
    double last_ckpt = now_s();
    for (int e = ts.epoch; e < epochs && ts.step < total && !collapsed; e++) {
        rw_stepper_seek(sp, e, ts.batch);
        double t0 = now_s();
        while (ts.step < total) {
            float tau = rw_tau_at(spec, ts.step, per_epoch * epochs);
            float lr = rw_lr_at(spec, ts.step, per_epoch, per_epoch * epochs);
            int stop = hooks && hooks->should_stop && hooks->should_stop(hooks->ud);
            int r;
            rw_step_stats st;
            /* a timed checkpoint; the ranks of a data-parallel job agree
             * on it (rank 0 alone keeps the clock), as all of them fold the
             * step statistics first, which takes collectives */
            int ckpt_due = !stop && ckpt_every_s > 0 && now_s() - last_ckpt >= ckpt_every_s;
            if (dist && rw_dist_queued(dist)) {
                /* the gradient's all-reduce inside the step's graph, bucket
                 * by bucket during the backward; the host then waits for it */
                rw_dist_step_begin(dist, stop, ckpt_due);
                r = rw_stepper_step_between(sp, !measure, lr, spec->optim.weight_decay, tau,
                                            rw_dist_queue_grads, dist);
                if (r == 0 && rw_dist_grads(dist, &stop, &ckpt_due, err, errlen) != 0)
                    goto done;
                if (r == 0)
                    rw_dist_keep(dist);
            } else if (dist) {
                /* the gradient is all-reduced between backward and update
                 * (on CPU ranks, bucket by bucket during the backward) */
                rw_dist_step_begin(dist, stop, ckpt_due);
                r = rw_stepper_forward_backward(sp, &st);
                if (r == 0 && rw_dist_grads(dist, &stop, &ckpt_due, err, errlen) != 0)
                    goto done;
                if (r == 0)
                    rw_dist_keep(dist);
                if (r == 0 && !measure)
                    r = rw_stepper_update(sp, lr, spec->optim.weight_decay, tau);
            } else {
                /* the stats wait on the device until a read below */
                r = rw_stepper_step(sp, !measure, lr, spec->optim.weight_decay, tau);
            }
            if (r == 1)
                break;
            if (r != 0) {
                snprintf(err, errlen, "step %ld: %s", ts.step + 1, rw_model_error(m));
                goto done;
            }
            ts.step++;
            ts.batch++;
            progress(hooks);
            if (opts && comm && opts->test_perturb_rank == comm->rank &&
                opts->test_perturb_step == ts.step) {
                float v;
                be->download(be, &v, rw_model_teacher(m), sizeof v);
                v += 1e-3f;
                be->upload(be, rw_model_teacher(m), &v, sizeof v);
                rw_model_params_written(m);
            }
            if (dist && ts.step % check_every == 0 && rw_dist_check(dist, ts.step, err, errlen) != 0)
                goto done;
            const int window_end = spec->log.every_steps > 0 && ts.step % spec->log.every_steps == 0;
            if (!dist) /* alone, the clock after the step decides */
                ckpt_due = !stop && ckpt_every_s > 0 && now_s() - last_ckpt >= ckpt_every_s;
            ckpt_due = ckpt_due && !stop;
            /* a data-parallel step is reported once its ranks are known
             * to agree (rw_dist_check above) */
            const int full = dist ? rw_dist_full(dist) : rw_stepper_unread(sp) >= STATS_READ_EVERY;
            if ((window_end || ckpt_due || stop || full) &&
                fold_unread(&sl, sp, dist, e, err, errlen) != 0)
                goto done;
            if (ckpt_due) {
                /* within the epoch: the position, partial sums and time so far */
                ts.elapsed += now_s() - t0;
                if (ckpt[0] && periodic_save(m, &ts, ckpt, lh))
                    logf_(lh, "checkpoint at epoch %d, batch %ld, step %ld (every %g min)", e,
                          ts.batch, ts.step, spec->checkpoint.every_minutes);
                t0 = last_ckpt = now_s(); /* the save's own time is no training */
            }
            if (stop) {
                ts.elapsed += now_s() - t0;
                res->stopped = 1;
                /* a checkpoint that cannot be written now (a full disk) costs
                 * the work since the last one, as a worker lost would: the
                 * job is stopped, not failed, and resumes from that one */
                if (!ckpt[0])
                    logf_(lh, "stopped at step %ld; checkpoint (none)", ts.step);
                else if (rw_checkpoint_save(m, &ts, ckpt, err, errlen) == 0)
                    logf_(lh, "stopped at step %ld; checkpoint %s", ts.step, ckpt);
                else
                    logf_(lh, "warning: stopped at step %ld without its checkpoint (%s); a "
                          "resume starts from the last one written", ts.step, err);
                rc = 0;
                goto done;
            }
        }
        if (fold_unread(&sl, sp, dist, e, err, errlen) != 0)
            goto done;
        ts.elapsed += now_s() - t0;
        double n = ts.sums[4] > 0 ? ts.sums[4] : 1;
        rw_metrics em = {
            .epoch = measure ? 0 : e + 1, .step = ts.step, .loss = ts.sums[0] / n,
            .align = ts.sums[1] / n,
            .uniform = ts.sums[2] / n, .collapse = ts.sums[3] / n, .knn = NAN, .rank = NAN,
            .linear = NAN, .w_cos_i = NAN, .w_asym = NAN,
            .pairs_per_s = ts.elapsed > 0 ? ts.sums[4] * B / ts.elapsed : 0,
            .tau = rw_tau_at(spec, ts.step > 0 ? ts.step - 1 : 0, per_epoch * epochs),
            .lr = measure || ts.step == 0 ? NAN
                                          : rw_lr_at(spec, ts.step - 1, per_epoch, per_epoch * epochs),
        };
        int last_epoch = e + 1 == epochs || ts.step >= total;
        if (rw_model_predictor_vs_identity(m, &em.w_cos_i, &em.w_asym) != 0) {
            snprintf(err, errlen, "predictor statistics: out of memory");
            goto done;
        }
        double knn_s = 0;
        if (lead && spec->eval.knn_every > 0 &&
            ((e + 1) % spec->eval.knn_every == 0 || last_epoch)) {
            double acc, tk = now_s();
            progress(hooks);
            if (rw_eval_knn_model(m, &train, &test, S, spec->data.mean, spec->data.std,
                                  spec->eval.knn_k, spec->eval.knn_temperature, &acc, err,
                                  errlen) != 0)
                goto done;
            em.knn = acc;
            knn_s = now_s() - tk;
            progress(hooks);
        }
        if (lead && spec->eval.rank_every > 0 &&
            ((e + 1) % spec->eval.rank_every == 0 || last_epoch)) {
            progress(hooks);
            if (rw_rank_model(m, &train, spec, spec->eval.rank_samples, &em.rank, err, errlen) !=
                0)
                goto done;
            progress(hooks);
        }
        /* The linear evaluation during training (its curve); at the last
         * epoch it is the final one, run once. */
        if (lead && spec->eval.linear_every > 0 && spec->eval.linear_epochs > 0 &&
            ((e + 1) % spec->eval.linear_every == 0 || last_epoch)) {
            double tl = now_s();
            progress(hooks);
            if (linear_eval(m, &train, &test, S, spec, &em.linear, err, errlen) != 0)
                goto done;
            progress(hooks);
            logf_(lh, "linear evaluation at epoch %d: top-1 %.2f%% (%.1f s)", em.epoch,
                  100 * em.linear, now_s() - tl);
            if (last_epoch)
                res->linear_acc = em.linear;
        }
        ts.hist[e] = em;
        ts.nhist = e + 1;
        ts.epoch = e + 1;
        ts.batch = 0;
        memset(ts.sums, 0, sizeof ts.sums);
        ts.elapsed = 0;
        char knn[32] = "", rank[32] = "", wi[48] = "";
        if (!isnan(em.knn))
            snprintf(knn, sizeof knn, "  knn %5.1f%% (%.1fs)", 100 * em.knn, knn_s);
        if (!isnan(em.rank))
            snprintf(rank, sizeof rank, "  rank %.1f", em.rank);
        if (!isnan(em.w_cos_i))
            snprintf(wi, sizeof wi, "  cos(W,I) %+.3f", em.w_cos_i);
        logf_(lh, "epoch %3d/%d  step %6ld  loss %+.5f  align %.3e  uniform %+.3f  collapse %.3f%s%s%s  pairs/s %.1f",
              em.epoch, spec->optim.epochs, em.step, em.loss, em.align, em.uniform, em.collapse,
              rank, wi, knn, em.pairs_per_s);
        if (lh && lh->on_epoch)
            lh->on_epoch(lh->ud, &em);
        if (!measure && (collapsed = collapse_end(spec, &ts, lh, lead, dist, 0, res, err,
                                                  errlen)) < 0)
            goto done;
        last_epoch |= collapsed; /* its checkpoint and snapshot are the job's last */
        /* the last epoch's checkpoint is the job's record (resume into the
         * evaluation, export): a job does not end without it */
        if (ckpt[0] && last_epoch) {
            if (final_save(m, &ts, ckpt, hooks, err, errlen) != 0)
                goto done;
            last_ckpt = now_s();
        } else if (ckpt[0] && spec->checkpoint.every_epochs > 0 &&
                   (e + 1) % spec->checkpoint.every_epochs == 0) {
            periodic_save(m, &ts, ckpt, lh);
            last_ckpt = now_s();
        }
        if (snap && !measure &&
            ((e + 1) % spec->checkpoint.snapshot_every == 0 || last_epoch)) {
            char serr[1024];
            origin.epoch = e + 1;
            if (snapshot(m, opts->out_dir, &origin, serr, sizeof serr) != 0)
                logf_(lh, "warning: snapshot of epoch %d not kept (%s); training goes on", e + 1,
                      serr);
        }
    }

    /* The graphs, the device copy of the set and the loader are done with. */
    rw_stepper_free(sp);
    sp = NULL;
    if (ts.nhist > 0) {
        res->last = ts.hist[ts.nhist - 1];
        int k0 = ts.nhist > 10 ? ts.nhist - 10 : 0;
        for (int e = k0; e < ts.nhist; e++) {
            res->align_last10 += ts.hist[e].align / (ts.nhist - k0);
            res->uniform_last10 += ts.hist[e].uniform / (ts.nhist - k0);
        }
    }
    if (lead && opts && opts->out_dir) {
        char wpath[RW_PATH_MAX + 32];
        snprintf(wpath, sizeof wpath, "%s/weights.safetensors", opts->out_dir);
        origin.epoch = ts.nhist;
        if (rw_weights_export_ex(m, wpath, &origin, 0, err, errlen) != 0)
            goto done;
    }
    if (lead && spec->eval.linear_epochs > 0 && isnan(res->linear_acc)) {
        double t0 = now_s();
        progress(hooks);
        if (linear_eval(m, &train, &test, S, spec, &res->linear_acc, err, errlen) != 0)
            goto done;
        logf_(lh, "linear evaluation: top-1 %.2f%% (%d epochs, %.1f s)", 100 * res->linear_acc,
              spec->eval.linear_epochs, now_s() - t0);
    }
    rc = 0;
done:
    free(spec_yaml);
    rw_dist_free(dist);
    free(ts.hist);
    free(ts.steps);
    rw_stepper_free(sp);
    rw_model_free(m);
    rw_dataset_free(&train);
    rw_dataset_free(&test);
    return rc;
}
