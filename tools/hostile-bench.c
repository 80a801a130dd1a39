/* hostile-bench-load: the hostile clients and the program behind
 * tools/hostile-bench (which starts the daemon, the worker and the job, and
 * prints the table). For --seconds it runs, all at once:
 *   openers     N TCP connections a second that never send a byte
 *   slowloris   M clients (TCP with the token, or the Unix socket): hello,
 *               then a frame cut short, one more byte of it every --trickle s
 *   pipeliners  K TCP clients with the token: hello, then `curves` requests
 *               as fast as the daemon takes them, never reading a reply
 * and, each on a thread of its own so that the load loop does not delay it
 * (hostile-bench-measure.c):
 *   probe       `runaway ls` (the real CLI, Unix socket) every 100 ms
 *   pinger      one Unix connection held from before the load, sending
 *               `workers` (no database) every 10 ms, one at a time: a reply
 *               waits for what the loop does first, one or two of its
 *               iterations, so the longest round trip measures the longest
 *               stall a client sees, from ~10 ms up (the daemon logs only
 *               those of 3 s and more)
 *   sampler     the daemon's VmRSS and VmHWM every 100 ms
 * A slowloris client or pipeliner that the daemon closes connects again
 * 1 s later, as an attacker would. Then --settle seconds without them.
 * Results: `key=value` lines on stdout; every probe, ping and RSS sample
 * as CSV under --out. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto/frame.h"
#include "proto/msg.h"
#include "tools/hostile-bench.h"

enum { OPENER, SLOWLORIS, PIPELINER, NCLASS };
static const char *class_name[NCLASS] = {"opener", "slowloris", "pipeliner"};

/* where a hostile client is */
enum { P_WAIT, P_CONNECTING, P_IDLE, P_HELLO, P_STALLED, P_PIPELINING };

typedef struct peer {
    int cls, state, fd;
    int answered;        /* hello's ok came (openers: the hello timeout's error) */
    double t_conn;       /* when the connection was made */
    double t_next;       /* P_WAIT: connect again at; P_STALLED: the next byte at */
    const char *out;     /* bytes being written: hello, the cut frame, the pipeline */
    size_t out_len, out_off;
    rw_frame_reader rd;
    struct peer *prev, *next; /* openers: the live ones */
} peer;

typedef struct {
    long attempts;       /* connect() calls */
    long conn_failed;    /* connect() refused, reset or timed out */
    long local_fail;     /* ours: out of fds or ports, not the daemon's doing */
    long refused;        /* closed before hello's ok; openers: closed without a word */
    long dropped;        /* closed after hello's ok; openers: closed by the hello timeout */
    long open_end;       /* still open when the load stopped */
    long connecting_end; /* connect() still in progress then: the accept queue was full */
    long requests;       /* pipeliners: curves requests written whole */
    double *held, *held_refused; /* seconds each dropped, refused connection had lasted */
    size_t nheld, capheld, nrefused, caprefused;
    char last_error[160]; /* the daemon's last error message to this class */
} class_stats;

static class_stats stats[NCLASS];
static struct sockaddr_in tcp_addr;
static char token[300];
static char *hello_buf, *cut_buf, *pipe_buf;
static size_t hello_len, cut_len, pipe_len;
#define PIPE_REQS 512 /* requests in pipe_buf */

/* ------------------------------------------------------------------------ */
/* The frames the hostile clients send, made once */

