/* The message table and its validator. */
#include "proto/msg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "proto/frame.h"
#include "proto/spec.h"

/* T_NAMES: a list of lo..hi strings of 1..128 bytes (jobs or grids);
 * T_WORDS: a list of lo..hi strings of 1..RW_OVERRIDE_LEN-1 bytes (FIELD=VALUE);
 * T_ABSPATH: a string of lo..hi bytes that starts with '/' */
typedef enum { T_STR, T_INT, T_NUM, T_NUM_OR_NULL, T_BOOL, T_NAMES, T_WORDS, T_ABSPATH } ftype;

typedef struct {
    const char *name;
    ftype type;
    int required;
    double lo, hi; /* T_STR: byte length bounds; numbers: value bounds */
} fdef;

typedef struct {
    const char *type;
    int from;
    fdef fields[28];
} mdef;

#define BIG 9007199254740992.0 /* 2^53: ids and counters stay exact in a double */
#define ID {"id", T_INT, 1, 0, BIG}
#define ID_OPT {"id", T_INT, 0, 0, BIG}
#define JOB {"job", T_INT, 1, 1, BIG}
#define ATTEMPT {"attempt", T_INT, 1, 1, BIG}
#define TARGET(n) {n, T_STR, 1, 1, 128}
/* one target (n) or several (ns): the handler wants exactly one of them */
#define TARGETS(n, ns) {n, T_STR, 0, 1, 128}, {ns, T_NAMES, 0, 1, RW_TARGETS_MAX}
#define METRICS                                                                            \
    {"epoch", T_INT, 1, 0, 1e6}, {"step", T_INT, 1, 0, BIG}, {"loss", T_NUM_OR_NULL, 1, -BIG, BIG}, \
        {"align", T_NUM_OR_NULL, 1, -BIG, BIG}, {"uniform", T_NUM_OR_NULL, 1, -BIG, BIG},        \
        {"collapse", T_NUM_OR_NULL, 1, -BIG, BIG}, {"knn", T_NUM_OR_NULL, 0, 0, 1},              \
        {"pairs_per_s", T_NUM_OR_NULL, 0, 0, BIG}, {"tau", T_NUM_OR_NULL, 0, 0, 1},    \
        {"lr", T_NUM_OR_NULL, 0, 0, 10}, {"rank", T_NUM_OR_NULL, 0, 0, 65536},              \
        {"linear", T_NUM_OR_NULL, 0, 0, 1}, {"w_cos_i", T_NUM_OR_NULL, 0, -1, 1},               \
        {"w_asym", T_NUM_OR_NULL, 0, 0, 1}

