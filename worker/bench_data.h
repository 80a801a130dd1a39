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

/* Decodes the train/ split of the image folder dir (data.kind imagefolder)
 * to size x size into memory, no cache written, on `threads` threads (0:
 * every core), and prints the images per second of wall time and per
 * second of CPU time (a core's rate, on a busy machine too). 0, or 1. */
int bench_decode(const char *dir, int size, int threads);

#endif