static void make_frames(void)
{
    json_t *h = rw_msg_new("hello", 1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("client"));
    /* the Unix socket ignores the token; TCP needs it */
    json_object_set_new(h, "token", json_string(token));
    if (rw_frame_encode(h, &hello_buf, &hello_len) != 0)
        abort();
    json_decref(h);
    /* a frame that announces 64 KiB and sends its first bytes: within the
     * 1 MiB limit, so only a deadline on a frame's arrival ends it */
    static const char body[] = "{\"type\":\"ls\",\"id\":2,";
    uint32_t n = 65536;
    cut_len = RW_FRAME_HDR + sizeof body - 1;
    cut_buf = malloc(cut_len);
    cut_buf[0] = (char)(n >> 24), cut_buf[1] = (char)(n >> 16);
    cut_buf[2] = (char)(n >> 8), cut_buf[3] = (char)n;
    memcpy(cut_buf + RW_FRAME_HDR, body, sizeof body - 1);
    /* requests back to back: written round and round, the stream stays
     * cut at frame boundaries */
    for (int i = 0; i < PIPE_REQS; i++) {
        json_t *m = rw_msg_new("curves", 1000 + i);
        json_object_set_new(m, "target", json_string(hb_opt.curves));
        char *b;
        size_t bn;
        if (rw_frame_encode(m, &b, &bn) != 0 || !(pipe_buf = realloc(pipe_buf, pipe_len + bn)))
            abort();
        json_decref(m);
        memcpy(pipe_buf + pipe_len, b, bn);
        pipe_len += bn;
        free(b);
    }
}

/* ------------------------------------------------------------------------ */
/* The hostile clients: one epoll loop */

static int ep;
static peer **peers; /* slowloris clients and pipeliners, who come back */
static size_t npeers;
static peer *openers; /* live openers, connected or connecting */

static void watch(peer *p, uint32_t ev, int op)
{
    struct epoll_event e = {.events = ev | EPOLLRDHUP, .data.ptr = p};
    epoll_ctl(ep, op, p->fd, &e);
}

/* Starts a connection: 0, or -1 when it failed at once (counted). */
static int peer_connect(peer *p)
{
    class_stats *s = &stats[p->cls];
    int on_unix = p->cls == SLOWLORIS && hb_opt.slowloris_unix;
    s->attempts++;
    p->fd = socket(on_unix ? AF_UNIX : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd < 0) {
        s->local_fail++;
        return -1;
    }
    int rc = on_unix ? connect(p->fd, (struct sockaddr *)&hb_unix_addr, sizeof hb_unix_addr)
                     : connect(p->fd, (struct sockaddr *)&tcp_addr, sizeof tcp_addr);
    if (rc != 0 && errno != EINPROGRESS) {
        /* EAGAIN: a Unix listener's queue is full, a refusal too */
        if (errno == EADDRNOTAVAIL || errno == EMFILE || errno == ENFILE)
            s->local_fail++;
        else
            s->conn_failed++;
        close(p->fd);
        p->fd = -1;
        return -1;
    }
    p->state = P_CONNECTING;
    p->answered = 0;
    p->t_conn = hb_now();
    p->out_off = p->out_len = 0;
    rw_frame_reader_init(&p->rd, 64 * 1024);
    watch(p, EPOLLOUT, EPOLL_CTL_ADD);
    return 0;
}

/* The daemon closed it (or refused it, or our write failed). Openers go;
 * the others connect again 1 s later. */
static void peer_closed(peer *p)
{
    class_stats *s = &stats[p->cls];
    if (p->state == P_CONNECTING) {
        s->conn_failed++;
    } else if (p->answered) {
        s->dropped++;
        hb_push(&s->held, &s->nheld, &s->capheld, hb_now() - p->t_conn);
    } else {
        s->refused++;
        hb_push(&s->held_refused, &s->nrefused, &s->caprefused, hb_now() - p->t_conn);
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, p->fd, NULL);
    close(p->fd);
    p->fd = -1;
    rw_frame_reader_free(&p->rd);
    if (p->cls == OPENER) {
        if (p->prev)
            p->prev->next = p->next;
        else
            openers = p->next;
        if (p->next)
            p->next->prev = p->prev;
        free(p);
        return;
    }
    p->state = P_WAIT;
    p->t_next = hb_now() + 1;
}

/* Writes what is left of p->out; a pipeline starts over at its end.
 * -1: the connection is gone. */
