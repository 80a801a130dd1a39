/* The collapse alarm (spec monitor.collapse): at each epoch's end, whether
 * the representation is collapsing, judged from the epoch metrics the job
 * already measures.
 *
 * An epoch trips the alarm when any threshold set (non-zero) is crossed:
 * L_uniform(f) above uniform_above, the collapse std below std_below, the
 * effective rank below rank_below or below rank_share_below times the
 * highest rank the job has measured so far (its peak). The rank is
 * measured every eval.rank.every epochs: an epoch without it is judged on
 * the last rank measured. The alarm goes off at the epoch that ends
 * `patience` tripping epochs in a row; `warn` says so once for that run of
 * epochs (again only after an epoch that does not trip), `stop` ends the
 * job there.
 *
 * Why the peak and not the rank before the first step: measured then (in
 * eval mode, as every epoch's is), the rank depends on BatchNorm running
 * statistics that are still their initial ones (mean 0, variance 1): 17-18
 * for the quickstart's network, whose random baseline (a pass that sets
 * them) measures 46-47, and 30 for ResNet-18 at 64x64, 72 one step later.
 * A share of that says little; the peak is measured as the rank it is
 * compared with.
 *
 * A pure function of the epoch history, which the checkpoint holds, so a
 * resumed job judges its epochs as one that never stopped would. */
#ifndef RUNAWAY_WORKER_COLLAPSE_H
#define RUNAWAY_WORKER_COLLAPSE_H

#include "proto/spec.h"
#include "worker/train.h"

typedef struct rw_collapse_verdict {
    int trips;        /* the last epoch crossed a threshold */
    int run;          /* tripping epochs in a row, ending at the last */
    int fire;         /* the alarm goes off at the last epoch */
    int stop;         /* ... and ends the job (action stop) */
    double rank;      /* the rank judged: the last measured up to the epoch; NaN: none */
    double rank_peak; /* the highest rank measured up to the epoch; NaN: none */
    /* the thresholds crossed and the values, for people:
     * "L_uniform(f) -0.058 > -0.3, collapse std 0.113 < 0.25 at epoch 4, 2
     * epochs in a row" */
    char why[RW_COLLAPSE_WHY_MAX];
} rw_collapse_verdict;

/* Judges the last of the n epochs of hist (n >= 1). Never fires with
 * action off. */
void rw_collapse_judge(const rw_spec *s, const rw_metrics *hist, int n, rw_collapse_verdict *v);

/* The training loop's part at the end of epoch n (rank 0's): judges it,
 * and where the alarm goes off says so in the log and to hooks->on_collapse;
 * where it stops the job, fills *a. resumed: the epoch was judged before the job stopped (a
 * checkpoint's last), so a warning is not given twice; a stop is, since
 * its report may not have reached the daemon. 1: the job ends here. */
int rw_collapse_epoch_end(const rw_spec *s, const rw_metrics *hist, int n,
                          const rw_train_hooks *hooks, int resumed, rw_collapse_alarm *a);

#endif
