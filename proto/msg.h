/* Protocol messages: one table of every message type, who may send it and
 * its fields with their types and bounds; validation against that table;
 * small constructors. proto/PROTOCOL.md documents the same table in prose. */
#ifndef RUNAWAY_PROTO_MSG_H
#define RUNAWAY_PROTO_MSG_H

#include <jansson.h>
#include <stddef.h>

#define RW_PROTO_VERSION 1

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

/* Submitted grid texts are bounded well below the frame limit even after
 * JSON escaping (at most 6 bytes per input byte). */
#define RW_SUBMIT_TEXT_MAX (128 * 1024)
#define RW_LINE_MAX 4096 /* a log line, an error message */

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