static int peer_write(peer *p)
{
    /* a bounded slice per turn, so that one pipeliner does not starve the others */
    size_t budget = 256 * 1024;
    while (p->out_off < p->out_len && budget > 0) {
        size_t n = p->out_len - p->out_off;
        if (n > budget)
            n = budget;
        ssize_t w = send(p->fd, p->out + p->out_off, n, MSG_NOSIGNAL);
        if (w < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        p->out_off += (size_t)w;
        budget -= (size_t)w;
        if (p->state == P_PIPELINING && p->out_off == p->out_len) {
            stats[PIPELINER].requests += PIPE_REQS;
            p->out_off = 0;
        }
    }
    return 0;
}

/* One frame from the daemon: hello's ok, or an error before it closes. */
static int peer_frame(peer *p, json_t *m)
{
    const char *type = json_string_value(json_object_get(m, "type"));
    if (type && !strcmp(type, "error")) {
        const char *code = json_string_value(json_object_get(m, "code"));
        char msg[128];
        hb_printable(msg, sizeof msg, json_string_value(json_object_get(m, "message")));
        snprintf(stats[p->cls].last_error, sizeof stats[p->cls].last_error, "%s: %s",
                 code ? code : "?", msg);
        /* an opener closed for its silence was timed out, not refused */
        if (p->cls == OPENER && code && !strcmp(code, RW_E_HELLO))
            p->answered = 1;
        return 0;
    }
    if (!type || strcmp(type, "ok") != 0 || p->state != P_HELLO)
        return 0;
    p->answered = 1;
    if (p->cls == SLOWLORIS) {
        p->state = P_STALLED;
        p->out = cut_buf, p->out_len = cut_len, p->out_off = 0;
        p->t_next = hb_now() + hb_opt.trickle;
        return peer_write(p);
    }
    /* from here on never read: the replies pile up at the daemon */
    p->state = P_PIPELINING;
    p->out = pipe_buf, p->out_len = pipe_len, p->out_off = 0;
    watch(p, EPOLLOUT, EPOLL_CTL_MOD);
    return 0;
}

/* Reads what the daemon sent. -1: the connection is gone. */
static int peer_read(peer *p)
{
    char buf[16384];
    for (;;) {
        ssize_t n = recv(p->fd, buf, sizeof buf, 0);
        if (n == 0)
            return -1;
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        if (rw_frame_reader_feed(&p->rd, buf, (size_t)n) != 0)
            return -1;
        json_t *m;
        char err[256];
        while (p->state != P_PIPELINING &&
               rw_frame_reader_next(&p->rd, &m, err, sizeof err) == RW_FRAME_OK) {
            int rc = peer_frame(p, m);
            json_decref(m);
            if (rc != 0)
                return -1;
        }
        if (p->state == P_PIPELINING)
            return 0;
    }
}

static void peer_event(peer *p, uint32_t ev)
{
    if (p->state == P_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
            peer_closed(p);
            return;
        }
        p->t_conn = hb_now();
        if (p->cls == OPENER) {
            p->state = P_IDLE;
        } else {
            p->state = P_HELLO;
            p->out = hello_buf, p->out_len = hello_len, p->out_off = 0;
            if (peer_write(p) != 0) {
                peer_closed(p);
                return;
            }
        }
        watch(p, EPOLLIN, EPOLL_CTL_MOD);
        return;
    }
    if (p->state == P_PIPELINING) {
        /* not reading: the daemon's FIN or RST is all we look for */
        if ((ev & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) || peer_write(p) != 0)
            peer_closed(p);
        return;
    }
    if (peer_read(p) != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
        peer_closed(p);
        return;
    }
    /* a hello the socket did not take whole (it never happens on loopback) */
    if (p->state == P_HELLO && p->out_off < p->out_len && peer_write(p) != 0)
        peer_closed(p);
}

static void open_opener(void)
{
    peer *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->cls = OPENER;
    if (peer_connect(p) != 0) {
        free(p);
        return;
    }
    p->next = openers;
    if (openers)
        openers->prev = p;
    openers = p;
}

