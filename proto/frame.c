/* Length-prefixed JSON frames: encoding, an incremental bounded reader, and
 * blocking send/receive for the programs that do not run an event loop. */
#include "proto/frame.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void rw_frame_reader_init(rw_frame_reader *r, size_t max)
{
    memset(r, 0, sizeof *r);
    r->max = max ? max : RW_FRAME_MAX;
}

void rw_frame_reader_free(rw_frame_reader *r)
{
    free(r->buf);
    memset(r, 0, sizeof *r);
}

void rw_frame_reader_trim(rw_frame_reader *r)
{
    if (r->len == 0 && r->buf) {
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
}

int rw_frame_reader_ready(const rw_frame_reader *r)
{
    if (r->len < RW_FRAME_HDR)
        return 0;
    uint32_t n = (uint32_t)r->buf[0] << 24 | (uint32_t)r->buf[1] << 16 |
                 (uint32_t)r->buf[2] << 8 | r->buf[3];
    return n > r->max || r->len >= RW_FRAME_HDR + (size_t)n;
}

int rw_frame_reader_feed(rw_frame_reader *r, const void *data, size_t n)
{
    if (n == 0)
        return 0; /* nothing to copy, and a fresh reader has no buffer yet */
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n)
            cap *= 2;
        unsigned char *b = realloc(r->buf, cap);
        if (!b)
            return -1;
        r->buf = b;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, n);
    r->len += n;
    return 0;
}

rw_frame_status rw_frame_reader_next(rw_frame_reader *r, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (r->len < RW_FRAME_HDR)
        return RW_FRAME_NEED_MORE;
    uint32_t n = (uint32_t)r->buf[0] << 24 | (uint32_t)r->buf[1] << 16 |
                 (uint32_t)r->buf[2] << 8 | r->buf[3];
    /* judged on the header alone, so a liar cannot make us buffer 4 GiB */
    if (n > r->max) {
        snprintf(err, errlen, "frame of %u bytes exceeds the limit of %zu", n, r->max);
        return RW_FRAME_TOO_LARGE;
    }
    if (r->len < RW_FRAME_HDR + (size_t)n)
        return RW_FRAME_NEED_MORE;
    json_error_t je;
    json_t *j = json_loadb((const char *)r->buf + RW_FRAME_HDR, n, JSON_REJECT_DUPLICATES, &je);
    memmove(r->buf, r->buf + RW_FRAME_HDR + n, r->len - RW_FRAME_HDR - n);
    r->len -= RW_FRAME_HDR + n;
    if (!j) {
        snprintf(err, errlen, "body is not JSON: %s at byte %d", je.text, je.position);
        return RW_FRAME_BAD_JSON;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        snprintf(err, errlen, "body is JSON but not an object");
        return RW_FRAME_BAD_JSON;
    }
    *out = j;
    return RW_FRAME_OK;
}

int rw_frame_encode_raw(const char *body, size_t len, char **out, size_t *outlen)
{
    if (len > RW_FRAME_MAX)
        return -1;
    char *b = malloc(RW_FRAME_HDR + len);
    if (!b)
        return -1;
    b[0] = (char)(len >> 24);
    b[1] = (char)(len >> 16);
    b[2] = (char)(len >> 8);
    b[3] = (char)len;
    memcpy(b + RW_FRAME_HDR, body, len);
    *out = b;
    *outlen = RW_FRAME_HDR + len;
    return 0;
}

int rw_frame_encode(const json_t *msg, char **out, size_t *outlen)
{
    char *s = json_dumps(msg, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (!s)
        return -1;
    int rc = rw_frame_encode_raw(s, strlen(s), out, outlen);
    free(s);
    return rc;
}

int rw_fd_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int rw_frame_send_fd(int fd, const json_t *msg)
{
    char *b;
    size_t n;
    if (rw_frame_encode(msg, &b, &n) != 0)
        return -1;
    int rc = rw_fd_write_all(fd, b, n);
    free(b);
    return rc;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int rw_frame_recv_fd(int fd, rw_frame_reader *r, json_t **out, int timeout_ms, char *err,
                     size_t errlen)
{
    long long deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : 0;
    for (;;) {
        rw_frame_status st = rw_frame_reader_next(r, out, err, errlen);
        if (st == RW_FRAME_OK)
            return 1;
        if (st != RW_FRAME_NEED_MORE)
            return -1;
        int wait = -1;
        if (timeout_ms >= 0) {
            long long left = deadline - now_ms();
            if (left <= 0)
                return 0;
            wait = (int)left;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, wait);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0) {
            snprintf(err, errlen, "poll: %s", strerror(errno));
            return -1;
        }
        if (pr == 0)
            continue; /* the deadline check above returns 0 */
        char buf[65536];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            snprintf(err, errlen, "read: %s", strerror(errno));
            return -1;
        }
        if (n == 0) {
            snprintf(err, errlen, "connection closed");
            return -1;
        }
        if (rw_frame_reader_feed(r, buf, (size_t)n) != 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
}
