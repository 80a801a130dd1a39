/* The daemon's listeners: its Unix socket (mode 0600, made under umask
 * 077) and, with --tcp, a TCP port that asks for the token, each accepting
 * into daemon/net.c's connections; the connection limit from the file
 * descriptors the process may hold. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/net.h"
#include "proto/msg.h"

void rd_net_stop_listening(rd_net *n)
{
    uv_close((uv_handle_t *)&n->unix_srv, NULL);
    unlink(n->sock_path);
    if (n->tcp_on)
        uv_close((uv_handle_t *)&n->tcp_srv, NULL);
}

static int read_token(rd_net *d, char *err, size_t errlen)
{
    const char *path = d->token_path;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "--tcp needs a token in %s (mode 0600): %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || (st.st_mode & 077)) {
        fclose(f);
        snprintf(err, errlen, "%s: must be readable by its owner only (chmod 600)", path);
        return -1;
    }
    size_t n = fread(d->token, 1, sizeof d->token - 1, f);
    fclose(f);
    d->token[n] = '\0';
    d->token[strcspn(d->token, "\r\n")] = '\0';
    char why[512];
    if (rw_token_check(d->token, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    return 0;
}

/* As many connections as file descriptors allow: the soft limit raised to
 * the hard one, less what the daemon needs besides (database, logs,
 * worker pipes, spheres). */
static void conns_limit(rd_net *n)
{
    struct rlimit rl;
    n->conns_max = RD_CONNS_HARD_MAX;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)RD_CONNS_HARD_MAX + 128)
        n->conns_max = rl.rlim_cur > 256 ? (int)rl.rlim_cur - 128 : (int)rl.rlim_cur / 2;
}

int rd_net_listen(rd_net *d, const char *tcp_addr, char *err, size_t errlen)
{
    int rc;
    conns_limit(d);
    uv_idle_init(d->loop, &d->turns);
    d->turns.data = d;
    if (strlen(d->sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "%s: socket path too long for a Unix socket", d->sock_path);
        return -1;
    }
    unlink(d->sock_path); /* stale from a killed daemon; the lock says we are alone */
    uv_pipe_init(d->loop, &d->unix_srv, 0);
    d->unix_srv.data = d;
    mode_t old = umask(077); /* no window where the socket is group/world accessible */
    rc = uv_pipe_bind(&d->unix_srv, d->sock_path);
    umask(old);
    if (rc == 0)
        rc = chmod(d->sock_path, 0600) == 0 ? 0 : -errno;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&d->unix_srv, 128, rd_net_on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", d->sock_path, uv_strerror(rc));
        return -1;
    }
    if (tcp_addr) {
        if (read_token(d, err, errlen) != 0)
            return -1;
        char host[256];
        const char *colon = strrchr(tcp_addr, ':');
        int port = colon ? atoi(colon + 1) : 0;
        snprintf(host, sizeof host, "%.*s", colon ? (int)(colon - tcp_addr) : 0, tcp_addr);
        struct sockaddr_storage sa;
        if (port <= 0 || port > 65535 ||
            (uv_ip4_addr(host, port, (struct sockaddr_in *)&sa) != 0 &&
             uv_ip6_addr(host, port, (struct sockaddr_in6 *)&sa) != 0)) {
            snprintf(err, errlen, "--tcp %s: expected HOST:PORT with a numeric address", tcp_addr);
            return -1;
        }
        uv_tcp_init(d->loop, &d->tcp_srv);
        d->tcp_srv.data = d;
        d->tcp_on = 1;
        rc = uv_tcp_bind(&d->tcp_srv, (struct sockaddr *)&sa, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&d->tcp_srv, 128, rd_net_on_connection);
        if (rc != 0) {
            snprintf(err, errlen, "--tcp %s: %s", tcp_addr, uv_strerror(rc));
            return -1;
        }
        rd_log("listening on tcp %s (token required)", tcp_addr);
    }
    return 0;
}
