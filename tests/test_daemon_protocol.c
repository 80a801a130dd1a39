/* runawayd's wire and its clients on other hosts: hostile frames, TCP with
 * a token, a client without the data folder, sphere computations run for a
 * client elsewhere. Each test has a daemon of its own (daemon_fixture.h). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "daemon_fixture.h"

/* ------------------------------------------------------------------------ */
/* Hostile clients */

Test(daemon, hostile_frames_get_errors_and_the_daemon_serves_on, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    /* oversized: judged by the header (4 GiB announced; before hello the
     * limit is 4 KiB, after it 1 MiB) */
    unsigned char huge[4] = {0xff, 0xff, 0xff, 0xff};
    fx_expect_rejected(huge, 4, 0, RW_E_FRAME);
    fx_expect_rejected(huge, 4, 1, RW_E_FRAME);
    unsigned char k5[4] = {0, 0, 0x14, 0}; /* 5120 bytes before hello */
    fx_expect_rejected(k5, 4, 0, RW_E_FRAME);
    fx_expect_rejected_body("{\"type\": \"hel", 0, RW_E_FRAME); /* truncated JSON in a frame */
    fx_expect_rejected_body("[1, 2, 3]", 1, RW_E_FRAME);         /* not an object */
    fx_expect_rejected_body("{\"type\":\"status\",\"id\":1}", 0, RW_E_HELLO); /* hello first */
    fx_expect_rejected_body("{\"type\":\"hello\",\"id\":1,\"version\":99,\"role\":\"client\"}", 0,
                            RW_E_VERSION);
    fx_expect_rejected_body("{\"type\":\"hello\",\"id\":1,\"version\":2,\"role\":\"boss\"}", 0,
                            RW_E_BAD_MESSAGE);
    fx_expect_rejected_body("{\"type\":\"launch_missiles\",\"id\":3}", 1, RW_E_UNKNOWN_TYPE);
    /* a worker's */
    fx_expect_rejected_body("{\"type\":\"done\",\"job\":1,\"attempt\":1}", 1, RW_E_UNKNOWN_TYPE);
    fx_expect_rejected_body("{\"type\":\"show\",\"id\":3,\"job\":17}", 1, RW_E_BAD_MESSAGE);
    fx_expect_rejected_body(
        "{\"type\":\"hello\",\"id\":1,\"version\":2,\"role\":\"worker\",\"slot\":99}", 0,
        RW_E_STATE);

    /* a truncated frame, then the client vanishes: nothing to reply to */
    int fd = fx_connect();
    unsigned char part[6] = {0, 0, 0, 50, '{', '"'};
    rw_fd_write_all(fd, part, sizeof part);
    close(fd);
    fx_expect_still_serving();

    /* silence after connecting: dropped after 10 s with a hello error (the
     * other checks above ran meanwhile on other connections) */
    int idle = fx_connect();
    double t_idle = fx_now();

    /* a request for something that does not exist is an error, not a close */
    rw_frame_reader r;
    fd = fx_client(&r);
    json_t *m = rw_msg_new("show", 5);
    json_object_set_new(m, "job", json_string("j4242"));
    json_t *e = fx_request(fd, &r, m);
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), RW_E_NOT_FOUND);
    json_decref(e);
    m = rw_msg_new("status", 6);
    e = fx_request(fd, &r, m);
    cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "ok");
    json_decref(e);
    close(fd);
    rw_frame_reader_free(&r);

    rw_frame_reader ri;
    rw_frame_reader_init(&ri, 0);
    json_t *he = fx_recv(idle, &ri, 15000);
    cr_assert_not_null(he, "an idle connection was not dropped");
    cr_assert_str_eq(json_string_value(json_object_get(he, "code")), RW_E_HELLO);
    cr_assert_geq(fx_now() - t_idle, 8.0);
    json_decref(he);
    cr_assert(fx_closed_by_peer(idle, 3000));
    close(idle);
    rw_frame_reader_free(&ri);
    fx_expect_still_serving();

    /* the socket is the owner's only */
    struct stat st;
    cr_assert_eq(stat(fx.sock, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "socket mode %o", st.st_mode & 0777);
}

