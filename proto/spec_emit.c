/* A spec back to text: the canonical YAML (shortest round-trip floats,
 * strings double-quoted), fields one by one, and differences by field
 * name. Driven by the parser's field table (proto/spec_table.h). */
#include "proto/spec.h"
#include "proto/spec_table.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define fields rw_field_table
#define NFIELDS rw_field_count

/* ------------------------------------------------------------------------ */
/* Canonical YAML */

typedef struct ybuf {
    char *p;
    size_t len, cap;
    int overflow;
} ybuf;

static void yput(ybuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void yput(ybuf *b, const char *fmt, ...) {
    if (b->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= b->cap - b->len) b->overflow = 1;
    else b->len += (size_t)n;
}

/* Double-quoted YAML string: escapes keep any byte sequence one line. */
static void yput_str(ybuf *b, const char *s) {
    yput(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') yput(b, "\\%c", c);
        else if (c < 0x20 || c == 0x7f) yput(b, "\\x%02x", c);
        else yput(b, "%c", c);
    }
    yput(b, "\"");
}

/* The fewest significant digits that the parser reads back (as it does:
 * strtod, then to float) as the same float: 3e-4f is "0.0003", not
 * "0.000300000014". Exact, so the canonical YAML stays a round trip. */
static void put_float(ybuf *b, float x) {
    char t[48];
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(t, sizeof t, "%.*g", digits, (double)x);
        if ((float)strtod(t, NULL) == x) break;
    }
    yput(b, "%s", t);
}

/* Whether the canonical YAML has field f: a loss's weights only where
 * the loss is weighed (rw_spec_resolve keeps them at 1 for the others). */
static int field_present(const field *f, const rw_spec *s) {
    return s->loss.kind == RW_LOSS_UNIFIED || (f->off != O(loss.alpha) && f->off != O(loss.beta));
}

/* Field f's value in *s as the canonical YAML writes it. -1 for a value no
 * spec can hold (an enum out of range, a string not terminated). */
static int put_value(ybuf *b, const field *f, const rw_spec *s) {
    const char *src = (const char *)s + f->off;
    switch (f->type) {
    case F_INT: {
        int x;
        memcpy(&x, src, sizeof x);
        yput(b, "%d", x);
        return 0;
    }
    case F_LONG: {
        long x;
        memcpy(&x, src, sizeof x);
        yput(b, "%ld", x);
        return 0;
    }
    case F_U64: {
        uint64_t x;
        memcpy(&x, src, sizeof x);
        yput(b, "%llu", (unsigned long long)x);
        return 0;
    }
    case F_FLOAT: {
        float x;
        memcpy(&x, src, sizeof x);
        put_float(b, x);
        return 0;
    }
    case F_BOOL: {
        int x;
        memcpy(&x, src, sizeof x);
        yput(b, "%s", x ? "true" : "false");
        return 0;
    }
    case F_ENUM: {
        int x, n = 0;
        memcpy(&x, src, sizeof x);
        while (f->enums[n]) n++;
        if (x < 0 || x >= n) return -1;
        yput(b, "%s", f->enums[x]);
        return 0;
    }
    case F_NAME:
    case F_PATH:
        if (!memchr(src, '\0', f->type == F_NAME ? RW_NAME_MAX : RW_PATH_MAX)) return -1;
        if (f->type == F_PATH && !src[0]) yput(b, "null");
        else yput_str(b, src);
        return 0;
    case F_VEC3: {
        float x[3];
        memcpy(x, src, sizeof x);
        for (int k = 0; k < 3; k++) {
            yput(b, "%s", k ? ", " : "[");
            put_float(b, x[k]);
        }
        yput(b, "]");
        return 0;
    }
    }
    return -1;
}

int rw_spec_to_yaml(const rw_spec *s, char *out, size_t outlen) {
    ybuf b = {out, 0, outlen, 0};
    if (outlen == 0) return -1;
    out[0] = '\0';
    const char *prev = "";
    for (size_t i = 0; i < NFIELDS; i++) {
        const field *f = &fields[i];
        if (!field_present(f, s)) continue;
        /* open the mappings this path enters that the previous one did not:
         * the table keeps every group's fields together */
        const char *p = f->path, *q = prev;
        int depth = 0;
        while (strchr(p, '.')) {
            size_t cl = (size_t)(strchr(p, '.') - p);
            int same = q && !strncmp(p, q, cl) && q[cl] == '.';
            if (!same) {
                yput(&b, "%*s%.*s:\n", 2 * depth, "", (int)cl, p);
                q = NULL;
            } else {
                q += cl + 1;
            }
            p += cl + 1;
            depth++;
        }
        prev = f->path;
        yput(&b, "%*s%s: ", 2 * depth, "", p);
        if (put_value(&b, f, s)) return -1;
        yput(&b, "\n");
    }
    return b.overflow ? -1 : (int)b.len;
}

