/* sphere computed here for a client on another host (sphere.c says how). */
#ifndef RUNAWAY_DAEMON_SPHERE_H
#define RUNAWAY_DAEMON_SPHERE_H

#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/db.h"
#include "daemon/net.h"

#define RD_SPHERE_MAX 2
#define RD_SPHERE_TIMEOUT_S 3600.0

typedef struct rd_spheres rd_spheres;

/* A `runaway-worker sphere` child for a client */
typedef struct rd_sphere {
    uv_process_t proc;
    int busy;   /* until its handle is closed */
    int killed; /* its asker went away, it ran too long, or shutdown */
    rd_spheres *all;
    rd_conn *conn; /* the asker, found again by rd_conn_find */
    uint64_t serial;
    long long req_id;
    int64_t job;
    double started; /* rd_mono() */
    char dir[PATH_MAX]; /* its folder: spec.yaml, out.dat, log */
} rd_sphere;

struct rd_spheres {
    uv_loop_t *loop;
    rd_life *life;
    rd_store *store;
    rd_net *net;
    char state_dir[PATH_MAX], worker_path[PATH_MAX];
    rd_sphere slots[RD_SPHERE_MAX];
};

/* Runs `runaway-worker sphere` on job's final weights (or the snapshot of
 * m's `epoch`) with m's `samples` and `backend`, and replies to request
 * `id` of c with its data file, or why not */
void rd_sphere_request(rd_spheres *S, rd_conn *c, long long id, int64_t job, json_t *m);
void rd_sphere_tick(rd_spheres *S);        /* kills children whose asker went away or late */
void rd_sphere_stop_all(rd_spheres *S);    /* shutdown */
void rd_sphere_clear_stale(rd_spheres *S); /* at start: the folders a crash left */

#endif
