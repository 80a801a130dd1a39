/* sphere for a client on another host (its socket forwarded over ssh): the
 * projections need the job's weights and its training images, which are
 * here, so runawayd runs `runaway-worker sphere` on them and replies with
 * the data file it writes (the angle histogram and a few view pairs: a few
 * KB whatever the sample count), which the client draws.
 *
 * One child process per request, at most RD_SPHERE_MAX at once, each in a
 * folder of its own under the state directory that goes when it ends. A
 * child whose asker went away, or that runs past RD_SPHERE_TIMEOUT_S, is
 * killed; shutdown kills them all, and the next start clears what a crash
 * left. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/sphere.h"
#include "proto/msg.h"

#define DATA_MAX (512u << 10) /* the file is a few KB; far past that it is not ours */

static const char *const files[] = {"spec.yaml", "out.dat", "log"};

/* The folder and the files we put in it. */
static void dir_remove(const char *dir)
{
    char p[PATH_MAX + 16];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    if (rmdir(dir) != 0 && errno != ENOENT)
        rd_log("sphere: cannot remove %s: %s", dir, strerror(errno));
}

void rd_sphere_clear_stale(rd_spheres *d)
{
    DIR *dir = opendir(d->state_dir);
    struct dirent *e;
    while (dir && (e = readdir(dir))) {
        if (strncmp(e->d_name, "sphere-", 7) != 0)
            continue;
        char p[PATH_MAX + 300];
        snprintf(p, sizeof p, "%s/%s", d->state_dir, e->d_name);
        dir_remove(p);
    }
    if (dir)
        closedir(dir);
}

static void closed_cb(uv_handle_t *h)
{
    rd_sphere *s = h->data;
    s->busy = 0;
}

/* The file's text, NUL-terminated, or NULL (why in err). */
static char *slurp(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size > (off_t)DATA_MAX) {
        snprintf(err, errlen, "%s: %s", path,
                 fd < 0 ? strerror(errno) : "larger than a sphere's data");
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    ssize_t got = buf ? read(fd, buf, (size_t)st.st_size) : -1;
    close(fd);
    if (got != (ssize_t)st.st_size) {
        snprintf(err, errlen, "%s: cannot read it", path);
        free(buf);
        return NULL;
    }
    buf[got] = '\0';
    return buf;
}

static void exit_cb(uv_process_t *p, int64_t status, int sig)
{
    rd_sphere *s = p->data;
    rd_conn *c = rd_conn_find(s->all->net, s->conn, s->serial);
    char path[PATH_MAX + 16], err[1024];
    if (c && s->killed) {
        rd_reply_error(c, s->req_id, RW_E_INTERNAL, "sphere: j%lld: stopped after %.0f s (the most "
                       "runawayd gives it)", (long long)s->job, RD_SPHERE_TIMEOUT_S);
    } else if (c && (status != 0 || sig != 0)) {
        char last[1024] = "";
        snprintf(path, sizeof path, "%s/log", s->dir);
        rw_file_last_line(path, "runaway-worker: no usable GPU", last, sizeof last);
        rd_reply_error(c, s->req_id, RW_E_INTERNAL, "sphere: j%lld: %s", (long long)s->job,
                       last[0] ? last : "runaway-worker sphere failed");
    } else if (c) {
        snprintf(path, sizeof path, "%s/out.dat", s->dir);
        char *text = slurp(path, err, sizeof err);
        json_t *js = text ? json_string(text) : NULL;
        if (js) {
            json_t *r = rw_msg_new("ok", s->req_id);
            json_object_set_new(r, "data", js);
            rd_conn_send(c, r);
        } else {
            rd_reply_error(c, s->req_id, RW_E_INTERNAL, "sphere: j%lld: %s", (long long)s->job,
                           text ? "its data file is not UTF-8 text" : err);
        }
        free(text);
    }
    rd_log("sphere: j%lld: runaway-worker exited with %lld%s%s after %.1f s%s", (long long)s->job,
           (long long)status, sig ? ", signal " : "", sig ? strsignal(sig) : "",
           rd_mono() - s->started, c ? "" : " (its asker had gone)");
    rd_conn_undefer(c);
    dir_remove(s->dir);
    uv_close((uv_handle_t *)p, closed_cb);
}

/* The job's spec into dir/spec.yaml; 0, or -1 with err. */
static int write_spec(rd_store *d, int64_t job, const char *dir, char *err, size_t errlen)
{
    sqlite3_stmt *st = rd_db_prep(d, "SELECT spec FROM jobs WHERE id=?1");
    if (!st) {
        snprintf(err, errlen, "the database: cannot read j%lld's spec", (long long)job);
        return -1;
    }
    sqlite3_bind_int64(st, 1, job);
    int rc = -1;
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/spec.yaml", dir);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *text = (const char *)sqlite3_column_text(st, 0);
        FILE *f = fopen(p, "w");
        int ok = text && f && fputs(text, f) >= 0;
        /* fclose once, whether or not the write went through */
        if (f && fclose(f) != 0)
            ok = 0;
        if (ok)
            rc = 0;
        else
            snprintf(err, errlen, "%s: %s", p, text ? strerror(errno) : "job has no spec");
    } else {
        snprintf(err, errlen, "no job j%lld", (long long)job);
    }
    sqlite3_finalize(st);
    return rc;
}