static const mdef msgs[] = {
    {"hello", RW_FROM_CLIENT | RW_FROM_WORKER,
     {ID_OPT, {"version", T_INT, 1, 0, 1e6}, {"role", T_STR, 1, 1, 16}, {"token", T_STR, 0, 0, 256},
      {"host", T_STR, 0, 0, 255}, {"device", T_STR, 0, 0, 64}, {"backend", T_STR, 0, 0, 32},
      {"pid", T_INT, 0, 0, 1 << 30}, {"slot", T_INT, 0, 0, 4096}}},
    /* client requests */
    {"submit", RW_FROM_CLIENT,
     {ID, {"text", T_STR, 1, 1, RW_SUBMIT_TEXT_MAX}, {"origin", T_STR, 1, 1, 1023},
      {"basedir", T_ABSPATH, 1, 1, 1023}, {"priority", T_INT, 0, -1000, 1000},
      {"overrides", T_WORDS, 0, 1, RW_OVERRIDES_MAX}, {"cwd", T_ABSPATH, 0, 1, 1023}}},
    {"ls", RW_FROM_CLIENT, {ID, {"grid", T_STR, 0, 1, 128}, {"state", T_STR, 0, 1, 16}}},
    {"grids", RW_FROM_CLIENT, {ID}},
    {"show", RW_FROM_CLIENT, {ID, TARGET("job")}},
    {"cancel", RW_FROM_CLIENT, {ID, TARGET("target")}},
    {"requeue", RW_FROM_CLIENT, {ID, TARGET("target")}},
    {"priority", RW_FROM_CLIENT, {ID, TARGET("target"), {"priority", T_INT, 1, -1000, 1000}}},
    {"rm", RW_FROM_CLIENT, {ID, TARGET("target")}},
    {"logs", RW_FROM_CLIENT,
     {ID, TARGET("job"), {"tail", T_INT, 0, 1, 100000}, {"follow", T_BOOL, 0, 0, 1}}},
    {"workers", RW_FROM_CLIENT, {ID}},
    {"watch", RW_FROM_CLIENT, {ID, TARGET("target")}},
    {"table", RW_FROM_CLIENT, {ID, TARGETS("grid", "grids")}},
    {"curves", RW_FROM_CLIENT, {ID, TARGETS("target", "targets")}},
    {"metrics", RW_FROM_CLIENT,
     {ID, TARGET("target"), {"kind", T_STR, 1, 4, 5}, {"after_job", T_INT, 0, 0, BIG},
      {"after", T_INT, 0, -1, BIG}, {"limit", T_INT, 0, 1, RW_METRICS_PAGE_MAX}}},
    {"sphere", RW_FROM_CLIENT,
     {ID, TARGET("job"), {"epoch", T_INT, 0, 0, 1e6}, {"samples", T_INT, 0, 3, 50000},
      {"backend", T_STR, 0, 1, 8}}},
    {"export", RW_FROM_CLIENT,
     {ID, TARGET("job"), {"offset", T_INT, 0, 0, BIG}, {"length", T_INT, 0, 1, RW_EXPORT_CHUNK}}},
    {"status", RW_FROM_CLIENT, {ID}},
    {"shutdown", RW_FROM_CLIENT, {ID}},
    /* worker reports */
    {"heartbeat", RW_FROM_WORKER, {ID_OPT, {"job", T_INT, 0, 0, BIG}}},
    {"metric", RW_FROM_WORKER,
     {ID_OPT, JOB, ATTEMPT, {"kind", T_STR, 1, 4, 5}, {"replay", T_BOOL, 0, 0, 1}, METRICS}},
    {"log", RW_FROM_WORKER, {ID_OPT, JOB, ATTEMPT, {"line", T_STR, 1, 0, RW_LINE_MAX}}},
    {"done", RW_FROM_WORKER,
     {ID_OPT, JOB, ATTEMPT, METRICS, {"linear_acc", T_NUM_OR_NULL, 1, 0, 1},
      {"align_last10", T_NUM_OR_NULL, 1, -BIG, BIG}, {"uniform_last10", T_NUM_OR_NULL, 1, -BIG, BIG},
      /* the collapse alarm ended it (monitor.collapse.action stop) */
      {"collapsed_epoch", T_INT, 0, 1, 1e6}, {"collapsed", T_STR, 0, 1, RW_LINE_MAX},
      {"rank_peak", T_NUM_OR_NULL, 0, 0, 65536}}},
    {"failed", RW_FROM_WORKER,
     {ID_OPT, JOB, ATTEMPT, {"error", T_STR, 1, 0, RW_LINE_MAX}, {"retry", T_BOOL, 0, 0, 1},
      {"restart", T_BOOL, 0, 0, 1}}},
    {"stopped", RW_FROM_WORKER, {ID_OPT, JOB, ATTEMPT, {"preempted", T_STR, 0, 1, 16}}},
    {"collapse", RW_FROM_WORKER,
     {ID_OPT, JOB, ATTEMPT, {"epoch", T_INT, 1, 1, 1e6}, {"step", T_INT, 1, 0, BIG},
      {"action", T_STR, 1, 4, 4}, {"why", T_STR, 1, 1, RW_LINE_MAX},
      {"rank", T_NUM_OR_NULL, 0, 0, 65536}, {"rank_peak", T_NUM_OR_NULL, 0, 0, 65536},
      {"uniform", T_NUM_OR_NULL, 0, -BIG, BIG}, {"collapse", T_NUM_OR_NULL, 0, -BIG, BIG}}},
    /* worker requests (rendezvous store of the worker's current attempt) */
    {"kv_set", RW_FROM_WORKER,
     {ID, JOB, ATTEMPT, {"key", T_STR, 1, 1, RW_KV_KEY_MAX},
      {"value", T_STR, 1, 0, 2 * RW_KV_VALUE_MAX}}},
    {"kv_get", RW_FROM_WORKER,
     {ID, JOB, ATTEMPT, {"key", T_STR, 1, 1, RW_KV_KEY_MAX},
      {"timeout_ms", T_INT, 1, 0, RW_KV_TIMEOUT_MAX_MS}}},
    /* daemon to worker */
    {"assign", RW_FROM_DAEMON,
     {ID_OPT, JOB, ATTEMPT, {"name", T_STR, 1, 1, 255}, {"spec", T_STR, 1, 1, 65536},
      {"out_dir", T_STR, 1, 1, 1023}, {"resume", T_BOOL, 1, 0, 1}, {"rank", T_INT, 1, 0, 63},
      {"world", T_INT, 1, 1, 64}, {"threads", T_INT, 0, 0, 1024},
      {"epochs_stored", T_INT, 0, 0, 1e6}, {"steps_stored", T_INT, 0, 0, BIG}}},
    {"cancel_job", RW_FROM_DAEMON, {ID_OPT, JOB}},
    {"stop", RW_FROM_DAEMON, {ID_OPT}},
    {"kv_value", RW_FROM_DAEMON, {ID, {"value", T_STR, 1, 0, 2 * RW_KV_VALUE_MAX}}},
};
#define NMSGS (sizeof msgs / sizeof msgs[0])

