/* A bounded YAML tree: one libyaml document made into owned nodes (bounded
 * size, depth and node count; aliases and several documents refused), and
 * the strict typing of its scalars. Specs, grid files and command-line
 * fields (proto/spec.c, grid.c, overrides.c) all read YAML through it. */
#include "proto/ytree.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YTREE_DEPTH_MAX 16 /* a spec needs 3 levels, a grid a few more */
#define YTREE_NODES_MAX 65536

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* 1. The bounded tree */

void rw_ytree_free(ynode *n) {
    if (!n) return;
    for (size_t i = 0; i < n->nkids; i++) rw_ytree_free(n->kids[i]);
    free(n->kids);
    free(n->text);
    free(n);
}

static int ynode_push(ynode *parent, ynode *kid) {
    if (parent->nkids == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 8;
        ynode **k = realloc(parent->kids, cap * sizeof *k);
        if (!k) return -1;
        parent->kids = k;
        parent->cap = cap;
    }
    parent->kids[parent->nkids++] = kid;
    return 0;
}

static yscalar_kind tag_kind(const yaml_char_t *tag, int implicit_plain, yaml_scalar_style_t style) {
    if (!tag) return (style == YAML_PLAIN_SCALAR_STYLE && implicit_plain) ? YS_PLAIN : YS_STRING;
    const char *t = (const char *)tag;
    if (!strcmp(t, "!")) return YS_STRING; /* the non-specific tag: a string */
    if (!strcmp(t, YAML_STR_TAG)) return YS_STRING;
    if (!strcmp(t, YAML_INT_TAG)) return YS_INT;
    if (!strcmp(t, YAML_FLOAT_TAG)) return YS_FLOAT;
    if (!strcmp(t, YAML_BOOL_TAG)) return YS_BOOL;
    if (!strcmp(t, YAML_NULL_TAG)) return YS_NULL;
    return YS_OTHER;
}

/* Parses one YAML document into a tree. *root is NULL for an empty stream.
 * Errors are "origin:LINE:COL: ..." (the YAML's own position). */
static int parse_events(const char *yaml, size_t len, const char *origin, ynode **root, char *err,
                       size_t errlen) {
    *root = NULL;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        set_err(err, errlen, "%s: out of memory", origin);
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);

    ynode *stack[YTREE_DEPTH_MAX + 1];
    int depth = 0, ndocs = 0, rc = -1, done = 0;
    size_t nnodes = 0;
    ynode *top = NULL;

    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            const char *what = p.problem ? p.problem : "syntax error";
            if (p.context)
                set_err(err, errlen, "%s:%zu:%zu: YAML syntax error: %s %s that started on line %zu", origin,
                        p.problem_mark.line + 1, p.problem_mark.column + 1, what, p.context,
                        p.context_mark.line + 1);
            else
                set_err(err, errlen, "%s:%zu:%zu: YAML syntax error: %s", origin,
                        p.problem_mark.line + 1, p.problem_mark.column + 1, what);
            goto out;
        }
        int line = (int)ev.start_mark.line + 1, col = (int)ev.start_mark.column + 1;
        ynode *n = NULL;
        int bad = 0;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++ndocs > 1) {
                set_err(err, errlen, "%s:%d:%d: more than one YAML document; a spec is one mapping",
                        origin, line, col);
                bad = 1;
            }
            break;
        case YAML_ALIAS_EVENT:
            set_err(err, errlen, "%s:%d:%d: YAML aliases (*name) are not supported", origin, line,
                    col);
            bad = 1;
            break;
        case YAML_SCALAR_EVENT:
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (++nnodes > YTREE_NODES_MAX) {
                set_err(err, errlen, "%s:%d:%d: too many YAML nodes (at most %d)", origin, line,
                        col, YTREE_NODES_MAX);
                bad = 1;
                break;
            }
            n = calloc(1, sizeof *n);
            if (!n) {
                set_err(err, errlen, "%s: out of memory", origin);
                bad = 1;
                break;
            }
            n->line = line;
            n->col = col;
            if (ev.type == YAML_SCALAR_EVENT) {
                n->kind = YN_SCALAR;
                n->len = ev.data.scalar.length;
                n->text = malloc(n->len + 1);
                if (!n->text) {
                    free(n);
                    n = NULL;
                    set_err(err, errlen, "%s: out of memory", origin);
                    bad = 1;
                    break;
                }
                memcpy(n->text, ev.data.scalar.value, n->len);
                n->text[n->len] = '\0';
                n->skind = tag_kind(ev.data.scalar.tag, ev.data.scalar.plain_implicit,
                                    ev.data.scalar.style);
            } else {
                n->kind = ev.type == YAML_MAPPING_START_EVENT ? YN_MAP : YN_SEQ;
            }
            /* attach to the parent (or become the root) */
            if (depth == 0) {
                top = n;
            } else if (ynode_push(stack[depth - 1], n)) {
                rw_ytree_free(n);
                n = NULL;
                set_err(err, errlen, "%s: out of memory", origin);
                bad = 1;
                break;
            }
            if (n->kind != YN_SCALAR) {
                if (depth == YTREE_DEPTH_MAX) {
                    set_err(err, errlen, "%s:%d:%d: nesting deeper than %d levels", origin, line,
                            col, YTREE_DEPTH_MAX);
                    bad = 1;
                    break;
                }
                stack[depth++] = n;
            }
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        if (bad) goto out;
    }
    *root = top;
    top = NULL;
    rc = 0;
