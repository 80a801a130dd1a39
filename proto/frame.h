/* Framing shared by runawayd, runaway-worker and runaway: every message is
 * a 4-byte big-endian length followed by that many bytes of one JSON object
 * (UTF-8). See proto/PROTOCOL.md for why length-prefixed and not newlines. */
#ifndef RUNAWAY_PROTO_FRAME_H
#define RUNAWAY_PROTO_FRAME_H

#include <jansson.h>
#include <stddef.h>

#define RW_FRAME_MAX (1u << 20) /* body bytes; a longer header is rejected before any body is read */
#define RW_FRAME_HDR 4

typedef enum {
    RW_FRAME_NEED_MORE = 0, /* no complete frame buffered yet */
    RW_FRAME_OK = 1,        /* *out holds a JSON object (caller's reference) */
    RW_FRAME_TOO_LARGE = -1,
    RW_FRAME_BAD_JSON = -2,   /* not JSON, or JSON that is not an object */
} rw_frame_status;

/* Accumulates bytes from a stream and cuts frames out of it. Holds at most
 * RW_FRAME_HDR + max bytes of one frame plus one read's worth. */
typedef struct rw_frame_reader {
    unsigned char *buf;
    size_t len, cap, max;
} rw_frame_reader;

void rw_frame_reader_init(rw_frame_reader *r, size_t max);
void rw_frame_reader_free(rw_frame_reader *r);
/* Gives its buffer back when it holds nothing (a reader that took one big
 * frame keeps no megabyte for good). */
void rw_frame_reader_trim(rw_frame_reader *r);
/* 1 if the next call of rw_frame_reader_next has something to say (a whole
 * frame, or a header it refuses), 0 if it would need more bytes. */
int rw_frame_reader_ready(const rw_frame_reader *r);
/* Appends n bytes; -1 on out of memory. */
int rw_frame_reader_feed(rw_frame_reader *r, const void *data, size_t n);
/* The next frame, if complete. On an error the stream is unusable (the
 * frame boundary is lost); err gets a short reason. */
rw_frame_status rw_frame_reader_next(rw_frame_reader *r, json_t **out, char *err, size_t errlen);

/* Header + compact JSON in one malloc'd buffer. -1 if the body would exceed
 * RW_FRAME_MAX (or out of memory). */
int rw_frame_encode(const json_t *msg, char **out, size_t *outlen);
/* Same, for a body already serialized (tests send hand-made bodies). */
int rw_frame_encode_raw(const char *body, size_t len, char **out, size_t *outlen);

/* Blocking helpers for the CLI and the worker (the daemon uses libuv). */
int rw_fd_write_all(int fd, const void *p, size_t n);
int rw_frame_send_fd(int fd, const json_t *msg);
/* Waits up to timeout_ms (-1: forever) for a frame. 1: *out is a frame;
 * 0: timed out; -1: error or end of stream (err says which). */
int rw_frame_recv_fd(int fd, rw_frame_reader *r, json_t **out, int timeout_ms, char *err,
                     size_t errlen);

#endif
