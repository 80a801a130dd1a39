/* A bounded YAML tree (proto/ytree.c): what specs, grid files and
 * command-line fields are read into before the spec's field table types
 * them. */
#ifndef RUNAWAY_PROTO_YTREE_H
#define RUNAWAY_PROTO_YTREE_H

#include <stddef.h>

#define RW_YAML_MAX (1u << 20) /* a spec is a page of text; refuse anything big */

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

/* One YAML document (at most RW_YAML_MAX bytes, bounded depth and node count) into a
 * tree; *root is NULL for an empty stream. 0 or -1 with "origin:LINE:COL: ...". */
int rw_ytree_parse(const char *yaml, size_t len, const char *origin, ynode **root, char *err,
                   size_t errlen);
void rw_ytree_free(ynode *n);

/* YAML null (~, null, empty); a boolean (1 true, 0 false, -1 none); a strict
 * decimal/scientific number (0, or -1: none; inf, nan and hex refused). */
int rw_ynode_is_null(const ynode *n);
int rw_ynode_bool(const ynode *n);
int rw_ynode_number(const ynode *n, double *out);

#endif
