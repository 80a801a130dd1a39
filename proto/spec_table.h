/* The spec's field table (proto/spec_table.c), shared by the parser
 * (proto/spec.c), its validation (proto/spec_check.c) and the canonical YAML
 * writer (proto/spec_emit.c): one place for every field's
 * path, type, offset and range. Internal to proto/. */
#ifndef RUNAWAY_PROTO_SPEC_TABLE_H
#define RUNAWAY_PROTO_SPEC_TABLE_H

#include <stddef.h>

#include "proto/spec.h"

typedef enum {
    F_INT,   /* int */
    F_LONG,  /* long */
    F_U64,   /* uint64_t */
    F_FLOAT, /* float */
    F_BOOL,  /* int 0/1 */
    F_ENUM,  /* an enum stored as int */
    F_NAME,  /* char[RW_NAME_MAX], [A-Za-z0-9_.-] */
    F_PATH,  /* char[RW_PATH_MAX], resolved against basedir */
    F_VEC3,  /* float[3] */
} ftype;

/* Range flags: an open end excludes the bound. */
#define LO_OPEN 1
#define HI_OPEN 2
#define ABS_BOUND 4 /* |x| <= hi */

typedef struct field {
    const char *path; /* dotted, as written in YAML */
    ftype type;
    size_t off;
    double lo, hi;
    int flags;
    const char *const *enums; /* NULL-terminated, for F_ENUM */
} field;

#define O(m) offsetof(rw_spec, m)

#define RW_TWO53 9007199254740992.0 /* the largest u64 a double holds exactly */

/* In the canonical YAML's order. */
extern const field rw_field_table[];
extern const size_t rw_field_count;

/* Helpers the three share (proto/spec_table.c). */
void rw_spec_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void rw_field_range_text(const field *f, char *out, size_t outlen); /* "in (0, 10]" */
int rw_field_in_range(const field *f, double v);
void rw_field_enum_list(const char *const *names, char *out, size_t outlen); /* "a, b, c" */
int rw_spec_name_ok(const char *s); /* [A-Za-z0-9_.-]+ */

#endif
