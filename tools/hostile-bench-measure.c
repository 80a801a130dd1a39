/* hostile-bench-load's measurements, each on a thread of its own so that
 * the load loop does not delay them: the probe (`runaway ls` every 100 ms),
 * the pinger (`workers` every 10 ms on one held connection) and the
 * daemon's RSS every 100 ms. See hostile-bench.c. */
#define _GNU_SOURCE /* pipe2 */
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proto/frame.h"
#include "proto/msg.h"
#include "tools/hostile-bench.h"

extern char **environ;

typedef struct {
    double t, ms; /* start (s from the load's start), latency */
    int ok;
} sample;

typedef struct {
    sample *v;
    size_t n, cap;
} samples;

static void add_sample(samples *s, double t, double ms, int ok)
{
    if (s->n == s->cap) {
        size_t c = s->cap ? s->cap * 2 : 4096;
        sample *b = realloc(s->v, c * sizeof *b);
        if (!b)
            return;
        s->v = b;
        s->cap = c;
    }
    s->v[s->n++] = (sample){t, ms, ok};
}

static samples probes, pings;
static long probe_timeouts;
static char probe_first_error[200], probe_last_error[200];
static long ping_lost, ping_timeouts;
static double ping_down_s; /* time the pinger spent without a connection */

/* One `runaway ls`: its latency in ms; *ok when it exited 0 in time. */
static double probe_once(int *ok)
{
    int pfd[2];
    *ok = 0;
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return NAN;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
    char *argv[] = {(char *)hb_opt.cli, "--state-dir", (char *)hb_opt.state_dir, "ls", NULL};
    double start = hb_now();
    pid_t pid;
    int rc = posix_spawn(&pid, hb_opt.cli, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (rc != 0) {
        close(pfd[0]);
        return NAN;
    }
    char err[4096];
    size_t have = 0;
    int timed_out = 0;
    for (;;) {
        double left = start + hb_opt.probe_timeout - hb_now();
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)(left * 1000) + 1) == 0) {
            timed_out = 1;
            kill(pid, SIGKILL);
            break;
        }
        ssize_t n = read(pfd[0], err + have, sizeof err - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        if (have == sizeof err - 1)
            have = 0; /* keep reading to EOF; only the start is quoted */
    }
    err[have] = '\0';
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    double ms = (hb_now() - start) * 1000;
    *ok = !timed_out && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!*ok) {
        char line[200];
        if (timed_out) {
            probe_timeouts++;
            snprintf(line, sizeof line, "no answer within %.0f s", hb_opt.probe_timeout);
        } else {
            hb_printable(line, sizeof line, err);
        }
        if (!probe_first_error[0])
            snprintf(probe_first_error, sizeof probe_first_error, "%s", line);
        snprintf(probe_last_error, sizeof probe_last_error, "%s", line);
    }
    return ms;
}

/* `runaway ls` every 100 ms (at once after one that took longer). */
static void *probe_main(void *arg)
{
    (void)arg;
    while (atomic_load(&hb_phase) < 2) {
        double start = hb_now();
        int ok;
        double ms = probe_once(&ok);
        add_sample(&probes, start - hb_t0, ms, ok);
        hb_sleep(start + 0.1 - hb_now());
    }
    return NULL;
}

static int unix_connect_hello(rw_frame_reader *r)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    json_t *h = rw_msg_new("hello", 1), *rep = NULL;
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("client"));
    char err[256];
    int ok = connect(fd, (struct sockaddr *)&hb_unix_addr, sizeof hb_unix_addr) == 0 &&
             rw_frame_send_fd(fd, h) == 0 &&
             rw_frame_recv_fd(fd, r, &rep, 5000, err, sizeof err) == 1 &&
             !strcmp(json_string_value(json_object_get(rep, "type")) ?: "", "ok");
    json_decref(h);
    json_decref(rep);
    if (!ok) {
        close(fd);
        return -1;
    }
    return fd;
}

static int pinger_fd = -1;
static rw_frame_reader pinger_rd;

/* `workers` every 10 ms on one held connection; each round trip waits for
 * whatever the loop does before it reads and answers this request. */
static void *pinger_main(void *arg)
{
    (void)arg;
    long long id = 10;
    while (atomic_load(&hb_phase) < 2) {
        if (pinger_fd < 0) {
            double down = hb_now();
            while (pinger_fd < 0 && atomic_load(&hb_phase) < 2) {
                rw_frame_reader_free(&pinger_rd);
                rw_frame_reader_init(&pinger_rd, 0);
                pinger_fd = unix_connect_hello(&pinger_rd);
                if (pinger_fd < 0)
                    hb_sleep(0.1);
            }
            ping_down_s += hb_now() - down;
            continue;
        }
        double start = hb_now();
        json_t *m = rw_msg_new("workers", ++id);
        int sent = rw_frame_send_fd(pinger_fd, m) == 0, got = 0, late = 0;
        json_decref(m);
        /* waited for past the run's end too, as the probe is: a stall that
         * outlasts the load is measured whole */
        while (sent && !got && !late) {
            json_t *rep = NULL;
            char err[256];
            int rc = rw_frame_recv_fd(pinger_fd, &pinger_rd, &rep, 1000, err, sizeof err);
            if (rc < 0)
                break;
            got = rc == 1 && rw_msg_id(rep) == id;
            json_decref(rep);
            late = !got && hb_now() - start > hb_opt.probe_timeout;
        }
        add_sample(&pings, start - hb_t0, (hb_now() - start) * 1000, got);
        if (!got) {
            if (late)
                ping_timeouts++;
            else
                ping_lost++;
            close(pinger_fd);
            pinger_fd = -1;
            continue;
        }
        hb_sleep(start + 0.01 - hb_now());
    }
    return NULL;
}

