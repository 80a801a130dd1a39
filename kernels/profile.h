/* Where a step's time goes, op by op.
 *
 * kb_profile_create wraps a backend that has timing stamps (the CPU and
 * CUDA backends both do) in one with the same ops, each of which, while
 * profiling is on, records a stamp before and after calling the real op.
 * Nothing waits until kb_profile_step_end, which syncs once and adds each
 * op's time (stamp to stamp: on a GPU the device time of its kernels, on
 * the CPU the wall time of the call), its count and its work (FLOPs for
 * convolutions and linear layers; the fewest bytes it must move through
 * memory for the rest) to per-kind totals. The time between one op's end
 * and the next op's start is counted too: on a GPU running op by op it is
 * the device idling on the host's launches.
 *
 * The wrapped backend has no capture ops, so a step through it runs op by
 * op (what graphs would save shows as the gaps). It owns the backend it
 * wraps: kb_destroy frees both. */
#ifndef RUNAWAY_KERNELS_PROFILE_H
#define RUNAWAY_KERNELS_PROFILE_H

#include <stddef.h>
#include <stdio.h>

#include "kernels/backend.h"

/* NULL (with the reason in err) when `inner` has no stamps or memory ran
 * out; `inner` is then still the caller's. Profiling starts off. */
kb_backend *kb_profile_create(kb_backend *inner, char *err, size_t errlen);

/* The wrapped backend (for calls outside the op table). */
kb_backend *kb_profile_inner(kb_backend *p);

/* Turns recording on or off; off, each op costs one extra call. */
void kb_profile_enable(kb_backend *p, int on);

/* Ends a profiled step: waits for the queued work, folds the stamps taken
 * since the last call into the totals and counts one step. A call with no
 * stamps taken counts nothing. */
void kb_profile_step_end(kb_backend *p);

/* Totals over the profiled steps, per kind of op, in a fixed order. */
typedef struct kb_profile_row {
    const char *op;   /* e.g. "conv forward" */
    long calls;       /* over all steps */
    double ms;        /* over all steps */
    double flop;      /* over all steps; 0 where not counted */
    double bytes;     /* fewest bytes moved, over all steps */
} kb_profile_row;

typedef struct kb_profile_totals {
    long steps;
    double span_ms; /* first stamp to last, summed over steps */
    double gap_ms;  /* between one op's end and the next op's start */
    double ops_ms;  /* the sum of the rows' ms */
    int nrows;
    kb_profile_row rows[40];
} kb_profile_totals;

void kb_profile_totals_get(kb_backend *p, kb_profile_totals *t);

/* Prints the totals per step as a table, slowest op first: calls, ms, share
 * of the span, GFLOP/s or GB/s. */
void kb_profile_print(kb_backend *p, FILE *f);

#endif
