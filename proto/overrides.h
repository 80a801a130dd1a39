/* Spec fields set on a command line (proto/overrides.c), made into the
 * tree a file's fields make, for the spec's field table to check. */
#ifndef RUNAWAY_PROTO_OVERRIDES_H
#define RUNAWAY_PROTO_OVERRIDES_H

#include <stddef.h>

#include "proto/ytree.h"

/* Fields set on a command line: words "a.b=VALUE" (runaway submit,
 * runaway-worker run). VALUE is read as YAML -- a number, a word,
 * true/false, null, a flow list [a, b, c] -- and checked like the same field
 * in a file, with the same messages, naming "command line" as the origin;
 * an unknown name gets the parser's "unknown field (allowed ...)". A word
 * without '=' or a field given twice is an error. Relative paths in values
 * resolve against basedir (the caller's working folder), not the file's. */
#define RW_OVERRIDES_ORIGIN "command line"
#define RW_OVERRIDES_MAX 64   /* words */
#define RW_OVERRIDE_LEN 2048  /* bytes of one word */
typedef struct rw_overrides {
    const char *const *words;
    size_t n;
    const char *basedir;
} rw_overrides;

/* The words as one mapping tree, {a: {b: VALUE}, ...}, for rw_spec_apply_tree with origin RW_OVERRIDES_ORIGIN and
 * the overrides' basedir; its nodes are on line 0, which errors leave out.
 * *tree is NULL for none. 0, or -1 with "command line: ..." in err. */
int rw_overrides_tree(const rw_overrides *ov, ynode **tree, char *err, size_t errlen);

#endif