/* ------------------------------------------------------------------------ */
/* TCP with a token */

/* a port the kernel gave as free: another daemon on this machine (a suite in
 * parallel, another checkout's) may listen on any fixed one */
static int tcp_port;
static char tcp_addr[32]; /* 127.0.0.1:<tcp_port> */

/* the token must be the owner's only: written before the daemon starts */
static void setup_tcp_token(void)
{
    fx_prepare();
    char tok[128];
    snprintf(tok, sizeof tok, "%s/token", fx.dir);
    int fd = open(tok, O_WRONLY | O_CREAT, 0600);
    cr_assert_eq(write(fd, "0123456789abcdef0123456789abcdef-secret\n", 40), 40);
    close(fd);
    tcp_port = fx_free_tcp_port();
    snprintf(tcp_addr, sizeof tcp_addr, "127.0.0.1:%d", tcp_port);
}

static void setup_tcp(void)
{
    setup_tcp_token();
    fx_start_daemon("--tcp", tcp_addr, NULL);
}

static int tcp_connect(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(tcp_port),
                             .sin_addr.s_addr = htonl(0x7f000001)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

Test(daemon, tcp_needs_the_token, .init = setup_tcp, .fini = fx_teardown, .timeout = 30)
{
    const char *bad[] = {"{\"type\":\"hello\",\"id\":1,\"version\":2,\"role\":\"client\"}",
                         "{\"type\":\"hello\",\"id\":1,\"version\":2,\"role\":\"client\","
                         "\"token\":\"0123456789abcdef-wrong\"}"};
    for (int i = 0; i < 2; i++) {
        int fd = tcp_connect();
        char *b;
        size_t n;
        rw_frame_encode_raw(bad[i], strlen(bad[i]), &b, &n);
        rw_fd_write_all(fd, b, n);
        free(b);
        rw_frame_reader r;
        rw_frame_reader_init(&r, 0);
        json_t *e = fx_recv(fd, &r, 5000);
        cr_assert_not_null(e);
        cr_assert_str_eq(json_string_value(json_object_get(e, "code")), RW_E_AUTH);
        json_decref(e);
        cr_assert(fx_closed_by_peer(fd, 5000));
        close(fd);
        rw_frame_reader_free(&r);
    }
    int fd = tcp_connect();
    rw_frame_reader r;
    rw_frame_reader_init(&r, 0);
    json_t *h = rw_msg_new("hello", 1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("client"));
    json_object_set_new(h, "token", json_string("0123456789abcdef0123456789abcdef-secret"));
    json_t *rep = fx_request(fd, &r, h);
    cr_assert_str_eq(json_string_value(json_object_get(rep, "type")), "ok");
    json_decref(rep);
    close(fd);
    rw_frame_reader_free(&r);
    /* a worker on "another host": registers as a remote slot */
    char w[1100], tok[128];
    fx_bin(w, sizeof w, "worker/runaway-worker");
    snprintf(tok, sizeof tok, "%s/token", fx.dir);
    pid_t pid = fork();
    if (pid == 0) {
        execl(w, w, "serve", "--tcp", tcp_addr, "--token-file", tok, "--device", "far0",
              "--backend", "cpu", "--heartbeat", "0.2", (char *)NULL);
        _exit(127);
    }
    int seen = 0;
    for (double t0 = fx_now(); !seen && fx_now() - t0 < 10; usleep(50000)) {
        json_t *ws = fx_ask_simple("workers", NULL, NULL);
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(ws, "workers"), i, v) seen |=
            json_is_true(json_object_get(v, "remote")) &&
            !strcmp(json_string_value(json_object_get(v, "device")), "far0") &&
            !strcmp(json_string_value(json_object_get(v, "state")), "idle");
        json_decref(ws);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    cr_assert(seen, "the TCP worker did not register");
}

/* A worker of "another host" on the daemon's TCP port, as srun starts one. */
static pid_t start_far_worker(const char *device)
{
    char w[1100], tok[128];
    fx_bin(w, sizeof w, "worker/runaway-worker");
    snprintf(tok, sizeof tok, "%s/token", fx.dir);
    pid_t pid = fork();
    if (pid == 0) {
        execl(w, w, "serve", "--tcp", tcp_addr, "--token-file", tok, "--device", device,
              "--backend", "cpu", "--threads", "1", "--heartbeat", "0.2", (char *)NULL);
        _exit(127);
    }
    cr_assert_gt(pid, 0);
    return pid;
}

/* A coordinator on a login or head node (--cpu-slots 0 --gpus 0): it
 * trains nothing itself, takes a submission with no worker yet (issue
 * 22: it was refused as "--cpu-slots: 0"), and the job runs once a worker
 * of "another host" joins over TCP. */
static void setup_coordinator(void)
{
    setup_tcp_token();
    fx_start_daemon("--tcp", tcp_addr, "--cpu-slots", "0", "--gpus", "0", NULL);
}

Test(daemon, a_coordinator_trains_nothing_and_a_tcp_worker_runs_its_jobs,
     .init = setup_coordinator, .fini = fx_teardown, .timeout = 90)
{
    json_t *ws = fx_ask_simple("workers", NULL, NULL);
    cr_assert_eq(json_array_size(json_object_get(ws, "workers")), 0, "local workers started");
    json_decref(ws);
    fx_submit_grid("coord", 2, 0, "  seed: [0]\n");
    usleep(1500000);
    sqlite3 *db = fx_open_db();
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts", 0), 0,
                 "an attempt started with no worker");
    sqlite3_close(db);
    pid_t pid = start_far_worker("far0");
    fx_wait_jobs("done", 1, 60);
    db = fx_open_db();
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE worker LIKE '%far0%'", 0),
                 1, "the job did not run on the remote worker");
    sqlite3_close(db);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* Slurm's notice before a time limit or a preemption (--signal=B:USR1@120,
 * or SIGTERM): the worker checkpoints at its next step, reports the attempt
 * preempted and exits 0; the job waits in the queue and the next worker
 * resumes it from that checkpoint (it was killed, and the job lost every
 * step since its last checkpoint, issue 22). */
