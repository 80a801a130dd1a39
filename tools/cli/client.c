/* The client's side of the connection to runawayd: the state directory,
 * requests and replies, errors, and the programs next to ours. */
#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/cli/cli.h"

char state_dir[PATH_MAX];
char sock_path[PATH_MAX + 32];
const char *daemon_bin = NULL, *worker_bin = NULL;
static long long next_id = 1;
int connect_errno;
int cli_json;
const char *cli_usage_args;

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "runaway: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ------------------------------------------------------------------------ */
/* Connection */


static int try_connect(conn *c)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof sa.sun_path)
        die("%s: path too long for a Unix socket (use a shorter --state-dir)", sock_path);
    memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        connect_errno = errno;
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    rw_frame_reader_init(&c->r, RW_FRAME_MAX);
    return 0;
}

/* No daemon to talk to. A socket we may not open (EACCES) is not "no
 * runawayd": someone's daemon is there, and starting another is wrong. */
void die_no_daemon(void)
{
    if (connect_errno == EACCES) {
        struct stat st;
        if (stat(sock_path, &st) == 0 && st.st_uid != geteuid())
            die("permission denied: %s belongs to another user (uid %u), whose runawayd serves "
                "its owner only; use a state folder of your own (--state-dir)", sock_path,
                (unsigned)st.st_uid);
        die("permission denied: cannot connect to %s (its mode, or a folder on its path, does "
            "not let you)", sock_path);
    }
    die("no runawayd at %s: start it with `runaway daemon start`", sock_path);
}

void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    rw_frame_reader_free(&c->r);
}

/* Sends a request, waits up to `secs` for its reply; an error reply ends
 * the program with the daemon's message. Returns the ok reply, or NULL
 * with why set, and c closed, if runawayd went away. */
json_t *request_or_lost(conn *c, json_t *m, int secs, char *why, size_t whylen)
{
    long long id = next_id++;
    json_object_set_new(m, "id", json_integer(id));
    int sent = rw_frame_send_fd(c->fd, m) == 0;
    json_decref(m);
    if (!sent) {
        snprintf(why, whylen, "cannot send: %s", strerror(errno));
        conn_close(c);
        return NULL;
    }
    for (;;) {
        json_t *r = NULL;
        int rc = rw_frame_recv_fd(c->fd, &c->r, &r, secs * 1000, why, whylen);
        if (rc == 0)
            die("runawayd did not answer within %d s", secs);
        if (rc < 0) {
            conn_close(c);
            return NULL;
        }
        if (rw_msg_id(r) != id) {
            json_decref(r);
            continue;
        }
        if (!strcmp(json_string_value(json_object_get(r, "type")) ?: "", "error"))
            die("%s", json_string_value(json_object_get(r, "message")));
        return r;
    }
}

/* A reply as the document --json prints: its fields, without the envelope. */
void print_reply_json(json_t *r)
{
    json_object_del(r, "type");
    json_object_del(r, "id");
    print_json(r);
}

/* The same; runawayd going away ends the program. */
json_t *request_within(conn *c, json_t *m, int secs)
{
    char why[256];
    json_t *r = request_or_lost(c, m, secs, why, sizeof why);
    if (!r)
        die("runawayd at %s: %s", sock_path, why);
    return r;
}

json_t *request(conn *c, json_t *m)
{
    return request_within(c, m, 600);
}

static json_t *hello_msg(void)
{
    json_t *h = rw_msg_new("hello", -1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("client"));
    return h;
}

int open_conn(conn *c)
{
    if (try_connect(c) != 0)
        return -1;
    json_decref(request(c, hello_msg()));
    return 0;
}

/* open_conn, except that a runawayd that closes at once (still shutting
 * down) is not there either: -1. An error reply (another protocol version
 * after an upgrade) still ends the program. */
static int try_open_conn(conn *c)
{
    char why[256];
    if (try_connect(c) != 0)
        return -1;
    json_t *r = request_or_lost(c, hello_msg(), 5, why, sizeof why);
    if (!r)
        return -1;
    json_decref(r);
    return 0;
}

void need_conn(conn *c)
{
    if (open_conn(c) != 0)
        die_no_daemon();
}

double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* How long watch, logs -f and plot --every wait for runawayd to come back
 * (a restart, an upgrade, a crash that systemd restarts) before they give
 * up. */

/* Says why the connection was lost (unless why is NULL), then waits until
 * runawayd takes clients again and opens c. */
void reconnect(conn *c, const char *why)
{
    if (why)
        printf("* runawayd went away (%s); following again when it is back (up to %d min)\n",
               why, RECONNECT_S / 60);
    fflush(stdout);
    for (double t0 = mono_s(); try_open_conn(c) != 0; sleep(1))
        if (mono_s() - t0 > RECONNECT_S)
            die("runawayd at %s went away and was not back within %d min", sock_path,
                RECONNECT_S / 60);
}

json_t *req_new(const char *type)
{
    return rw_msg_new(type, -1);
}

const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

long long jint(const json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* ------------------------------------------------------------------------ */
/* Programs next to ours */

int find_prog(const char *name, const char *subdir, char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        *strrchr(self, '/') = '\0';
        snprintf(out, len, "%s/%s", self, name);
        if (access(out, X_OK) == 0)
            return 0;
        snprintf(out, len, "%s/../%s/%s", self, subdir, name);
        if (access(out, X_OK) == 0)
            return 0;
    }
    snprintf(out, len, "%s", name); /* PATH */
    return 0;
}

void usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "runaway %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: runaway %s %s   (runaway %s --help)\n", cmd,
            cli_usage_args ? cli_usage_args : "...", cmd);
    exit(CLI_USAGE);
}

void print_json(json_t *v)
{
    if (!v || json_dumpf(v, stdout, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        die("cannot print JSON");
    putchar('\n');
    json_decref(v);
}

/* The daemon says its database takes no writes: so nothing starts. */
void warn_db_down(const json_t *r)
{
    const char *w = json_string_value(json_object_get(r, "db_down"));
    if (w)
        fprintf(stderr, "runaway: warning: %s\n", w);
}
