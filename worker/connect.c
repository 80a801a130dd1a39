/* The worker's way to runawayd (connect.h): a Unix socket or TCP, tried
 * again for a while where asked, and a fresh process image of serve. */
#include "worker/connect.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int connect_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "%s: path too long", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int connect_tcp(const char *hostport, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || (size_t)(colon - hostport) >= sizeof host) {
        snprintf(err, errlen, "--tcp %s: expected HOST:PORT", hostport);
        return -1;
    }
    snprintf(host, sizeof host, "%.*s", (int)(colon - hostport), hostport);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", hostport, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "%s: cannot connect", hostport);
    return fd;
}

int rw_connect_daemon(const char *sock, const char *tcp, double reconnect, char *err,
                      size_t errlen)
{
    /* --reconnect: a worker of another host rides out a partition or the
     * daemon's restart, trying again with a growing pause */
    for (double t0 = mono(), pause = 0.5;; pause = pause < 8 ? 2 * pause : 10) {
        int fd = sock ? connect_unix(sock, err, errlen) : connect_tcp(tcp, err, errlen);
        if (fd >= 0 || mono() - t0 + pause > reconnect)
            return fd;
        fprintf(stderr, "runaway-worker: cannot reach runawayd (%s); again in %.1f s\n", err,
                pause);
        usleep((useconds_t)(pause * 1e6));
    }
}

void rw_exec_serve(int argc, char **argv)
{
    char **av = calloc((size_t)argc + 3, sizeof *av);
    if (av) {
        av[0] = "runaway-worker";
        av[1] = "serve";
        for (int i = 0; i < argc; i++)
            av[2 + i] = argv[i];
        execv("/proc/self/exe", av);
        fprintf(stderr, "runaway-worker: cannot restart: %s\n", strerror(errno));
    }
    _exit(3);
}
