/* Spec fields set on a command line ("optim.lr=1e-3"), made into the same
 * tree a file's fields make, so that they are typed, checked and reported
 * by the spec parser's one field table (proto/spec.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/overrides.h"

static ynode *scalar_node(const char *text, size_t len)
{
    ynode *n = calloc(1, sizeof *n);
    char *t = malloc(len + 1);
    if (!n || !t) {
        free(n);
        free(t);
        return NULL;
    }
    memcpy(t, text, len);
    t[len] = '\0';
    *n = (ynode){.kind = YN_SCALAR, .text = t, .len = len, .skind = YS_PLAIN};
    return n;
}

/* Appends key: value to a mapping; takes both (freed on failure). */
static int map_add(ynode *map, ynode *key, ynode *value)
{
    if (map->nkids + 2 > map->cap) {
        size_t cap = map->cap ? 2 * map->cap : 8;
        ynode **k = realloc(map->kids, cap * sizeof *k);
        if (!k) {
            rw_ytree_free(key);
            rw_ytree_free(value);
            return -1;
        }
        map->kids = k;
        map->cap = cap;
    }
    map->kids[map->nkids++] = key;
    map->kids[map->nkids++] = value;
    return 0;
}

static ynode *map_find(const ynode *map, const char *key, size_t len)
{
    for (size_t i = 0; i + 1 < map->nkids; i += 2)
        if (map->kids[i]->len == len && !memcmp(map->kids[i]->text, key, len))
            return map->kids[i + 1];
    return NULL;
}

/* "optim.lr": parts of [A-Za-z0-9_], joined by single dots. */
static int field_name_ok(const char *k, size_t len)
{
    if (len == 0 || k[0] == '.' || k[len - 1] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = k[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || (c == '.' && k[i + 1] != '.');
        if (!ok)
            return 0;
    }
    return 1;
}

/* The value of one word as YAML: a scalar, a flow list, or null when empty. */
static int value_node(const char *key, size_t klen, const char *v, ynode **out, char *err,
                      size_t errlen)
{
    char origin[128];
    snprintf(origin, sizeof origin, "%s: %.*s", RW_OVERRIDES_ORIGIN, (int)klen, key);
    if (rw_ytree_parse(v, strlen(v), origin, out, err, errlen) != 0)
        return -1;
    if (!*out && !(*out = scalar_node("", 0))) {
        snprintf(err, errlen, "%s: out of memory", origin);
        return -1;
    }
    return 0;
}

/* Line 0 everywhere: errors then name no line (the words have none). */
static void clear_lines(ynode *n)
{
    n->line = n->col = 0;
    for (size_t i = 0; i < n->nkids; i++)
        clear_lines(n->kids[i]);
}

/* Puts one word's value at its dotted path in the tree. */
static int add_word(ynode *root, const char *word, char *err, size_t errlen)
{
    const char *eq = strchr(word, '=');
    size_t klen = eq ? (size_t)(eq - word) : 0;
    if (!eq || !field_name_ok(word, klen)) {
        snprintf(err, errlen, "%s: '%.60s': expected FIELD=VALUE with the field's dotted name, "
                 "as optim.lr=1e-3", RW_OVERRIDES_ORIGIN, word);
        return -1;
    }
    if (strlen(word) >= RW_OVERRIDE_LEN) {
        snprintf(err, errlen, "%s: %.*s: longer than %d bytes", RW_OVERRIDES_ORIGIN, (int)klen,
                 word, RW_OVERRIDE_LEN - 1);
        return -1;
    }
    ynode *map = root;
    const char *part = word;
    for (;;) {
        const char *dot = memchr(part, '.', (size_t)(eq - part));
        size_t plen = dot ? (size_t)(dot - part) : (size_t)(eq - part);
        ynode *have = map_find(map, part, plen);
        if (have && (!dot || have->kind != YN_MAP)) {
            /* the same field twice, or a field of what was given a value */
            snprintf(err, errlen, "%s: %.*s: given twice", RW_OVERRIDES_ORIGIN, (int)klen, word);
            return -1;
        }
        if (!dot) {
            ynode *key = scalar_node(part, plen), *val = NULL;
            if (!key) {
                snprintf(err, errlen, "%s: out of memory", RW_OVERRIDES_ORIGIN);
                return -1;
            }
            if (value_node(word, klen, eq + 1, &val, err, errlen) != 0) {
                rw_ytree_free(key);
                return -1;
            }
            clear_lines(val);
            if (map_add(map, key, val) != 0) {
                snprintf(err, errlen, "%s: out of memory", RW_OVERRIDES_ORIGIN);
                return -1;
            }
            return 0;
        }
        if (!have) {
            ynode *key = scalar_node(part, plen), *sub = calloc(1, sizeof *sub);
            if (!key || !sub) {
                rw_ytree_free(key);
                free(sub);
                snprintf(err, errlen, "%s: out of memory", RW_OVERRIDES_ORIGIN);
                return -1;
            }
            sub->kind = YN_MAP;
            if (map_add(map, key, sub) != 0) { /* it freed both */
                snprintf(err, errlen, "%s: out of memory", RW_OVERRIDES_ORIGIN);
                return -1;
            }
            have = sub;
        }
        map = have;
        part = dot + 1;
    }
}

int rw_overrides_tree(const rw_overrides *ov, ynode **tree, char *err, size_t errlen)
{
    *tree = NULL;
    if (!ov || ov->n == 0)
        return 0;
    if (ov->n > RW_OVERRIDES_MAX) {
        snprintf(err, errlen, "%s: more than %d fields", RW_OVERRIDES_ORIGIN, RW_OVERRIDES_MAX);
        return -1;
    }
    ynode *root = calloc(1, sizeof *root);
    if (!root) {
        snprintf(err, errlen, "%s: out of memory", RW_OVERRIDES_ORIGIN);
        return -1;
    }
    root->kind = YN_MAP;
    for (size_t i = 0; i < ov->n; i++) {
        if (add_word(root, ov->words[i], err, errlen) != 0) {
            rw_ytree_free(root);
            return -1;
        }
    }
    *tree = root;
    return 0;
}
