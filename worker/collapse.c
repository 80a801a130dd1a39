/* The collapse alarm's verdict (collapse.h). */
#include "worker/collapse.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Which thresholds epoch m crosses, judged with `rank` (its own or the last
 * measured before it) and `peak`: a bit each, in the order why lists them. */
enum { T_UNIFORM = 1, T_STD = 2, T_RANK = 4, T_SHARE = 8 };

static int crossed(const rw_spec *s, const rw_metrics *m, double rank, double peak)
{
    const float ua = s->monitor.collapse.uniform_above, sb = s->monitor.collapse.std_below;
    const float rb = s->monitor.collapse.rank_below, rs = s->monitor.collapse.rank_share_below;
    int t = 0;
    /* a metric that is not finite crosses nothing: a loss that is not
     * finite fails the job on its own */
    if (ua < 0 && isfinite(m->uniform) && m->uniform > ua)
        t |= T_UNIFORM;
    if (sb > 0 && isfinite(m->collapse) && m->collapse < sb)
        t |= T_STD;
    if (rb > 0 && isfinite(rank) && rank < rb)
        t |= T_RANK;
    if (rs > 0 && isfinite(rank) && isfinite(peak) && rank < rs * peak)
        t |= T_SHARE;
    return t;
}

void rw_collapse_judge(const rw_spec *s, const rw_metrics *hist, int n, rw_collapse_verdict *v)
{
    memset(v, 0, sizeof *v);
    v->rank = v->rank_peak = NAN;
    const int action = s->monitor.collapse.action;
    if (n < 1 || action == RW_ALARM_OFF)
        return;
    int t = 0;
    /* forward, carrying the last measured rank: each epoch is judged on
     * what was known at its end */
    for (int i = 0; i < n; i++) {
        if (isfinite(hist[i].rank)) {
            v->rank = hist[i].rank;
            v->rank_peak = isfinite(v->rank_peak) && v->rank_peak > v->rank ? v->rank_peak
                                                                            : v->rank;
        }
        t = crossed(s, &hist[i], v->rank, v->rank_peak);
        v->run = t ? v->run + 1 : 0;
    }
    v->trips = t != 0;
    const int patience = s->monitor.collapse.patience > 0 ? s->monitor.collapse.patience : 1;
    v->stop = action == RW_ALARM_STOP && v->run >= patience;
    /* a warning once per run of tripping epochs */
    v->fire = v->stop || (action == RW_ALARM_WARN && v->run == patience);
    if (!t)
        return;
    const rw_metrics *m = &hist[n - 1];
    size_t o = 0;
    char *w = v->why;
    const size_t len = sizeof v->why;
#define PUT(...)                                                                                  \
    do {                                                                                          \
        int k_ = snprintf(w + o, len - o, __VA_ARGS__);                                           \
        if (k_ > 0)                                                                               \
            o = o + (size_t)k_ < len ? o + (size_t)k_ : len - 1;                                  \
    } while (0)
    const char *sep = "";
    if (t & T_UNIFORM) {
        PUT("L_uniform(f) %.3f > %g", m->uniform, s->monitor.collapse.uniform_above);
        sep = ", ";
    }
    if (t & T_STD) {
        PUT("%scollapse std %.3f < %g", sep, m->collapse, s->monitor.collapse.std_below);
        sep = ", ";
    }
    /* the epoch's own rank, or the last measured (eval.rank.every) */
    const char *when = isfinite(m->rank) ? "" : " (last measured)";
    if (t & T_RANK) {
        PUT("%srank %.2f%s < %g", sep, v->rank, when, s->monitor.collapse.rank_below);
        sep = ", ";
    }
    if (t & T_SHARE) {
        PUT("%srank %.2f%s < %g x %.2f (its peak)", sep, v->rank, when,
            s->monitor.collapse.rank_share_below, v->rank_peak);
    }
    PUT(" at epoch %d, %d epoch%s in a row", m->epoch, v->run, v->run == 1 ? "" : "s");
#undef PUT
}

int rw_collapse_epoch_end(const rw_spec *s, const rw_metrics *hist, int n,
                          const rw_train_hooks *hooks, int resumed, rw_collapse_alarm *a)
{
    rw_collapse_verdict v;
    rw_collapse_judge(s, hist, n, &v);
    if (!v.fire || (resumed && !v.stop))
        return 0;
    const rw_metrics *m = &hist[n - 1];
    rw_collapse_alarm al = {.epoch = m->epoch, .step = m->step, .stop = v.stop, .rank = v.rank,
                            .rank_peak = v.rank_peak, .uniform = m->uniform,
                            .collapse = m->collapse};
    snprintf(al.why, sizeof al.why, "%s", v.why);
    /* the daemon's worker reports it, and the daemon puts it in the job's
     * log; standalone, it is a line of the log */
    if (hooks && hooks->on_log && !hooks->on_collapse) {
        char line[RW_COLLAPSE_WHY_MAX + 160];
        snprintf(line, sizeof line, "collapse alarm: %s; %s", v.why,
                 v.stop ? "monitor.collapse.action stop: the job ends here, collapsed"
                        : "training goes on (monitor.collapse.action warn)");
        hooks->on_log(hooks->ud, line);
    }
    if (hooks && hooks->on_collapse)
        hooks->on_collapse(hooks->ud, &al);
    if (v.stop) /* the job's result: where and why it ended */
        *a = al;
    return v.stop;
}
