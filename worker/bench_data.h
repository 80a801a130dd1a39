/* runaway-bench --data: the training views' source, timed apart from the
 * step. */
#ifndef RUNAWAY_WORKER_BENCH_DATA_H
#define RUNAWAY_WORKER_BENCH_DATA_H

/* Prints the CPU loader's view pairs/s from a set held in memory (the
 * CIFAR and STL-10 path) and from the same images through an image folder's
 * mapped cache, at 32x32 and 96x96, on `threads` loader threads (0: every
 * core), `batches` batches of 128 each; and the rate at which the folder's
 * files decoded into the cache. 0, or 1 if a row failed. */
int bench_data_table(int threads, int batches);

#endif
