/* runaway-bench --devices N: data parallelism's cost on CPU ranks. */
#ifndef RUNAWAY_WORKER_BENCH_DIST_H
#define RUNAWAY_WORKER_BENCH_DIST_H

/* Prints, for the quickstart's model and a ResNet-18, the step of one rank
 * alone and of `world` ranks (processes on this machine, Gloo over
 * loopback, `threads` threads each): compute, step, communication and
 * exposed (not overlapped) communication time, with and without the
 * overlap, and the weak-scaling efficiency; `only` > 0: that row alone.
 * 0, 1 if a row failed, 2 for a bad world or row. */
int bench_devices(int world, int steps, int threads, int only);

#endif
