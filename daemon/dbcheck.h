/* The store checked and backed up: PRAGMA quick_check before anything
 * writes at start, PRAGMA integrity_check on demand, and a backup by
 * SQLite's online backup API (dbcheck.c says how). */
#ifndef RUNAWAY_DAEMON_DBCHECK_H
#define RUNAWAY_DAEMON_DBCHECK_H

#include <stddef.h>
#include <uv.h>

#include "daemon/db.h"

/* PRAGMA quick_check of the database at s->path before anything opens it
 * for writing (a lock is waited for, as at start). -1: it is damaged; msg
 * says what SQLite finds and how to recover, and the file is as it was. */
int rd_db_check_start(rd_store *s, char *msg, size_t len);
/* `runawayd --check`: PRAGMA integrity_check of the database at db and of
 * its backup, read-only (a running daemon goes on), printed; 0 if both
 * pass (or there is no backup yet), else 1. */
int rd_db_check_full(const char *db);
/* The backup, PATH.backup, on the thread pool: now (start), then from the
 * tick every every_s seconds if the database changed (0: never). */
void rd_db_backup_start(rd_store *s, uv_loop_t *loop, double every_s);
void rd_db_backup_tick(rd_store *s, int stopping);

#endif
