/* The spec parser's bounded YAML tree, exported so that grid files
 * (proto/grid.c) reuse the same parsing, typing and field table as specs:
 * a grid's base and each variant are applied with rw_spec_apply_tree. */
#ifndef RUNAWAY_PROTO_SPEC_TREE_H
#define RUNAWAY_PROTO_SPEC_TREE_H

#include <stddef.h>

#include "proto/spec.h"
#include "proto/ytree.h"

/* Applies a mapping of spec fields on top of *s (fields absent keep their
 * value). Errors read "origin: field.path: ... (line L)". *s may be partly
 * written on error: apply to a scratch copy. */
int rw_spec_apply_tree(const ynode *map, const char *origin, const char *basedir, rw_spec *s,
                       char *err, size_t errlen);

#endif