int rw_spec_nfields(void) { return (int)NFIELDS; }

int rw_spec_field(const rw_spec *s, int i, const char **name, char *val, size_t len) {
    if (i < 0 || i >= (int)NFIELDS || len == 0) return -1;
    const field *f = &fields[i];
    *name = f->path;
    val[0] = '\0';
    if (!field_present(f, s)) return 0;
    ybuf b = {val, 0, len, 0};
    if (put_value(&b, f, s) || b.overflow) return -1;
    return 1;
}

int rw_spec_diff(const rw_spec *a, const rw_spec *b, rw_spec_delta *out, int max) {
    int n = 0;
    for (int i = 0; i < (int)NFIELDS; i++) {
        rw_spec_delta d = {0};
        const char *name;
        int ha = rw_spec_field(a, i, &name, d.a, sizeof d.a),
            hb = rw_spec_field(b, i, &name, d.b, sizeof d.b);
        if (ha < 0 || hb < 0) return -1;
        if (ha == hb && !strcmp(d.a, d.b)) continue;
        d.name = name;
        d.in = (ha ? RW_DELTA_A : 0) | (hb ? RW_DELTA_B : 0);
        if (n < max) out[n] = d;
        n++;
    }
    return n;
}

void rw_spec_trained(const rw_spec *s, rw_spec *out) {
    rw_spec d;
    rw_spec_defaults(&d);
    *out = *s;
    memset(out->name, 0, sizeof out->name);
    if (out->model.predictor != RW_PRED_MLP && out->model.predictor != RW_PRED_MLP_BN)
        out->model.pred_hidden = d.model.pred_hidden; /* no hidden layer */
    if (out->model.predictor != RW_PRED_DIRECTPRED)
        out->model.directpred = d.model.directpred;
    if (out->data.kind != RW_DATA_STL10 && out->data.kind != RW_DATA_IMAGEFOLDER)
        out->data.unlabeled = d.data.unlabeled; /* STL-10's split, an image folder's */
    if (out->data.kind != RW_DATA_IMAGEFOLDER) { /* an image folder's cache */
        out->data.cache_size = d.data.cache_size;
        out->data.skip_bad = d.data.skip_bad;
    }
}

/* The YAML is two spaces a level, one field a line, lists inline. */
int rw_spec_flatten(const rw_spec *s, char (*out)[RW_SPEC_FIELD_MAX], int max) {
    char *yaml = malloc(RW_SPEC_YAML_MAX), *save = NULL;
    if (!yaml || rw_spec_to_yaml(s, yaml, RW_SPEC_YAML_MAX) < 0) {
        free(yaml);
        return -1;
    }
    char path[8][64];
    int n = 0;
    for (char *line = strtok_r(yaml, "\n", &save); line && n < max;
         line = strtok_r(NULL, "\n", &save)) {
        int ind = 0;
        while (line[ind] == ' ') ind++;
        int depth = ind / 2;
        char *colon = strchr(line + ind, ':');
        if (depth >= 8 || !colon) continue;
        snprintf(path[depth], sizeof path[depth], "%.*s", (int)(colon - line - ind), line + ind);
        if (colon[1] == 0) continue; /* a mapping's key: its fields follow, one level in */
        char key[8 * 65] = "";
        for (int k = 0; k <= depth; k++)
            snprintf(key + strlen(key), sizeof key - strlen(key), "%s%s", k ? "." : "", path[k]);
        snprintf(out[n++], RW_SPEC_FIELD_MAX, "%s:%s", key, colon + 1);
    }
    free(yaml);
    return n;
}

void rw_spec_value_short(const char *v, char *out, size_t len) {
    while (*v == ' ') v++;
    char *end;
    double x = strtod(v, &end);
    snprintf(out, len, "%s", v);
    if (end == v || *end || !strpbrk(v, ".eE")) return; /* not a number, or an integer */
    for (int digits = 1; digits <= 9; digits++) {
        char t[64];
        snprintf(t, sizeof t, "%.*g", digits, x);
        if ((float)strtod(t, NULL) == (float)x) {
            snprintf(out, len, "%s", t);
            return;
        }
    }
}
