/* runaway export: a job's weights as safetensors, torchvision names. */
#include <errno.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/cli/cli.h"

static char export_tmp[PATH_MAX]; /* a fetched checkpoint, removed at exit */

static void export_tmp_remove(void)
{
    if (export_tmp[0])
        unlink(export_tmp);
}

/* The job's checkpoint fetched over the socket into export_tmp (a client
 * on another host); starts over, a few times, when the checkpoint is
 * replaced meanwhile (a running job's next one). */
static void export_fetch(conn *c, const char *job)
{
    const char *tmpdir = getenv("TMPDIR");
    snprintf(export_tmp, sizeof export_tmp, "%s/runaway-export-XXXXXX",
             tmpdir && *tmpdir ? tmpdir : "/tmp");
    int fd = mkstemp(export_tmp);
    if (fd < 0) {
        int e = errno;
        export_tmp[0] = 0;
        die("export: cannot write a temporary file in %s: %s", tmpdir ? tmpdir : "/tmp",
            strerror(e));
    }
    atexit(export_tmp_remove);
    unsigned char *buf = malloc(RW_EXPORT_CHUNK);
    if (!buf)
        die("out of memory");
    /* tests: smaller chunks, so that a small checkpoint takes several */
    const char *tc = getenv("RUNAWAY_TEST_EXPORT_CHUNK");
    long chunk = tc ? strtol(tc, NULL, 10) : RW_EXPORT_CHUNK;
    if (chunk < 1 || chunk > RW_EXPORT_CHUNK)
        chunk = RW_EXPORT_CHUNK;
    for (int round = 0;; round++) {
        char version[128] = "";
        long long off = 0, size = -1;
        int changed = 0;
        if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0)
            die("export: %s: %s", export_tmp, strerror(errno));
        while (size < 0 || off < size) {
            json_t *m = req_new("export");
            json_object_set_new(m, "job", json_string(job));
            json_object_set_new(m, "offset", json_integer(off));
            json_object_set_new(m, "length", json_integer(chunk));
            json_t *r = request(c, m);
            const char *hex = jstr(r, "data");
            size_t n = 0;
            if (!version[0]) {
                snprintf(version, sizeof version, "%s", jstr(r, "version"));
                size = jint(r, "size");
            }
            if (strcmp(version, jstr(r, "version"))) {
                changed = 1;
                json_decref(r);
                break;
            }
            if (rw_hex_decode(hex, strlen(hex), buf, RW_EXPORT_CHUNK, &n) != 0 ||
                (n == 0 && off < size))
                die("export: runawayd sent a chunk that is not the checkpoint's bytes");
            if (write(fd, buf, n) != (ssize_t)n)
                die("export: %s: %s", export_tmp, strerror(errno));
            off += (long long)n;
            json_decref(r);
        }
        if (!changed)
            break;
        if (round == 4)
            die("export: the checkpoint of %s was replaced 5 times while it was fetched; try "
                "again, or when the job has ended", job);
    }
    free(buf);
    if (fsync(fd) != 0 || close(fd) != 0)
        die("export: %s: %s", export_tmp, strerror(errno));
}

int cmd_export(const char *job, const char *out, int encoder_only)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("export");
    json_object_set_new(m, "job", json_string(job));
    json_t *r = request(&c, m);
    char bin[PATH_MAX];
    if (worker_bin)
        snprintf(bin, sizeof bin, "%s", worker_bin);
    else
        find_prog("runaway-worker", "worker", bin, sizeof bin);
    char ckpt[PATH_MAX], mine[96] = "";
    snprintf(ckpt, sizeof ckpt, "%s", jstr(r, "checkpoint"));
    struct stat cst;
    if (access(ckpt, R_OK) == 0 && stat(ckpt, &cst) == 0)
        rw_file_version(&cst, mine, sizeof mine);
    /* runawayd's host: the path is the daemon's file (another host may
     * have one of that path, another daemon's) */
    int local = mine[0] && !strcmp(mine, jstr(r, "version"));
    json_decref(r);
    if (local) {
        conn_close(&c);
        fflush(stdout);
        execl(bin, bin, "export", ckpt, out, encoder_only ? "--encoder-only" : (char *)NULL,
              (char *)NULL);
        die("cannot run %s: %s", bin, strerror(errno));
    }
    /* another host: the checkpoint comes over the socket */
    export_fetch(&c, job);
    conn_close(&c);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        execl(bin, bin, "export", export_tmp, out,
              encoder_only ? "--encoder-only" : (char *)NULL, (char *)NULL);
        fprintf(stderr, "runaway: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