static const char *type_name(ftype t)
{
    switch (t) {
    case T_STR: return "a string";
    case T_INT: return "an integer";
    case T_NUM: return "a number";
    case T_NUM_OR_NULL: return "a number or null";
    case T_BOOL: return "a boolean";
    case T_NAMES: return "a list of names";
    case T_WORDS: return "a list of strings";
    case T_ABSPATH: return "an absolute path";
    }
    return "?";
}

int rw_msg_check(const json_t *m, int from, const char **type, const char **code, char *err,
                 size_t errlen)
{
    *type = NULL;
    const json_t *t = json_object_get(m, "type");
    if (!json_is_string(t)) {
        *code = RW_E_BAD_MESSAGE;
        snprintf(err, errlen, "type: required, a string");
        return -1;
    }
    const char *ts = json_string_value(t);
    const mdef *d = NULL;
    for (size_t i = 0; i < NMSGS; i++)
        if (!strcmp(msgs[i].type, ts))
            d = &msgs[i];
    if (!d || !(d->from & from)) {
        *code = RW_E_UNKNOWN_TYPE;
        /* quote at most 32 printable bytes of what they sent */
        char smp[40];
        size_t o = 0;
        for (size_t i = 0; ts[i] && o < 32; i++)
            smp[o++] = (ts[i] >= 0x20 && ts[i] < 0x7f) ? ts[i] : '?';
        smp[o] = '\0';
        snprintf(err, errlen, "unknown message type '%s'%s", smp, d ? " from this role" : "");
        return -1;
    }
    *code = RW_E_BAD_MESSAGE;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)m, key, v)
    {
        if (!strcmp(key, "type"))
            continue;
        const fdef *f = NULL;
        for (const fdef *g = d->fields; g->name; g++)
            if (!strcmp(g->name, key))
                f = g;
        if (!f) {
            snprintf(err, errlen, "%s: unknown field '%.32s'", ts, key);
            return -1;
        }
        int ok = 0;
        switch (f->type) {
        case T_STR:
        case T_ABSPATH:
            ok = json_is_string(v) && json_string_length(v) >= (size_t)f->lo &&
                 json_string_length(v) <= (size_t)f->hi &&
                 strlen(json_string_value(v)) == json_string_length(v); /* no NUL inside */
            /* relative paths would resolve against the daemon's working
             * folder, not the submitter's */
            if (ok && f->type == T_ABSPATH)
                ok = json_string_value(v)[0] == '/';
            break;
        case T_INT:
            /* compared as integers: as a double, 2^53 + 1 rounds to 2^53
             * and would pass; every bound is an integer a double holds */
            ok = json_is_integer(v) && json_integer_value(v) >= (json_int_t)f->lo &&
                 json_integer_value(v) <= (json_int_t)f->hi;
            break;
        case T_NUM_OR_NULL:
            if (json_is_null(v)) {
                ok = 1;
                break;
            }
            /* fall through */
        case T_NUM:
            ok = json_is_number(v) && json_number_value(v) >= f->lo && json_number_value(v) <= f->hi;
            break;
        case T_BOOL:
            ok = json_is_boolean(v);
            break;
        case T_NAMES:
        case T_WORDS: {
            size_t k, max = f->type == T_NAMES ? 128 : RW_OVERRIDE_LEN - 1;
            const json_t *e;
            ok = json_is_array(v) && json_array_size(v) >= (size_t)f->lo &&
                 json_array_size(v) <= (size_t)f->hi;
            json_array_foreach(v, k, e) ok &= json_is_string(e) && json_string_length(e) >= 1 &&
                                              json_string_length(e) <= max &&
                                              strlen(json_string_value(e)) == json_string_length(e);
            break;
        }
        }
        if (!ok) {
            if (f->type == T_STR)
                snprintf(err, errlen, "%s: %s: must be a string of %.0f..%.0f bytes", ts, key, f->lo,
                         f->hi);
            else if (f->type == T_BOOL)
                snprintf(err, errlen, "%s: %s: must be a boolean", ts, key);
            else if (f->type == T_ABSPATH)
                snprintf(err, errlen, "%s: %s: must be an absolute path (starting with '/') of "
                         "%.0f..%.0f bytes", ts, key, f->lo, f->hi);
            else if (f->type == T_INT)
                snprintf(err, errlen, "%s: %s: must be an integer in [%.0f, %.0f]", ts, key, f->lo,
                         f->hi);
            else if (f->type == T_WORDS)
                snprintf(err, errlen, "%s: %s: must be a list of %.0f..%.0f strings of 1..%d bytes",
                         ts, key, f->lo, f->hi, RW_OVERRIDE_LEN - 1);
            else if (f->type == T_NAMES)
                snprintf(err, errlen, "%s: %s: must be a list of %.0f..%.0f strings of 1..128 bytes",
                         ts, key, f->lo, f->hi);
            else
                snprintf(err, errlen, "%s: %s: must be %s in [%g, %g]", ts, key, type_name(f->type),
                         f->lo, f->hi);
            return -1;
        }
    }
    for (const fdef *g = d->fields; g->name; g++) {
        if (g->required && !json_object_get(m, g->name)) {
            snprintf(err, errlen, "%s: %s: required (%s)", ts, g->name, type_name(g->type));
            return -1;
        }
    }
    *type = d->type;
    *code = NULL;
    return 0;
}

