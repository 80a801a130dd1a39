/* How a worker reaches runawayd, and starts afresh (worker/connect.c). */
#ifndef RUNAWAY_WORKER_CONNECT_H
#define RUNAWAY_WORKER_CONNECT_H

#include <stddef.h>

/* A connected socket to the daemon at the Unix socket `sock`, else at TCP
 * `tcp` (HOST:PORT); failed attempts are made again, pausing 0.5 s and then
 * up to 10 s, for `reconnect` seconds (0: once). -1 with the reason. */
int rw_connect_daemon(const char *sock, const char *tcp, double reconnect, char *err,
                      size_t errlen);

/* Replaces this process with `runaway-worker serve ARGV...`: every thread
 * and socket goes. Does not return (exit 3 where exec fails). */
void rw_exec_serve(int argc, char **argv);

#endif