/* Counts what is held at the end and lets it all go. */
static void tally_end(peer *p)
{
    if (p->state == P_CONNECTING)
        stats[p->cls].connecting_end++;
    else if (p->state != P_WAIT)
        stats[p->cls].open_end++;
    if (p->fd >= 0)
        close(p->fd);
    rw_frame_reader_free(&p->rd);
}

static void load_loop(void)
{
    ep = epoll_create1(EPOLL_CLOEXEC);
    npeers = (size_t)hb_opt.slowloris + (size_t)hb_opt.pipeliners;
    peers = calloc(npeers ? npeers : 1, sizeof *peers);
    for (size_t i = 0; i < npeers; i++) {
        peers[i] = calloc(1, sizeof **peers);
        peers[i]->cls = i < (size_t)hb_opt.slowloris ? SLOWLORIS : PIPELINER;
        peers[i]->state = P_WAIT; /* t_next 0: all at once */
        peers[i]->fd = -1;
    }
    long opened = 0;
    struct epoll_event evs[256];
    for (double t = hb_now(); t < hb_t0 + hb_opt.seconds; t = hb_now()) {
        long due = (long)(hb_opt.openers * (t - hb_t0)) - opened;
        for (; due > 0; due--, opened++)
            open_opener();
        for (size_t i = 0; i < npeers; i++) {
            peer *p = peers[i];
            if (p->state == P_WAIT && t >= p->t_next) {
                if (peer_connect(p) != 0)
                    p->t_next = t + 1;
            } else if (p->state == P_STALLED && hb_opt.trickle > 0 && t >= p->t_next) {
                /* one more byte of the cut frame: a space, still valid JSON */
                p->out = " ", p->out_len = 1, p->out_off = 0;
                p->t_next = t + hb_opt.trickle;
                if (peer_write(p) != 0)
                    peer_closed(p);
            }
        }
        int n = epoll_wait(ep, evs, 256, 10);
        for (int i = 0; i < n; i++)
            peer_event(evs[i].data.ptr, evs[i].events);
    }
    for (size_t i = 0; i < npeers; i++) {
        tally_end(peers[i]);
        free(peers[i]);
    }
    while (openers) {
        peer *p = openers;
        openers = p->next;
        tally_end(p);
        free(p);
    }
    close(ep);
}

/* Per class: what happened to its connections, as key=value lines. */
static void print_classes(void)
{
    for (int c = 0; c < NCLASS; c++) {
        class_stats *s = &stats[c];
        const char *k = class_name[c];
        printf("%s_attempts=%ld\n%s_conn_failed=%ld\n%s_local_fail=%ld\n", k, s->attempts, k,
               s->conn_failed, k, s->local_fail);
        printf("%s_refused=%ld\n%s_dropped=%ld\n%s_open_end=%ld\n%s_connecting_end=%ld\n", k,
               s->refused, k, s->dropped, k, s->open_end, k, s->connecting_end);
        printf("%s_held_p50_s=%.1f\n%s_refused_held_p50_s=%.1f\n%s_last_error=%s\n", k,
               hb_quantile(s->held, s->nheld, 0.5), k,
               hb_quantile(s->held_refused, s->nrefused, 0.5), k, s->last_error);
    }
    printf("pipeliner_requests=%ld\n", stats[PIPELINER].requests);
}

