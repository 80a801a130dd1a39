/* Grid files: a base spec and axes that expand into named jobs.
 *
 *   name: quickstart        # optional; default: the file's name without .yaml
 *   priority: 0             # optional, -1000 .. 1000 (higher runs first)
 *   base: {...}             # a spec mapping (proto/spec.h), applied on the defaults
 *   grid:
 *     seed: [0, 1, 2]       # optional; default: base's seed
 *     variant:              # optional; default: one variant named by base's name
 *       - {name: byol, model: {predictor: mlp}}
 *       - {name: byol-np, model: {predictor: none}}
 *     sweep:                # optional: up to 8 spec fields, each list crossed
 *       loss.beta: [-1, 0.5]   # with the others and with every variant
 *       optim.lr: [1.0e-3, 3.0e-4]
 *
 * Each variant is a mapping of spec fields applied on top of base (its
 * `name` is required and names the variant); each combination of the
 * swept values (the first field slowest) is then applied on top and named
 * <variant>-<field>-<value>... (the field's last part, or its whole path
 * where two last parts agree; the value as written); each seed then sets
 * `seed`. Jobs are named <grid>/<variant>/seed<k>, variants outer, seeds
 * inner.
 * A file with neither `base` nor `grid` is a plain spec: a 1-job grid.
 * Errors name the file, the place in the grid and the field, like the spec
 * parser: "q.yaml: grid.variant[1]: model.predictor: must be one of ...". */
#ifndef RUNAWAY_PROTO_GRID_H
#define RUNAWAY_PROTO_GRID_H

#include <stddef.h>
#include <stdint.h>

#include "proto/spec.h"

#define RW_GRID_JOBS_MAX 1024
#define RW_JOB_NAME_MAX (3 * RW_NAME_MAX + 32)

typedef struct rw_grid_job {
    char name[RW_JOB_NAME_MAX]; /* grid/variant/seedK */
    char variant[RW_NAME_MAX];
    rw_spec spec;
} rw_grid_job;

typedef struct rw_grid {
    char name[RW_NAME_MAX];
    int priority;
    size_t njobs;
    rw_grid_job *jobs;
} rw_grid;

/* Parses and expands; origin names the text in errors and gives the default
 * grid name; basedir resolves relative paths. 0, or -1 with err. */
int rw_grid_parse(const char *yaml, size_t len, const char *origin, const char *basedir,
                  rw_grid *g, char *err, size_t errlen);
/* Same with fields set on the command line (proto/spec.h, rw_overrides):
 * they set the grid's base -- on top of the file's base (or of the plain
 * spec) --, so a variant, a sweep or the seed axis that sets the same field
 * wins for its jobs; one that every job sets again is refused. ov NULL:
 * none. */
int rw_grid_parse_with(const char *yaml, size_t len, const char *origin, const char *basedir,
                       const rw_overrides *ov, rw_grid *g, char *err, size_t errlen);
/* Same from a file (basedir: the file's folder, made absolute). */
int rw_grid_load(const char *path, rw_grid *g, char *err, size_t errlen);
/* Reads a spec or grid file (at most `max` bytes) and its absolute folder. */
int rw_grid_read_file(const char *path, size_t max, char **text, size_t *len, char *basedir,
                      size_t basedirlen, char *err, size_t errlen);
void rw_grid_free(rw_grid *g);

#endif
