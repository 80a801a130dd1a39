/* runawayd under hostile load: floods of token-less TCP connections,
 * clients stalled in a frame, remote workers that come and go, and clients
 * that pipeline requests without reading the replies. Each test failed
 * before the daemon had connection budgets, deadlines, backpressure and
 * freed worker slots (issue 19, F1 to F4). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon_fixture.h"
#include "proto/frame.h"
#include "proto/msg.h"

#define TOKEN "load-test-token-0123456789abcdefghijklmnop"

/* ------------------------------------------------------------------------ */
/* The daemon: the fixture's, with one CPU slot and TCP on a free port */

static int port;

static int tcp_connect(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(0x7f000001)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void setup(void)
{
    /* a flood needs file descriptors: the hard limit */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    fx_prepare();
    char tok[128];
    snprintf(tok, sizeof tok, "%s/token", fx.dir);
    int fd = open(tok, O_WRONLY | O_CREAT, 0600);
    cr_assert_eq(write(fd, TOKEN "\n", strlen(TOKEN) + 1), (ssize_t)strlen(TOKEN) + 1);
    close(fd);
    port = fx_free_tcp_port();
    static char addr[32]; /* fx_start_daemon keeps the pointer */
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    fx_start_daemon("--cpu-slots", "1", "--heartbeat-timeout", "5", "--tcp", addr, NULL);
}

/* ------------------------------------------------------------------------ */
/* Raw clients */

static json_t *recv_frame(int fd, rw_frame_reader *r, int timeout_ms)
{
    json_t *m = NULL;
    char err[256];
    return rw_frame_recv_fd(fd, r, &m, timeout_ms, err, sizeof err) == 1 ? m : NULL;
}

static void send_msg(int fd, json_t *m)
{
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
}

static json_t *hello_msg(const char *role, int with_token)
{
    json_t *h = rw_msg_new("hello", 1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string(role));
    if (with_token)
        json_object_set_new(h, "token", json_string(TOKEN));
    return h;
}

/* A hello's reply type ("ok" or "error"), or NULL without one in time. */
static const char *hello(int fd, rw_frame_reader *r, json_t *h, char *out, size_t len)
{
    send_msg(fd, h);
    json_t *rep = recv_frame(fd, r, 10000);
    if (!rep)
        return NULL;
    snprintf(out, len, "%s", json_string_value(json_object_get(rep, "type")));
    if (!strcmp(out, "error"))
        fprintf(stderr, "hello refused: %s\n", json_string_value(json_object_get(rep, "message")));
    json_decref(rep);
    return out;
}

/* A fresh local client's status request: its seconds, or -1 when it got
 * no reply (refused, reset, or nothing within 10 s). */
static double status_probe(void)
{
    double t0 = fx_now();
    int fd = fx_connect();
    if (fd < 0)
        return -1;
    rw_frame_reader r;
    rw_frame_reader_init(&r, 0);
    char type[16];
    double took = -1;
    if (hello(fd, &r, hello_msg("client", 0), type, sizeof type) && !strcmp(type, "ok")) {
        send_msg(fd, rw_msg_new("status", 2));
        json_t *rep = recv_frame(fd, &r, 10000);
        if (rep && !strcmp(json_string_value(json_object_get(rep, "type")), "ok"))
            took = fx_now() - t0;
        json_decref(rep);
    }
    close(fd);
    rw_frame_reader_free(&r);
    return took;
}

/* 1 if the daemon has closed fd (EOF or reset), without waiting */
static int closed_now(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char b[4096];
    while (poll(&p, 1, 0) > 0) {
        ssize_t n = read(fd, b, sizeof b);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0)
            return 0;
    }
    return 0;
}

static long daemon_rss_kb(void)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)fx.daemon_pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

TestSuite(daemon_load, .init = setup, .fini = fx_teardown, .timeout = 120);

/* F1: a peer without the token opening connections and sending nothing
 * held every slot, and local users were refused. Now the connections
 * without hello have a budget of their own (TCP apart), the oldest going
 * first, and local clients are served throughout. */
Test(daemon_load, tokenless_tcp_flood_leaves_local_clients_served)
{
    enum { FLOOD = 1100 };
    static int fds[FLOOD];
    int opened = 0;
    for (int i = 0; i < FLOOD; i++)
        if ((fds[i] = tcp_connect()) >= 0)
            opened++;
    cr_assert_geq(opened, FLOOD * 9 / 10, "only %d of %d TCP connections opened", opened, FLOOD);
    int served = 0;
    double worst = 0;
    for (int i = 0; i < 20; i++) {
        double t = status_probe();
        served += t >= 0;
        if (t > worst)
            worst = t;
    }
    cr_expect_eq(served, 20, "%d of 20 local status requests answered during the flood", served);
    int dropped = 0;
    usleep(200000);
    for (int i = 0; i < FLOOD; i++)
        if (fds[i] >= 0) {
            dropped += closed_now(fds[i]);
            close(fds[i]);
        }
    /* all but the budget's worth (256) of the newest */
    cr_expect_geq(dropped, opened - 256 - 2, "the daemon dropped only %d of %d token-less "
                  "connections", dropped, opened);
    cr_log_info("flood: %d local status requests answered, slowest %.3f s; %d of %d dropped",
                served, worst, dropped, opened);
}

