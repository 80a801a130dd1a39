/* rm: ended jobs out of the database and off the disk (remove.c says how). */
#ifndef RUNAWAY_DAEMON_REMOVE_H
#define RUNAWAY_DAEMON_REMOVE_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/jobs.h"
#include "daemon/net.h"
#include "daemon/tboard.h"

/* The jobs of a job or grid target ('j' or 'g'), if every one has ended
 * and no worker still stops one, out of the database (one transaction),
 * then off the disk (run folders, TensorBoard runs) on the thread pool;
 * `asker` gets the `ok` reply to request `req_id` once the files are gone.
 * -1 with *code and err when nothing was removed (RW_E_STATE: a job not
 * ended; RW_E_INTERNAL: the database). */
int rd_remove(rd_jobs *J, rd_tboard *tb, rd_conn *asker, long long req_id, char kind,
              int64_t target, const char **code, char *err, size_t errlen);

#endif