/* ------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: hostile-bench-load --state-dir DIR --tcp HOST:PORT --token-file F\n"
               "         --cli PATH --pid DAEMON_PID [--openers N/s] [--slowloris M]\n"
               "         [--pipeliners K] [--seconds S] [--settle S] [--trickle S]\n"
               "         [--curves TARGET] [--slowloris-unix] [--probe-timeout S] [--out DIR]\n"
               "       hostile-bench-load --free-port   (prints a free TCP port of 127.0.0.1)\n"
               "(tools/hostile-bench runs it; see there)\n");
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) != 0)
        return 1;
    printf("%d\n", ntohs(a.sin_port));
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--free-port"))
            return free_port();
        if (!strcmp(a, "--slowloris-unix")) {
            hb_opt.slowloris_unix = 1;
            continue;
        }
        if (!v) {
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--state-dir"))
            hb_opt.state_dir = v;
        else if (!strcmp(a, "--tcp"))
            hb_opt.tcp = v;
        else if (!strcmp(a, "--token-file"))
            hb_opt.token_file = v;
        else if (!strcmp(a, "--cli"))
            hb_opt.cli = v;
        else if (!strcmp(a, "--out"))
            hb_opt.out_dir = v;
        else if (!strcmp(a, "--curves"))
            hb_opt.curves = v;
        else if (!strcmp(a, "--pid"))
            hb_opt.daemon_pid = atoi(v);
        else if (!strcmp(a, "--openers"))
            hb_opt.openers = atof(v);
        else if (!strcmp(a, "--slowloris"))
            hb_opt.slowloris = atoi(v);
        else if (!strcmp(a, "--pipeliners"))
            hb_opt.pipeliners = atoi(v);
        else if (!strcmp(a, "--seconds"))
            hb_opt.seconds = atof(v);
        else if (!strcmp(a, "--settle"))
            hb_opt.settle = atof(v);
        else if (!strcmp(a, "--trickle"))
            hb_opt.trickle = atof(v);
        else if (!strcmp(a, "--probe-timeout"))
            hb_opt.probe_timeout = atof(v);
        else {
            usage(stderr);
            return 2;
        }
    }
    const char *colon = hb_opt.tcp ? strrchr(hb_opt.tcp, ':') : NULL;
    if (!hb_opt.state_dir || !colon || !hb_opt.token_file || !hb_opt.cli ||
        hb_opt.daemon_pid <= 0 || hb_opt.openers < 0 || hb_opt.slowloris < 0 ||
        hb_opt.pipeliners < 0 || !(hb_opt.seconds > 0)) {
        usage(stderr);
        return 2;
    }
    tcp_addr.sin_family = AF_INET;
    tcp_addr.sin_port = htons((uint16_t)atoi(colon + 1));
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - hb_opt.tcp), hb_opt.tcp);
    if (inet_pton(AF_INET, host, &tcp_addr.sin_addr) != 1) {
        fprintf(stderr, "hostile-bench-load: --tcp wants an IPv4 address: %s\n", hb_opt.tcp);
        return 2;
    }
    hb_unix_addr.sun_family = AF_UNIX;
    if (snprintf(hb_unix_addr.sun_path, sizeof hb_unix_addr.sun_path, "%s/runawayd.sock",
                 hb_opt.state_dir) >= (int)sizeof hb_unix_addr.sun_path) {
        fprintf(stderr, "hostile-bench-load: %s: path too long for a socket\n", hb_opt.state_dir);
        return 2;
    }
    FILE *f = fopen(hb_opt.token_file, "r");
    if (!f || !fgets(token, sizeof token, f)) {
        fprintf(stderr, "hostile-bench-load: %s: cannot read the token\n", hb_opt.token_file);
        return 1;
    }
    fclose(f);
    token[strcspn(token, "\r\n")] = '\0';
    signal(SIGPIPE, SIG_IGN);
    make_frames();

    if (hb_measure_start() != 0) {
        fprintf(stderr, "hostile-bench-load: no answer to hello on %s\n", hb_unix_addr.sun_path);
        return 1;
    }
    load_loop();
    atomic_store(&hb_phase, 1);
    hb_sleep(hb_t0 + hb_opt.seconds + hb_opt.settle - hb_now());
    atomic_store(&hb_phase, 2);
    hb_measure_join();
    printf("seconds=%g\nsettle=%g\n", hb_opt.seconds, hb_opt.settle);
    hb_measure_print();
    print_classes();
    return 0;
}