/* F2: clients that said hello, then stalled in the middle of a frame, were
 * never timed out; 1100 of them held every slot. Now the stalest client
 * makes room for a new one, and a frame begun must be complete within
 * RD_FRAME_DEADLINE_S (15 s). */
Test(daemon_load, clients_stalled_in_a_frame_are_dropped)
{
    enum { STALLED = 1100 };
    static int fds[STALLED];
    int in = 0;
    const unsigned char partial[] = {0, 0, 0, 200, '{', '"', 't', 'y'}; /* 200 announced */
    for (int i = 0; i < STALLED; i++) {
        fds[i] = fx_connect();
        if (fds[i] < 0)
            continue;
        rw_frame_reader r;
        rw_frame_reader_init(&r, 0);
        char type[16];
        if (hello(fds[i], &r, hello_msg("client", 0), type, sizeof type) && !strcmp(type, "ok")) {
            rw_fd_write_all(fds[i], partial, sizeof partial);
            in++;
        }
        rw_frame_reader_free(&r);
    }
    cr_assert_geq(in, 1000, "only %d clients got in", in);
    int served = 0;
    for (int i = 0; i < 10; i++)
        served += status_probe() >= 0;
    cr_expect_eq(served, 10, "%d of 10 status requests answered among stalled clients", served);
    /* past the frame deadline (and a tick), every stalled client is gone */
    sleep(17);
    int dropped = 0;
    for (int i = 0; i < STALLED; i++)
        if (fds[i] >= 0) {
            dropped += closed_now(fds[i]);
            close(fds[i]);
        }
    cr_expect_eq(dropped, in, "%d of %d stalled clients dropped after the deadline", dropped, in);
}

/* F3: a remote worker's slot was never freed: after 253 that came and
 * went, every new worker got "hello: too many workers". */
Test(daemon_load, remote_workers_that_leave_free_their_slots)
{
    char type[16];
    for (int i = 0; i < 300; i++) {
        int fd = tcp_connect();
        cr_assert_geq(fd, 0);
        rw_frame_reader r;
        rw_frame_reader_init(&r, 0);
        json_t *h = hello_msg("worker", 1);
        json_object_set_new(h, "device", json_string("far0"));
        const char *got = hello(fd, &r, h, type, sizeof type);
        cr_assert(got && !strcmp(got, "ok"), "worker hello %d: %s", i, got ? got : "no reply");
        close(fd);
        rw_frame_reader_free(&r);
        /* its slot is freed when the daemon sees it go: a status request after
         * a few of them waits for that */
        if (i % 50 == 49)
            cr_assert_geq(status_probe(), 0);
    }
    /* the remote slots in use: none but those connected */
    int fd = fx_connect();
    rw_frame_reader r;
    rw_frame_reader_init(&r, 0);
    cr_assert(hello(fd, &r, hello_msg("client", 0), type, sizeof type));
    send_msg(fd, rw_msg_new("workers", 2));
    json_t *rep = recv_frame(fd, &r, 10000);
    cr_assert_not_null(rep);
    size_t i, remote = 0;
    json_t *v;
    json_array_foreach(json_object_get(rep, "workers"), i, v) remote +=
        json_is_true(json_object_get(v, "remote"));
    cr_expect_eq(remote, 0, "%zu remote workers listed after all left", remote);
    json_decref(rep);
    close(fd);
    rw_frame_reader_free(&r);
}

/* A grid of `jobs` finished jobs with `epochs` epochs of metrics each,
 * written into the daemon's database: curves of it is a big reply. */
