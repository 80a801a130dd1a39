/* What the parts of hostile-bench-load share: the hostile clients and the
 * program (hostile-bench.c); the probe, the pinger and the RSS samples
 * (hostile-bench-measure.c); the options, the clock and a few numbers'
 * helpers (hostile-bench-common.c). tools/hostile-bench says what is
 * measured. */
#ifndef RUNAWAY_TOOLS_HOSTILE_BENCH_H
#define RUNAWAY_TOOLS_HOSTILE_BENCH_H

#include <stdatomic.h>
#include <stddef.h>
#include <sys/un.h>

typedef struct {
    const char *state_dir, *tcp, *token_file, *cli, *out_dir, *curves;
    int daemon_pid, slowloris, pipeliners, slowloris_unix;
    double openers, seconds, settle, trickle, probe_timeout;
} hb_options;

extern hb_options hb_opt;
extern struct sockaddr_un hb_unix_addr; /* the daemon's Unix socket */
extern double hb_t0;                    /* the load's start, in hb_now()'s seconds */
extern atomic_int hb_phase;             /* 0 load, 1 settle, 2 stop */

double hb_now(void); /* monotonic seconds */
void hb_sleep(double s);
/* Appends v to a growing array (dropped when out of memory). */
void hb_push(double **a, size_t *n, size_t *cap, double v);
/* The q-quantile (nearest rank) of n values, sorted in place; NaN if none. */
double hb_quantile(double *v, size_t n, double q);
/* src's first line, printable ASCII only: for key=value output. */
void hb_printable(char *dst, size_t len, const char *src);

/* Connects the pinger (before the load, as a user's connection would be)
 * and starts the probe, pinger and sampler threads: -1 if the pinger's
 * hello is not answered. */
int hb_measure_start(void);
/* Once hb_phase is 2: waits for the threads (a probe or ping in flight
 * is waited for, up to --probe-timeout). */
void hb_measure_join(void);
/* key=value lines on stdout; probes.csv, pings.csv, rss.csv under --out. */
void hb_measure_print(void);

#endif