static long rss_first = -1, rss_peak, rss_last, hwm_last;
static double rss_peak_t, daemon_gone_t = -1;
static samples rss_series; /* ms field holds kB */

/* VmRSS and VmHWM in kB; -1 when the daemon is gone. */
static int read_rss(long *rss, long *hwm)
{
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/status", hb_opt.daemon_pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return -1;
    *rss = *hwm = -1;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "VmRSS: %ld", rss);
        sscanf(line, "VmHWM: %ld", hwm);
    }
    fclose(f);
    return *rss >= 0 ? 0 : -1; /* a zombie has no VmRSS */
}

static void *sampler_main(void *arg)
{
    (void)arg;
    while (atomic_load(&hb_phase) < 2) {
        long rss, hwm;
        double t = hb_now() - hb_t0;
        if (read_rss(&rss, &hwm) != 0) {
            if (daemon_gone_t < 0)
                daemon_gone_t = t;
        } else {
            if (rss_first < 0)
                rss_first = rss;
            if (rss > rss_peak)
                rss_peak = rss, rss_peak_t = t;
            rss_last = rss;
            hwm_last = hwm;
            add_sample(&rss_series, t, (double)rss, 1);
        }
        hb_sleep(0.1);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Results */

/* Latency statistics of the samples that started in [from, to). A failure
 * ranks above every latency (a failed probe is worse than a slow one): a
 * quantile that lands on one is "inf". worst: the longest wait, failures
 * included. */
static void report(const char *key, samples *s, double from, double to)
{
    double *v = malloc((s->n + 1) * sizeof *v);
    size_t n = 0;
    long failed = 0;
    double worst = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].t < from || s->v[i].t >= to)
            continue;
        worst = fmax(worst, s->v[i].ms);
        v[n++] = s->v[i].ok ? s->v[i].ms : INFINITY;
        failed += !s->v[i].ok;
    }
    printf("%s_runs=%zu\n%s_failed=%ld\n", key, n, key, failed);
    printf("%s_p50_ms=%.1f\n", key, hb_quantile(v, n, 0.5));
    printf("%s_p99_ms=%.1f\n", key, hb_quantile(v, n, 0.99));
    printf("%s_worst_ms=%.1f\n", key, n ? worst : NAN);
    free(v);
}

static void write_csv(const char *name, samples *s, const char *header)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", hb_opt.out_dir, name);
    FILE *f = fopen(p, "w");
    if (!f)
        return;
    fprintf(f, "%s\n", header);
    for (size_t i = 0; i < s->n; i++)
        fprintf(f, "%.3f,%.1f,%d\n", s->v[i].t, s->v[i].ms, s->v[i].ok);
    fclose(f);
}

static pthread_t threads[3];

int hb_measure_start(void)
{
    rw_frame_reader_init(&pinger_rd, 0);
    pinger_fd = unix_connect_hello(&pinger_rd);
    if (pinger_fd < 0)
        return -1;
    hb_t0 = hb_now();
    pthread_create(&threads[0], NULL, probe_main, NULL);
    pthread_create(&threads[1], NULL, pinger_main, NULL);
    pthread_create(&threads[2], NULL, sampler_main, NULL);
    return 0;
}

void hb_measure_join(void)
{
    for (int i = 0; i < 3; i++)
        pthread_join(threads[i], NULL);
}

void hb_measure_print(void)
{
    double load_end = hb_opt.seconds, end = 1e18;
    report("probe", &probes, 0, load_end);
    report("probe_after", &probes, load_end, end);
    printf("probe_timeouts=%ld\nprobe_first_error=%s\nprobe_last_error=%s\n", probe_timeouts,
           probe_first_error, probe_last_error);
    report("ping", &pings, 0, load_end);
    report("ping_after", &pings, load_end, end);
    printf("ping_lost=%ld\nping_timeouts=%ld\nping_down_s=%.1f\n", ping_lost, ping_timeouts,
           ping_down_s);
    printf("rss_first_kb=%ld\nrss_peak_kb=%ld\nrss_peak_t=%.1f\nrss_last_kb=%ld\nhwm_kb=%ld\n",
           rss_first, rss_peak, rss_peak_t, rss_last, hwm_last);
    printf("daemon_gone_t=%.1f\n", daemon_gone_t);
    write_csv("probes.csv", &probes, "t_s,latency_ms,ok");
    write_csv("pings.csv", &pings, "t_s,rtt_ms,ok");
    write_csv("rss.csv", &rss_series, "t_s,rss_kb,ok");
}