static void big_grid(int jobs, int epochs)
{
    char path[128];
    snprintf(path, sizeof path, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE; INSERT INTO grids(id, name, priority, origin, "
                                  "text, created) VALUES(1, 'big', 0, 'big.yaml', 'x', 0);",
                              NULL, NULL, NULL), SQLITE_OK);
    for (int j = 1; j <= jobs; j++) {
        char sql[512];
        snprintf(sql, sizeof sql, "INSERT INTO jobs(id, grid_id, name, variant, seed, spec, devices, "
                 "priority, state, created) VALUES(%d, 1, 'big/v/seed%d', 'v', %d, 'x', 1, 0, "
                 "'done', 0)", j, j, j);
        cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        for (int e = 1; e <= epochs; e++) {
            snprintf(sql, sizeof sql, "INSERT INTO metrics(job_id, attempt_id, kind, epoch, step, "
                     "loss, align, uniform, collapse, knn, t) VALUES(%d, 1, 'epoch', %d, %d, "
                     "%.6f, %.6f, %.6f, 0.5, 0.25, 0)", j, e, e * 10, 1.0 / e, 0.1 * e, -1.0 - e);
            cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        }
    }
    cr_assert_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* F4: clients pipelining curves without reading the replies stalled the
 * loop for minutes and grew the daemon without bound. Now a client whose
 * replies pile up waits, queries run on the thread pool, and frames are
 * handled in turns: a probe is answered at once, the daemon stays small,
 * and each pipelining client still gets every reply once it reads. */
Test(daemon_load, pipelining_clients_wait_and_the_loop_goes_on)
{
    enum { CLIENTS = 20, REQUESTS = 30 };
    big_grid(20, 80);
    int fds[CLIENTS], sent[CLIENTS], got[CLIENTS];
    rw_frame_reader rs[CLIENTS];
    char type[16];
    static unsigned char seen[CLIENTS][REQUESTS + 2];
    memset(seen, 0, sizeof seen);
    for (int k = 0; k < CLIENTS; k++) {
        fds[k] = fx_connect();
        cr_assert_geq(fds[k], 0);
        rw_frame_reader_init(&rs[k], 0);
        cr_assert(hello(fds[k], &rs[k], hello_msg("client", 0), type, sizeof type));
        fcntl(fds[k], F_SETFL, fcntl(fds[k], F_GETFL) | O_NONBLOCK);
        sent[k] = got[k] = 0;
    }
    /* the requests, as far as the daemon takes them, replies unread */
    char *frame[REQUESTS + 2];
    size_t flen[REQUESTS + 2], foff[CLIENTS] = {0};
    for (int i = 2; i < REQUESTS + 2; i++) {
        json_t *m = rw_msg_new("curves", i);
        json_object_set_new(m, "target", json_string("g1"));
        cr_assert_eq(rw_frame_encode(m, &frame[i], &flen[i]), 0);
        json_decref(m);
    }
    for (double t0 = fx_now(); fx_now() - t0 < 3;) {
        int progress = 0;
        for (int k = 0; k < CLIENTS; k++) {
            while (sent[k] < REQUESTS) {
                const char *f = frame[sent[k] + 2];
                ssize_t w = write(fds[k], f + foff[k], flen[sent[k] + 2] - foff[k]);
                if (w <= 0)
                    break;
                progress = 1;
                foff[k] += (size_t)w;
                if (foff[k] == flen[sent[k] + 2]) {
                    foff[k] = 0;
                    sent[k]++;
                }
            }
        }
        if (!progress)
            usleep(50000);
    }
    long rss = daemon_rss_kb();
    double probe = status_probe();
    cr_expect(probe >= 0 && probe < 2.0, "a status request took %.3f s while %d clients "
              "pipelined curves (-1: no reply)", probe, CLIENTS);
    cr_expect(rss > 0 && rss < 100 * 1024, "runawayd holds %ld kB while clients do not read", rss);
    /* now they read: every reply comes, once */
    for (double t0 = fx_now(); fx_now() - t0 < 90;) {
        int done = 1;
        struct pollfd p[CLIENTS];
        for (int k = 0; k < CLIENTS; k++) {
            p[k] = (struct pollfd){.fd = fds[k], .events = POLLIN |
                                                        (sent[k] < REQUESTS ? POLLOUT : 0)};
            done &= got[k] == REQUESTS;
        }
        if (done)
            break;
        poll(p, CLIENTS, 200);
        for (int k = 0; k < CLIENTS; k++) {
            if (p[k].revents & POLLOUT) {
                const char *f = frame[sent[k] + 2];
                ssize_t w = write(fds[k], f + foff[k], flen[sent[k] + 2] - foff[k]);
                if (w > 0 && (foff[k] += (size_t)w) == flen[sent[k] + 2]) {
                    foff[k] = 0;
                    sent[k]++;
                }
            }
            if (!(p[k].revents & POLLIN))
                continue;
            char buf[65536];
            ssize_t n = read(fds[k], buf, sizeof buf);
            if (n <= 0)
                continue;
            rw_frame_reader_feed(&rs[k], buf, (size_t)n);
            json_t *m;
            char err[256];
            while (rw_frame_reader_next(&rs[k], &m, err, sizeof err) == RW_FRAME_OK) {
                long long id = rw_msg_id(m);
                cr_assert_str_eq(json_string_value(json_object_get(m, "type")), "ok");
                cr_assert(id >= 2 && id < REQUESTS + 2 && !seen[k][id], "reply %lld", id);
                seen[k][id] = 1;
                got[k]++;
                json_decref(m);
            }
        }
    }
    int all = 0;
    for (int k = 0; k < CLIENTS; k++) {
        all += got[k];
        close(fds[k]);
        rw_frame_reader_free(&rs[k]);
    }
    for (int i = 2; i < REQUESTS + 2; i++)
        free(frame[i]);
    cr_expect_eq(all, CLIENTS * REQUESTS, "%d of %d replies came", all, CLIENTS * REQUESTS);
    cr_log_info("pipelining: probe %.3f s, daemon %ld kB while they did not read", probe, rss);
}