void rd_sphere_request(rd_spheres *d, rd_conn *c, long long id, int64_t job, json_t *m)
{
    if (d->life->shutting_down) {
        rd_reply_error(c, id, RW_E_STATE, "runawayd is shutting down");
        return;
    }
    const json_t *ep = json_object_get(m, "epoch");
    const char *backend = json_string_value(json_object_get(m, "backend"));
    long long samples = json_integer_value(json_object_get(m, "samples"));
    if (!backend)
        backend = "auto";
    if (strcmp(backend, "auto") && strcmp(backend, "cpu") && strcmp(backend, "cuda")) {
        rd_reply_error(c, id, RW_E_BAD_MESSAGE, "backend: auto, cpu or cuda, not '%s'", backend);
        return;
    }
    char weights[PATH_MAX + 128];
    if (ep)
        snprintf(weights, sizeof weights, "%s/runs/%lld/snapshots/weights-e%05lld.safetensors",
                 d->state_dir, (long long)job, (long long)json_integer_value(ep));
    else
        snprintf(weights, sizeof weights, "%s/runs/%lld/weights.safetensors", d->state_dir,
                 (long long)job);
    if (access(weights, R_OK) != 0) {
        if (ep)
            rd_reply_error(c, id, RW_E_STATE, "job j%lld has no snapshot of epoch %lld (%s: %s)",
                           (long long)job, (long long)json_integer_value(ep), weights,
                           strerror(errno));
        else
            rd_reply_error(c, id, RW_E_STATE, "job j%lld has no final weights (%s: %s)",
                           (long long)job, weights, strerror(errno));
        return;
    }
    rd_sphere *s = NULL;
    for (int i = 0; i < RD_SPHERE_MAX && !s; i++)
        if (!d->slots[i].busy)
            s = &d->slots[i];
    if (!s) {
        rd_reply_error(c, id, RW_E_STATE, "runawayd computes %d spheres already; ask again when "
                       "they are done", RD_SPHERE_MAX);
        return;
    }
    char err[1024];
    snprintf(s->dir, sizeof s->dir, "%s/sphere-XXXXXX", d->state_dir);
    if (!mkdtemp(s->dir)) {
        rd_reply_error(c, id, RW_E_INTERNAL, "sphere: %s: %s", s->dir, strerror(errno));
        return;
    }
    if (write_spec(d->store, job, s->dir, err, sizeof err) != 0) {
        rd_reply_error(c, id, RW_E_INTERNAL, "sphere: %s", err);
        dir_remove(s->dir);
        return;
    }
    char spec[PATH_MAX + 16], out[PATH_MAX + 16], logp[PATH_MAX + 16], ns[32];
    snprintf(spec, sizeof spec, "%s/spec.yaml", s->dir);
    snprintf(out, sizeof out, "%s/out.dat", s->dir);
    snprintf(logp, sizeof logp, "%s/log", s->dir);
    snprintf(ns, sizeof ns, "%lld", samples > 0 ? samples : 2048);
    char *args[] = {d->worker_path, "sphere", spec, weights, out, "--samples", ns,
                    "--backend", (char *)backend, NULL};
    int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    uv_stdio_container_t io[3] = {
        {.flags = UV_IGNORE},
        {.flags = fd >= 0 ? UV_INHERIT_FD : UV_IGNORE, .data.fd = fd},
        {.flags = fd >= 0 ? UV_INHERIT_FD : UV_IGNORE, .data.fd = fd},
    };
    uv_process_options_t o = {.exit_cb = exit_cb, .file = d->worker_path, .args = args,
                              .stdio_count = 3, .stdio = io};
    memset(&s->proc, 0, sizeof s->proc);
    s->proc.data = s;
    s->all = d;
    s->conn = c;
    s->serial = c->serial;
    s->req_id = id;
    s->job = job;
    s->killed = 0;
    s->started = rd_mono();
    int rc = uv_spawn(d->loop, &s->proc, &o);
    if (fd >= 0)
        close(fd);
    s->busy = 1; /* until the handle is closed, also when the spawn failed */
    if (rc != 0) {
        rd_reply_error(c, id, RW_E_INTERNAL, "sphere: cannot run %s: %s", d->worker_path,
                       uv_strerror(rc));
        dir_remove(s->dir);
        uv_close((uv_handle_t *)&s->proc, closed_cb);
        return;
    }
    rd_conn_defer(c);
    rd_log("sphere: j%lld (%s, %s samples, backend %s) for a client, pid %d", (long long)job,
           weights, ns, backend, s->proc.pid);
}

static void kill_one(rd_sphere *s, const char *why)
{
    if (s->killed)
        return;
    rd_log("sphere: j%lld: killing pid %d: %s", (long long)s->job, s->proc.pid, why);
    s->killed = 1;
    uv_process_kill(&s->proc, SIGKILL);
}

void rd_sphere_tick(rd_spheres *d)
{
    for (int i = 0; i < RD_SPHERE_MAX; i++) {
        rd_sphere *s = &d->slots[i];
        if (!s->busy || uv_is_closing((uv_handle_t *)&s->proc))
            continue;
        if (!rd_conn_find(d->net, s->conn, s->serial))
            kill_one(s, "its asker went away");
        else if (rd_mono() - s->started > RD_SPHERE_TIMEOUT_S)
            kill_one(s, "it ran too long");
    }
}

void rd_sphere_stop_all(rd_spheres *d)
{
    for (int i = 0; i < RD_SPHERE_MAX; i++) {
        rd_sphere *s = &d->slots[i];
        if (s->busy && !uv_is_closing((uv_handle_t *)&s->proc)) {
            kill_one(s, "runawayd is shutting down");
            /* the loop may stop before its exit is reaped */
            dir_remove(s->dir);
        }
    }
}