Test(daemon, a_signalled_worker_checkpoints_reports_preempted_and_exits,
     .init = setup_coordinator, .fini = fx_teardown, .timeout = 120)
{
    long long job = fx_submit_long("preempt");
    pid_t pid = start_far_worker("far0");
    fx_wait_epoch(job, 15, 30);
    cr_assert_eq(kill(pid, SIGUSR1), 0);
    int st = -1;
    for (double t0 = fx_now(); fx_now() - t0 < 30; usleep(50000))
        if (waitpid(pid, &st, WNOHANG) == pid)
            break;
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the worker did not exit 0 (status %d)",
              st);
    fx_wait_for("the attempt preempted", "SELECT COUNT(*) FROM attempts WHERE job_id=? AND "
                "outcome='preempted'", job, 1, 10);
    sqlite3 *db = fx_open_db();
    cr_expect_eq(fx_db_num(db, "SELECT state='queued' FROM jobs WHERE id=?", job), 1);
    /* its checkpoint: the epoch it stopped at, past the one it had */
    double stopped_at = fx_db_num(db, "SELECT MAX(epoch) FROM metrics WHERE job_id=? AND "
                                      "kind='epoch'", job);
    sqlite3_close(db);
    pid = start_far_worker("far1");
    fx_wait_job(job, "done", 90);
    db = fx_open_db();
    double resumed_at = fx_db_num(db, "SELECT MIN(epoch) FROM metrics WHERE kind='epoch' AND "
                                      "attempt_id=(SELECT MAX(id) FROM attempts WHERE job_id=?)",
                                  job);
    sqlite3_close(db);
    cr_expect(resumed_at == stopped_at + 1, "the next attempt began at epoch %g, not %g + 1",
              resumed_at, stopped_at);
    /* the leaving worker got no new attempt: it would be lost with it (and
     * count against --max-retries at every preemption) */
    db = fx_open_db();
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=?", job), 2,
                 "attempts other than the preempted one and the one that finished");
    sqlite3_close(db);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* Clients on another host */

