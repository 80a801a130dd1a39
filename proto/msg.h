/* Protocol messages: one table of every message type, who may send it and
 * its fields with their types and bounds; validation against that table;
 * small constructors. proto/PROTOCOL.md documents the same table in prose. */
#ifndef RUNAWAY_PROTO_MSG_H
#define RUNAWAY_PROTO_MSG_H

#include <jansson.h>
#include <stddef.h>

#define RW_PROTO_VERSION 2

/* who sends a message: a bitmask */
enum {
    RW_FROM_CLIENT = 1,
    RW_FROM_WORKER = 2,
    RW_FROM_DAEMON = 4,
};

/* Error codes carried by `error` replies. */
#define RW_E_FRAME "frame"           /* oversized frame, or a body that is not a JSON object */
#define RW_E_BAD_MESSAGE "bad_message" /* missing, mistyped or out-of-bounds field */
#define RW_E_UNKNOWN_TYPE "unknown_type"
#define RW_E_VERSION "version"
#define RW_E_HELLO "hello"           /* the first message must be hello */
#define RW_E_AUTH "auth"
#define RW_E_NOT_FOUND "not_found"
#define RW_E_BAD_SPEC "bad_spec"
#define RW_E_STATE "state"           /* the request does not fit what the daemon is doing */
#define RW_E_INTERNAL "internal"
#define RW_E_TIMEOUT "timeout"         /* kv_get: the key did not appear in time */

/* Submitted grid texts are bounded well below the frame limit even after
 * JSON escaping (at most 6 bytes per input byte). */
#define RW_SUBMIT_TEXT_MAX (128 * 1024)
#define RW_LINE_MAX 4096 /* a log line, an error message */
/* Rows in one page of a metrics reply: ~300 bytes each in JSON, well
 * inside a frame. */
#define RW_METRICS_PAGE_MAX 2000
/* Bytes of a checkpoint in one export reply, as hex: 768 KiB of text,
 * inside a frame. */
#define RW_EXPORT_CHUNK (384 * 1024)
/* Jobs and grids one table or curves request may merge. */
#define RW_TARGETS_MAX 64

/* Rendezvous key-value store (kv_set / kv_get, scoped to one job attempt):
 * keys are 1..128 printable ASCII bytes; values are binary, carried as
 * lowercase hex, at most RW_KV_VALUE_MAX bytes (Gloo's addresses are 136
 * bytes per peer, so 16 KiB covers the 64-rank maximum). */
#define RW_KV_KEY_MAX 128
#define RW_KV_VALUE_MAX 16384
#define RW_KV_TIMEOUT_MAX_MS 600000

/* A file's identity for `export` (inode, modification time, size): the
 * daemon sends it, a client compares it with its own view of the path
 * (another host may hold a file of the same path), and a checkpoint
 * replaced meanwhile shows as another. */
struct stat;
void rw_file_version(const struct stat *st, char *out, size_t len);

/* The last line of a program's output file that says something (not blank,
 * not starting with `skip`, which may be NULL), without its newline, into
 * out; "" when there is none or the file cannot be read. What a client and
 * the daemon quote when `runaway-worker` fails. */
void rw_file_last_line(const char *path, const char *skip, char *out, size_t len);

/* Hex of n bytes into out (2n+1 bytes). */
void rw_hex_encode(const void *p, size_t n, char *out);
/* Decodes a lowercase/uppercase hex string: -1 unless it has even length
 * and only hex digits. Writes min(len/2, cap) bytes, *n = len/2. */
int rw_hex_decode(const char *s, size_t len, void *out, size_t cap, size_t *n);
/* 1 if s is a valid kv key: 1..RW_KV_KEY_MAX bytes 0x21..0x7e. */
int rw_kv_key_ok(const char *s);

/* The TCP token (the first line of a token file, without its newline):
 * RW_TOKEN_MIN..RW_TOKEN_MAX bytes 0x21..0x7e, so that a short, blank or
 * mistyped token is refused where it is read rather than guessed. 0 if tok
 * is one; else -1 with why: what is wrong, the rule and how to make one. */
#define RW_TOKEN_MIN 32
#define RW_TOKEN_MAX 256
int rw_token_check(const char *tok, char *why, size_t len);

/* Checks one received message: a known type, that `from` may send it, every
 * required field present, every field of its declared type and bounds, no
 * unknown fields. On failure returns -1 with *code (one of RW_E_*) and a
 * message naming the field. On success *type is the message's type. */
int rw_msg_check(const json_t *m, int from, const char **type, const char **code, char *err,
                 size_t errlen);

/* Request id of a message (0 when absent or not an integer). */
long long rw_msg_id(const json_t *m);

/* New message {"type": type, "id": id} (id omitted when < 0). */
json_t *rw_msg_new(const char *type, long long id);
/* {"type":"error","id":id,"code":code,"message":message} */
json_t *rw_msg_error(long long id, const char *code, const char *message);
/* A JSON number, or null for NaN/inf (JSON has no NaN). */
json_t *rw_json_num(double x);
/* A number field as double; NaN when absent or null. */
double rw_json_get_num(const json_t *o, const char *key);

#endif
