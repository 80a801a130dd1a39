/* TensorBoard event files of every job's metrics, written as they arrive
 * (tboard.c says how). */
#ifndef RUNAWAY_DAEMON_TBOARD_H
#define RUNAWAY_DAEMON_TBOARD_H

#include <jansson.h>
#include <limits.h>
#include <stdint.h>

#include "daemon/db.h"
#include "daemon/runs.h"

typedef struct rd_tboard {
    char dir[PATH_MAX]; /* "" = none (--tensorboard none) */
    rd_store *store;
} rd_tboard;

/* A metric report ("step", "epoch", or "final": the result) as TensorBoard
 * scalars in the attempt's event file */
void rd_tb_metric(rd_tboard *tb, rd_run *run, const char *kind, json_t *m);
/* The job's TensorBoard run folder; -1 when there is none (--tensorboard none) */
int rd_tb_run_dir(rd_tboard *tb, int64_t job, char *out, size_t len);

#endif
