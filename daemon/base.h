/* What every part of runawayd uses: the clocks, the log, folders, and the
 * one flag that says the daemon is stopping. */
#ifndef RUNAWAY_DAEMON_BASE_H
#define RUNAWAY_DAEMON_BASE_H

#include <stddef.h>
#include <sys/types.h>

double rd_now(void);  /* wall clock, for the database */
double rd_mono(void); /* monotonic, for timeouts */
void rd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int rd_mkdir_p(const char *path, mode_t mode); /* 0, or -1 with errno */
/* $XDG_STATE_HOME/runaway, else ~/.local/state/runaway; -1 without either */
int rd_default_state_dir(char *out, size_t len);

/* The daemon's life, read by every part that must act differently once a
 * shutdown has begun (no restarts, no new work, no new connections). */
typedef struct rd_life {
    int shutting_down; /* 1 once begun; 2 once every worker has stopped */
    double shutdown_started; /* rd_mono() */
    double shutdown_timeout_s;
} rd_life;

#endif