/* A client that reaches the daemon through a forwarded socket lacks the
 * node's data folders: its own parse finds data.path missing, the
 * daemon's (where the data is) accepts, and the daemon has the last word.
 * Without a daemon the local error stands. The client's view of the file
 * system is made by a mount namespace (root only: elsewhere, skipped). */
Test(daemon, a_client_without_the_data_folder_submits_where_the_daemon_has_it, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    char data[160], path[200], out[8192], exe[1100], script[2048];
    snprintf(data, sizeof data, "%s-data", fx.dir); /* outside the state folder and its socket */
    snprintf(path, sizeof path, "%s/cifar", data);
    cr_assert_eq(mkdir(data, 0700), 0);
    cr_assert_eq(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/remote.yaml", fx.dir);
    char text[1024];
    snprintf(text, sizeof text,
             "name: remote\ndata: {kind: cifar10, path: %s/cifar}\noptim: {epochs: 1}\n", data);
    fx_write_file(path, text);
    fx_bin(exe, sizeof exe, "tools/runaway");
    /* the client's host: no data folder there */
    snprintf(script, sizeof script, "mount -t tmpfs tmpfs '%s' || exit 77; exec '%s' --state-dir "
             "'%s' submit '%s'", data, exe, fx.dir, path);
    const char *argv[] = {"/usr/bin/unshare", "-m", "/bin/sh", "-c", script, NULL};
    /* a mount namespace, if this machine gives one (root, and a container
     * that allows it) */
    const char *probe[] = {"/usr/bin/unshare", "-m", "/bin/sh", "-c",
                           "mount -t tmpfs tmpfs /mnt || exit 77", NULL};
    int rc = geteuid() == 0 ? fx_run(out, sizeof out, 20, probe) : 77;
    if (rc == 0)
        rc = fx_run(out, sizeof out, 20, argv);
    if (rc == 77 || rc == 127 || (rc != 0 && strstr(out, "unshare failed"))) {
        rmdir(data);
        cr_skip_test("daemon: a client without the data folder: no mount namespace here (needs "
                     "root); not checked");
    }
    cr_assert(rc == 0 && strstr(out, "grid g1 remote: 1 job"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "cancel", "remote", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    /* no daemon: the local parse's message */
    fx_stop_daemon(20);
    snprintf(script, sizeof script, "mount -t tmpfs tmpfs '%s' || exit 77; exec '%s' --state-dir "
             "'%s' submit '%s'", data, exe, fx.dir, path);
    rc = fx_run(out, sizeof out, 20, argv);
    char want[300];
    snprintf(want, sizeof want, "data.path: cannot access '%s/cifar'", data);
    cr_assert(rc == 1 && strstr(out, want), "%s", out);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    cr_assert_eq(system(cmd), 0);
}

/* runawayd's sphere children, for clients on other hosts: the worker
 * program is a script that runs the real one, except for sphere, where it
 * records its pid and waits (a computation that takes its time). */
static char sphere_wrapper[160];

static void setup_slow_sphere(void)
{
    fx_prepare();
    char real[1100], text[2048];
    fx_bin(real, sizeof real, "worker/runaway-worker");
    snprintf(sphere_wrapper, sizeof sphere_wrapper, "%s/worker.sh", fx.dir);
    snprintf(text, sizeof text,
             "#!/bin/sh\nif [ \"$1\" = sphere ]; then echo $$ >> '%s/sphere.pids'; "
             "exec sleep 300; fi\nexec '%s' \"$@\"\n", fx.dir, real);
    fx_write_file(sphere_wrapper, text);
    cr_assert_eq(chmod(sphere_wrapper, 0700), 0);
    fx_start_daemon("--worker", sphere_wrapper, NULL);
}

/* The pids the wrapper recorded, once there are n (within 10 s). */
static void sphere_pids(int n, pid_t *pids)
{
    char p[160];
    snprintf(p, sizeof p, "%s/sphere.pids", fx.dir);
    for (double t0 = fx_now(); fx_now() - t0 < 10; usleep(20000)) {
        FILE *f = fopen(p, "r");
        int k = 0;
        long v;
        while (f && k < n && fscanf(f, "%ld", &v) == 1)
            pids[k++] = (pid_t)v;
        if (f)
            fclose(f);
        if (k == n)
            return;
    }
    cr_assert_fail("runawayd did not start %d sphere children", n);
}

static int gone(pid_t pid, double secs)
{
    for (double t0 = fx_now(); fx_now() - t0 < secs; usleep(20000))
        if (kill(pid, 0) != 0 && errno == ESRCH)
            return 1;
    return 0;
}

static int sphere_folders(void)
{
    DIR *d = opendir(fx.dir);
    struct dirent *de;
    int n = 0;
    while (d && (de = readdir(d)))
        n += !strncmp(de->d_name, "sphere-", 7);
    if (d)
        closedir(d);
    return n;
}

static int sphere_ask(rw_frame_reader *r)
{
    int fd = fx_client(r);
    json_t *m = rw_msg_new("sphere", 5);
    json_object_set_new(m, "job", json_string("j1"));
    json_object_set_new(m, "backend", json_string("cpu"));
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
    return fd;
}

/* A sphere computation runawayd runs for a client stops when the client
 * goes away and when runawayd does; at most two run at once; a crash's
 * folders are cleared at the next start. */
Test(daemon, sphere_for_another_host_stops_with_its_client_and_at_shutdown,
     .init = setup_slow_sphere, .fini = fx_teardown, .timeout = 90)
{
    fx_submit_grid("s", 1, 0, "");
    fx_wait_jobs("done", 1, 60);
    rw_frame_reader r1, r2, r3;
    int fd1 = sphere_ask(&r1);
    pid_t pids[3];
    sphere_pids(1, pids);
    cr_assert_eq(sphere_folders(), 1);
    close(fd1);
    rw_frame_reader_free(&r1);
    cr_assert(gone(pids[0], 5), "the sphere of a client that went away still runs");
    for (double t0 = fx_now(); sphere_folders() && fx_now() - t0 < 5;)
        usleep(20000);
    cr_assert_eq(sphere_folders(), 0, "its folder was left");

    /* two at once; a third waits for neither */
    fd1 = sphere_ask(&r1);
    int fd2 = sphere_ask(&r2);
    sphere_pids(3, pids);
    json_t *m = rw_msg_new("sphere", 7);
    json_object_set_new(m, "job", json_string("j1"));
    int fd3 = fx_client(&r3);
    fx_expect_error(fx_request(fd3, &r3, m), RW_E_STATE, "runawayd computes 2 spheres already");
    close(fd3);
    rw_frame_reader_free(&r3);
    /* shutdown does not wait for them */
    double t0 = fx_now();
    int st = fx_stop_daemon(20);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && fx_now() - t0 < 15,
              "runawayd stopped in %.1f s with %d", fx_now() - t0, st);
    cr_assert(gone(pids[1], 5) && gone(pids[2], 5), "sphere children outlived runawayd");
    cr_assert_eq(sphere_folders(), 0);
    close(fd1);
    close(fd2);
    rw_frame_reader_free(&r1);
    rw_frame_reader_free(&r2);

    /* what a crash left goes at the next start */
    char p[160];
    snprintf(p, sizeof p, "%s/sphere-AbC123", fx.dir);
    cr_assert_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/sphere-AbC123/out.dat", fx.dir);
    fx_write_file(p, "# runaway sphere: half written\n");
    fx_restart_daemon();
    cr_assert_eq(sphere_folders(), 0, "a stale sphere folder stayed");
}