long long rw_msg_id(const json_t *m)
{
    const json_t *v = json_object_get(m, "id");
    return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

json_t *rw_msg_new(const char *type, long long id)
{
    json_t *m = json_object();
    if (!m)
        return NULL;
    json_object_set_new(m, "type", json_string(type));
    if (id >= 0)
        json_object_set_new(m, "id", json_integer(id));
    return m;
}

json_t *rw_msg_error(long long id, const char *code, const char *message)
{
    json_t *m = rw_msg_new("error", id);
    json_object_set_new(m, "code", json_string(code));
    /* jansson refuses invalid UTF-8: fall back to a fixed text */
    json_t *s = json_string(message);
    json_object_set_new(m, "message", s ? s : json_string("(message not valid UTF-8)"));
    return m;
}

json_t *rw_json_num(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

double rw_json_get_num(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

void rw_file_version(const struct stat *st, char *out, size_t len)
{
    snprintf(out, len, "%llu:%lld.%09ld:%lld", (unsigned long long)st->st_ino,
             (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec, (long long)st->st_size);
}

void rw_file_last_line(const char *path, const char *skip, char *out, size_t len)
{
    if (len)
        out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[1024];
    size_t nskip = skip ? strlen(skip) : 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] && !(nskip && !strncmp(line, skip, nskip)))
            snprintf(out, len, "%s", line);
    }
    fclose(f);
}

void rw_hex_encode(const void *p, size_t n, char *out)
{
    static const char dig[] = "0123456789abcdef";
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = dig[b[i] >> 4];
        out[2 * i + 1] = dig[b[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int rw_hex_decode(const char *s, size_t len, void *out, size_t cap, size_t *n)
{
    if (len % 2)
        return -1;
    unsigned char *o = out;
    for (size_t i = 0; i < len; i += 2) {
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        if (i / 2 < cap)
            o[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    *n = len / 2;
    return 0;
}

int rw_kv_key_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > RW_KV_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return 0;
    return 1;
}

int rw_token_check(const char *tok, char *why, size_t len)
{
    size_t n = strlen(tok), blank = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)tok[i];
        blank += c == ' ' || (c >= '\t' && c <= '\r');
        if (!bad && (c < 0x21 || c > 0x7e))
            bad = i + 1;
    }
    if (blank == n)
        snprintf(why, len, "the token is blank");
    else if (n < RW_TOKEN_MIN)
        snprintf(why, len, "the token is too short (%zu characters)", n);
    else if (n > RW_TOKEN_MAX)
        snprintf(why, len, "the token is too long (%zu characters)", n);
    else if (bad)
        snprintf(why, len, "the token has a space or a character that is not printable ASCII "
                 "(character %zu)", bad);
    else
        return 0;
    size_t k = strlen(why);
    snprintf(why + k, len > k ? len - k : 0, ": a token is %d to %d printable ASCII characters "
             "without spaces; `runaway token new FILE` writes a strong one", RW_TOKEN_MIN,
             RW_TOKEN_MAX);
    return -1;
}
