/* The daemon worker: `runaway-worker serve` connects to runawayd, takes
 * assignments and trains them with rw_train, streaming metrics back. */
#ifndef RUNAWAY_WORKER_AGENT_H
#define RUNAWAY_WORKER_AGENT_H

/* argv after "serve"; returns the process exit status. */
int rw_agent_main(int argc, char **argv);

#endif
