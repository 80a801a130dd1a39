/* Where a job's data and its schedules come from (worker/train.h): the
 * cache folder, the synthetic set's folder, the splits a spec names, and
 * the learning rate and EMA rate at each step. */
#include "worker/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rw_cache_dir(char *out, size_t outlen)
{
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(out, outlen, "%s/runaway", xdg);
    else if (home && *home)
        snprintf(out, outlen, "%s/.cache/runaway", home);
    else
        snprintf(out, outlen, "/tmp/runaway-cache");
}

void rw_synth_dir(const rw_spec *spec, char *out, size_t outlen)
{
    if (spec->data.path[0]) {
        snprintf(out, outlen, "%s", spec->data.path);
        return;
    }
    char base[RW_PATH_MAX];
    rw_cache_dir(base, sizeof base);
    snprintf(out, outlen, "%s/synthetic-%s%d-%d-%llu", base,
             spec->data.synthetic_style == RW_SYNTH_PLAIN ? "plain-" : "",
             spec->data.synthetic_train, spec->data.synthetic_test,
             (unsigned long long)spec->data.synthetic_seed);
}

int rw_load_data(const rw_spec *spec, rw_data_notice notice, void *ud, rw_dataset *train,
                 rw_dataset *test, char *err, size_t errlen)
{
    char dir[RW_PATH_MAX + 64], cache[RW_PATH_MAX];
    rw_cache_dir(cache, sizeof cache);
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    if (spec->data.kind == RW_DATA_SYNTHETIC) {
        rw_synth_dir(spec, dir, sizeof dir);
        if (rw_synth_ensure_style(dir, spec->data.synthetic_train, spec->data.synthetic_test,
                                  spec->data.synthetic_seed, spec->data.synthetic_style, err,
                                  errlen) != 0)
            return -1;
    } else {
        snprintf(dir, sizeof dir, "%s", spec->data.path);
    }
    for (int split = 1; split >= 0; split--) {
        rw_dataset *ds = split ? train : test;
        int rc;
        switch (spec->data.kind) {
        case RW_DATA_CIFAR100:
            rc = rw_cifar100_load(dir, split, spec->data.labels == RW_LABELS_COARSE, ds, err,
                                  errlen);
            break;
        case RW_DATA_STL10:
            rc = rw_stl10_load_cached(dir, split, spec->data.unlabeled, cache, notice, ud, ds,
                                      err, errlen);
            break;
        case RW_DATA_IMAGEFOLDER: {
            rw_imagefolder_opts o = {
                .side = spec->data.cache_size, .unlabeled = spec->data.unlabeled,
                .skip_bad = spec->data.skip_bad, .threads = spec->threads, .cache_dir = cache,
                .notice = notice, .ud = ud};
            rc = rw_imagefolder_load(dir, split, &o, ds, err, errlen);
            if (rc == 0 && split && ds->labeled < ds->n &&
                spec->loss.kind == RW_LOSS_SUPERVISED) {
                snprintf(err, errlen, "%s/unlabeled: loss.kind supervised trains on labels; "
                         "its %d images have none: set data.unlabeled: false", dir,
                         ds->n - ds->labeled);
                rc = -1;
            }
            break;
        }
        default:
            rc = rw_cifar_load(dir, split, ds, err, errlen);
            break;
        }
        if (rc != 0) {
            rw_dataset_free(train);
            return -1;
        }
    }
    return 0;
}

float rw_tau_at(const rw_spec *s, long step, long total)
{
    if (s->ema.schedule == RW_TAU_CONSTANT || total <= 0)
        return s->ema.tau;
    double c = cos(M_PI * (double)step / (double)total);
    return (float)(1.0 - (1.0 - s->ema.tau) * (c + 1.0) / 2.0);
}

float rw_lr_at(const rw_spec *s, long step, long per_epoch, long total)
{
    long warm = (long)s->optim.warmup_epochs * per_epoch;
    if (warm > total)
        warm = total;
    if (step < warm)
        return (float)((double)s->optim.lr * (double)(step + 1) / (double)warm);
    if (s->optim.schedule == RW_LR_CONSTANT || total <= warm)
        return s->optim.lr;
    double c = cos(M_PI * (double)(step - warm) / (double)(total - warm));
    return (float)((double)s->optim.lr * (c + 1.0) / 2.0);
}
