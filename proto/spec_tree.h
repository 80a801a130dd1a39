/* The spec parser's bounded YAML tree, exported so that grid files
 * (proto/grid.c) reuse the same parsing, typing and field table as specs:
 * a grid's base and each variant are applied with rw_spec_apply_tree. */
#ifndef RUNAWAY_PROTO_SPEC_TREE_H
#define RUNAWAY_PROTO_SPEC_TREE_H

#include <stddef.h>

#include "proto/spec.h"

typedef enum { YN_SCALAR, YN_SEQ, YN_MAP } ynode_kind;

/* What a scalar may be read as, from its style and explicit tag. */
typedef enum {
    YS_PLAIN,  /* untagged plain scalar: type resolved from its text */
    YS_STRING, /* quoted, block, or tagged !!str: always a string */
    YS_INT,    /* tagged !!int */
    YS_FLOAT,  /* tagged !!float */
    YS_BOOL,   /* tagged !!bool */
    YS_NULL,   /* tagged !!null */
    YS_OTHER,  /* any other tag */
} yscalar_kind;

typedef struct ynode {
    ynode_kind kind;
    int line, col; /* 1-based */
    /* scalar */
    char *text;
    size_t len;
    yscalar_kind skind;
    /* sequence: items; mapping: key, value, key, value, ... */
    struct ynode **kids;
    size_t nkids, cap;
} ynode;

/* One YAML document (at most 1 MiB, bounded depth and node count) into a
 * tree; *root is NULL for an empty stream. 0 or -1 with "origin:LINE:COL: ...". */
int rw_ytree_parse(const char *yaml, size_t len, const char *origin, ynode **root, char *err,
                   size_t errlen);
void rw_ytree_free(ynode *n);

/* YAML null (~, null, empty); a strict decimal/scientific number (0 or -1). */
int rw_ynode_is_null(const ynode *n);
int rw_ynode_number(const ynode *n, double *out);

/* Applies a mapping of spec fields on top of *s (fields absent keep their
 * value). Errors read "origin: field.path: ... (line L)". *s may be partly
 * written on error: apply to a scratch copy. */
int rw_spec_apply_tree(const ynode *map, const char *origin, const char *basedir, rw_spec *s,
                       char *err, size_t errlen);

/* Overrides (rw_overrides, proto/spec.h) as one mapping tree, {a: {b:
 * VALUE}, ...}, for rw_spec_apply_tree with origin RW_OVERRIDES_ORIGIN and
 * the overrides' basedir; its nodes are on line 0, which errors leave out.
 * *tree is NULL for none. 0, or -1 with "command line: ..." in err. */
int rw_overrides_tree(const rw_overrides *ov, ynode **tree, char *err, size_t errlen);

#endif