out:
    rw_ytree_free(top); /* a partial tree: every node is reachable from top */
    yaml_parser_delete(&p);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Scalar typing (YAML 1.2 core schema, strict) */

int rw_ynode_is_null(const ynode *n) {
    if (n->kind != YN_SCALAR) return 0;
    if (n->skind == YS_NULL) return 1;
    if (n->skind != YS_PLAIN) return 0;
    const char *t = n->text;
    return !strcmp(t, "") || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") ||
           !strcmp(t, "NULL");
}

/* 1 true, 0 false, -1 not a boolean */
int rw_ynode_bool(const ynode *n) {
    if (n->kind != YN_SCALAR || (n->skind != YS_PLAIN && n->skind != YS_BOOL)) return -1;
    const char *t = n->text;
    if (!strcmp(t, "true") || !strcmp(t, "True") || !strcmp(t, "TRUE")) return 1;
    if (!strcmp(t, "false") || !strcmp(t, "False") || !strcmp(t, "FALSE")) return 0;
    return -1;
}

/* A decimal or scientific number, nothing else: strtod alone would also
 * take "inf", "nan", hex floats and leading blanks. */
int rw_ynode_number(const ynode *n, double *out) {
    if (n->kind != YN_SCALAR) return -1;
    if (n->skind != YS_PLAIN && n->skind != YS_INT && n->skind != YS_FLOAT) return -1;
    const char *t = n->text;
    size_t i = 0, digits = 0;
    if (t[i] == '+' || t[i] == '-') i++;
    while (t[i] >= '0' && t[i] <= '9') i++, digits++;
    if (t[i] == '.') {
        i++;
        while (t[i] >= '0' && t[i] <= '9') i++, digits++;
    }
    if (digits == 0) return -1;
    if (t[i] == 'e' || t[i] == 'E') {
        i++;
        if (t[i] == '+' || t[i] == '-') i++;
        size_t ed = 0;
        while (t[i] >= '0' && t[i] <= '9') i++, ed++;
        if (ed == 0) return -1;
    }
    if (i != n->len) return -1;
    errno = 0;
    double v = strtod(t, NULL);
    if (!isfinite(v)) return -1;
    *out = v;
    return 0;
}

int rw_ytree_parse(const char *yaml, size_t len, const char *origin, ynode **root, char *err,
                   size_t errlen) {
    if (len > RW_YAML_MAX) {
        set_err(err, errlen, "%s: too large (%zu bytes; at most %u bytes)", origin, len, RW_YAML_MAX);
        return -1;
    }
    return parse_events(yaml, len, origin, root, err, errlen);
}
