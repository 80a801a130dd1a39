/* TensorBoard event files, written as the metrics arrive, so that
 * `tensorboard --logdir DIR` shows every job's curves live.
 *
 * Layout: DIR/gID-GRID/VARIANT/seedK is one TensorBoard run per job; each
 * attempt of the job appends to its own file in it,
 * events.out.tfevents.<attempt start, s>.<host>.aNNNNNNN (TensorBoard reads a
 * run's files in name order: the start time keeps attempts in order).
 *
 * A file is TFRecord: per record a little-endian u64 length, the masked
 * CRC32C of those 8 bytes, the bytes (one tensorflow.Event, encoded by
 * protobuf-c from tfevent.proto), their masked CRC32C. A file opens with
 * the version event, then TensorBoard's restart marker (SessionLog START)
 * at the attempt's first reported step: a resumed attempt reports again
 * the steps after its checkpoint, and the marker makes TensorBoard drop
 * the earlier attempt's points from that step on instead of drawing both
 * (those at that step which it will not send again are carried over).
 * After the marker comes the HParams plugin's session start (step 0, so no
 * later marker drops it): the job's spec as hyper-parameters, its grid and
 * variant as the group, so that TensorBoard's HParams tab has one row per
 * variant, its seeds pooled.
 *
 * The SQLite metrics stay the record of truth: a write that fails is logged
 * once per attempt and the job goes on. */
#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/tboard.h"
#include "proto/msg.h"
#include "proto/spec.h"
#include "hparams.pb-c.h"
#include "tfevent.pb-c.h"

/* TFRecord's masked CRC32C (Castagnoli): a CRC stored next to data that
 * holds CRCs is rotated and offset so it is not the CRC of itself. ISA-L's
 * crc32_iscsi is the CRC without the final inversion. */
static uint32_t masked_crc(const void *p, size_t n)
{
    uint32_t c = ~crc32_iscsi((unsigned char *)p, (int)n, 0xFFFFFFFFu);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static void put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Appends one record holding `ev` to buf (grown as needed). */
static int append_record(unsigned char **buf, size_t *len, size_t *cap, const Tensorflow__Event *ev)
{
    size_t n = tensorflow__event__get_packed_size(ev);
    size_t need = *len + 12 + n + 4;
    if (need > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < need)
            c *= 2;
        unsigned char *b = realloc(*buf, c);
        if (!b)
            return -1;
        *buf = b;
        *cap = c;
    }
    unsigned char *p = *buf + *len;
    put_le(p, n, 8);
    put_le(p + 8, masked_crc(p, 8), 4);
    tensorflow__event__pack(ev, p + 12);
    put_le(p + 12 + n, masked_crc(p + 12, n), 4);
    *len = need;
    return 0;
}

/* A run-folder component from a grid or variant name ([A-Za-z0-9_.-]):
 * "." and ".." would leave the folder, so a leading dot becomes '_'. */
static void component(char *out, size_t outlen, const char *name)
{
    snprintf(out, outlen, "%s", name && *name ? name : "_");
    if (out[0] == '.')
        out[0] = '_';
}

int rd_tb_run_dir(rd_tboard *d, int64_t job, char *out, size_t len)
{
    if (!d->dir[0])
        return -1;
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT g.id, g.name, j.variant, j.seed FROM jobs j "
                                     "JOIN grids g ON g.id=j.grid_id WHERE j.id=?");
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        return -1;
    }
    char grid[160], variant[160];
    long long gid = sqlite3_column_int64(st, 0);
    component(grid, sizeof grid, (const char *)sqlite3_column_text(st, 1));
    component(variant, sizeof variant, (const char *)sqlite3_column_text(st, 2));
    long long seed = sqlite3_column_int64(st, 3);
    sqlite3_finalize(st);
    int n = snprintf(out, len, "%s/g%lld-%s/%s/seed%lld", d->dir, gid, grid, variant, seed);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* At most this many spec fields become hyper-parameters. */
#define RW_SPEC_MAX_HPARAMS 256

/* Spec fields that are not hyper-parameters: what tells the seeds of a
 * variant apart, and what does not change its numbers. */
static int not_hparam(const char *key, size_t n)
{
    static const char *skip[] = {"name", "seed", "threads", "data.loader_threads",
                                 "data.device_budget_mb", "log.",
                                 "checkpoint.", "monitor."};
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++) {
        size_t k = strlen(skip[i]);
        if (skip[i][k - 1] == '.' ? n > k && !strncmp(key, skip[i], k)
                                  : n == k && !strncmp(key, skip[i], k))
            return 1;
    }
    return 0;
}

/* The HParams plugin's session start of the job, as one summary event
 * appended to buf: its spec's fields as stored (a number, true/false,
 * else the text), grouped by grid and variant. 0; -1 out of memory; 1 when the
 * job's spec cannot be read (nothing appended). */
static int append_hparams(rd_tboard *d, rd_run *run, double wall, unsigned char **buf,
                          size_t *len, size_t *cap)
{
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT g.id, g.name, j.variant, j.spec FROM jobs j "
                                     "JOIN grids g ON g.id=j.grid_id WHERE j.id=?");
    if (!st)
        return 1;
    sqlite3_bind_int64(st, 1, run->job);
    rw_spec *spec = malloc(sizeof *spec);
    char (*fields)[RW_SPEC_FIELD_MAX] = malloc(RW_SPEC_MAX_HPARAMS * sizeof *fields);
    char group[400] = "", err[512];
    int nf = -1;
    if (spec && fields && sqlite3_step(st) == SQLITE_ROW) {
        char grid[160], variant[160];
        component(grid, sizeof grid, (const char *)sqlite3_column_text(st, 1));
        component(variant, sizeof variant, (const char *)sqlite3_column_text(st, 2));
        snprintf(group, sizeof group, "g%lld-%s/%s", (long long)sqlite3_column_int64(st, 0), grid,
                 variant);
        const char *text = (const char *)sqlite3_column_text(st, 3);
        if (text && rw_spec_parse(text, strlen(text), "stored spec", "", spec, err,
                                  sizeof err) == 0)
            nf = rw_spec_flatten(spec, fields, RW_SPEC_MAX_HPARAMS);
    }
    sqlite3_finalize(st);
    int rc = nf < 0 ? (spec && fields ? 1 : -1) : 0;
    Tensorboard__Hparams__Value *vals = rc ? NULL : calloc((size_t)nf + 1, sizeof *vals);
    Tensorboard__Hparams__SessionStartInfo__HparamsEntry *ents =
        rc ? NULL : calloc((size_t)nf + 1, sizeof *ents);
    Tensorboard__Hparams__SessionStartInfo__HparamsEntry **ep =
        rc ? NULL : calloc((size_t)nf + 1, sizeof *ep);
    char (*shorts)[RW_SPEC_FIELD_MAX] = rc ? NULL : malloc(((size_t)nf + 1) * sizeof *shorts);
    unsigned char *content = NULL;
    if (!rc && (!vals || !ents || !ep || !shorts))
        rc = -1;
    size_t ne = 0;
    for (int i = 0; !rc && i < nf; i++) {
        char *colon = strchr(fields[i], ':');
        if (!colon || not_hparam(fields[i], (size_t)(colon - fields[i])))
            continue;
        *colon = '\0';
        rw_spec_value_short(colon + 1, shorts[ne], sizeof shorts[ne]);
        char *v = shorts[ne], *end;
        Tensorboard__Hparams__Value *hv = &vals[ne];
        tensorboard__hparams__value__init(hv);
        double x = strtod(v, &end);
        if (!strcmp(v, "true") || !strcmp(v, "false")) {
            hv->kind_case = TENSORBOARD__HPARAMS__VALUE__KIND_BOOL_VALUE;
            hv->bool_value = v[0] == 't';
        } else if (end != v && !*end) {
            hv->kind_case = TENSORBOARD__HPARAMS__VALUE__KIND_NUMBER_VALUE;
            hv->number_value = x;
        } else {
            size_t n = strlen(v); /* a string's quotes are YAML's, not the value's */
            if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
                v[n - 1] = '\0';
                v++;
            }
            hv->kind_case = TENSORBOARD__HPARAMS__VALUE__KIND_STRING_VALUE;
            hv->string_value = v;
        }
        tensorboard__hparams__session_start_info__hparams_entry__init(&ents[ne]);
        ents[ne].key = fields[i];
        ents[ne].value = hv;
        ep[ne] = &ents[ne];
        ne++;
    }
    if (!rc) {
        Tensorboard__Hparams__SessionStartInfo ssi = TENSORBOARD__HPARAMS__SESSION_START_INFO__INIT;
        ssi.n_hparams = ne;
        ssi.hparams = ep;
        ssi.group_name = group;
        ssi.start_time_secs = wall;
        Tensorboard__Hparams__HParamsPluginData pd = TENSORBOARD__HPARAMS__HPARAMS_PLUGIN_DATA__INIT;
        pd.version = 0;
        pd.data_case = TENSORBOARD__HPARAMS__HPARAMS_PLUGIN_DATA__DATA_SESSION_START_INFO;
        pd.session_start_info = &ssi;
        size_t clen = tensorboard__hparams__hparams_plugin_data__get_packed_size(&pd);
        content = malloc(clen + 1);
        if (!content) {
            rc = -1;
        } else {
            tensorboard__hparams__hparams_plugin_data__pack(&pd, content);
            /* TensorBoard's own writer: the data in the metadata, an empty
             * float vector as the value */
            Tensorflow__SummaryMetadata__PluginData plug =
                TENSORFLOW__SUMMARY_METADATA__PLUGIN_DATA__INIT;
            plug.plugin_name = "hparams";
            plug.content = (ProtobufCBinaryData){clen, content};
            Tensorflow__SummaryMetadata meta = TENSORFLOW__SUMMARY_METADATA__INIT;
            meta.plugin_data = &plug;
            meta.data_class = TENSORFLOW__DATA_CLASS__DATA_CLASS_TENSOR;
            Tensorflow__TensorShapeProto__Dim dim = TENSORFLOW__TENSOR_SHAPE_PROTO__DIM__INIT;
            Tensorflow__TensorShapeProto__Dim *dims[1] = {&dim};
            Tensorflow__TensorShapeProto shape = TENSORFLOW__TENSOR_SHAPE_PROTO__INIT;
            shape.n_dim = 1;
            shape.dim = dims;
            Tensorflow__TensorProto tensor = TENSORFLOW__TENSOR_PROTO__INIT;
            tensor.dtype = TENSORFLOW__DATA_TYPE__DT_FLOAT;
            tensor.tensor_shape = &shape;
            Tensorflow__Summary__Value val = TENSORFLOW__SUMMARY__VALUE__INIT, *vp = &val;
            val.tag = "_hparams_/session_start_info";
            val.metadata = &meta;
            val.value_case = TENSORFLOW__SUMMARY__VALUE__VALUE_TENSOR;
            val.tensor = &tensor;
            Tensorflow__Summary sum = TENSORFLOW__SUMMARY__INIT;
            sum.n_value = 1;
            sum.value = &vp;
            Tensorflow__Event ev = TENSORFLOW__EVENT__INIT;
            ev.wall_time = wall;
            ev.step = 0;
            ev.what_case = TENSORFLOW__EVENT__WHAT_SUMMARY;
            ev.summary = &sum;
            rc = append_record(buf, len, cap, &ev);
        }
    }
    free(content);
    free(vals);
    free(ents);
    free(ep);
    free(shorts);
    free(fields);
    free(spec);
    return rc;
}

/* The attempt's event file, made on its first metric: its run folder, and
 * a name from the attempt's start. Returns 0, or -1 with err set. */
static int open_run_file(rd_tboard *d, rd_run *run, char *err, size_t errlen)
{
    char folder[PATH_MAX], host[64];
    if (rd_tb_run_dir(d, run->job, folder, sizeof folder) != 0) {
        snprintf(err, errlen, "no run folder for job %lld (path too long?)", (long long)run->job);
        return -1;
    }
    double started = rd_now();
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT started FROM attempts WHERE id=?");
    if (st) {
        sqlite3_bind_int64(st, 1, run->attempt);
        if (sqlite3_step(st) == SQLITE_ROW)
            started = sqlite3_column_double(st, 0);
        sqlite3_finalize(st);
    }
    if (gethostname(host, sizeof host) != 0 || !host[0])
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    for (char *h = host; *h; h++) /* a host name with a '/' must not nest folders */
        if (*h == '/')
            *h = '_';
    if (rd_mkdir_p(folder, 0755) != 0) {
        snprintf(err, errlen, "%s: %s", folder, strerror(errno));
        return -1;
    }
    char path[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/events.out.tfevents.%010lld.%s.a%07lld", folder,
             (long long)started, host, (long long)run->attempt);
    run->tb_path = strdup(path);
    if (!run->tb_path) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* One metric report's scalars: its tags depend on the kind of report. */
typedef struct {
    const char *field; /* in the report */
    const char *tag;   /* in TensorBoard, after the kind's prefix */
    int result;        /* 1: only in the final report (the others it carries too
                        * are the last epoch's, already under epoch/); 2: only
                        * in an alarm (its values are the epoch's, likewise) */
} tb_field;

static const tb_field tb_fields[] = {
    {"loss", "loss", 0},
    {"align", "L_align", 0},
    {"uniform", "L_uniform", 0},
    {"collapse", "collapse_std", 0},
    {"knn", "knn_top1", 0},
    {"pairs_per_s", "pairs_per_s", 0},
    {"tau", "tau", 0},
    {"lr", "lr", 0},
    {"rank", "eff_rank", 0},
    {"linear", "linear_top1", 0}, /* eval.linear.every: epoch/linear_top1 */
    {"w_cos_i", "W_cos_I", 0},     /* a linear predictor against I */
    {"w_asym", "W_asymmetry", 0},
    {"linear_acc", "linear_top1", 1},
    {"align_last10", "L_align_last10", 1},
    {"uniform_last10", "L_uniform_last10", 1},
    {"alarm", "collapse_alarm", 2}, /* the collapse alarm: 1 warn, 2 stop */
};
#define TB_NFIELDS (sizeof tb_fields / sizeof tb_fields[0])

/* After a failed write (a full disk), records are skipped this long before
 * the next try. */
#define TB_RETRY_S 5.0

/* A report's scalars as one summary event appended to buf: 1, 0 when it
 * has none, -1 out of memory. */
static int append_report(unsigned char **buf, size_t *len, size_t *cap, const char *kind,
                         json_t *m, int64_t step, double wall)
{
    /* step reports under train/, epoch means and the collapse alarm under
     * epoch/, the result (linear evaluation, last-10 means) under eval/ */
    int alarm = !strcmp(kind, "alarm");
    const char *prefix = !strcmp(kind, "step")                ? "train"
                         : !strcmp(kind, "epoch") || alarm ? "epoch"
                                                           : "eval";
    int final = !strcmp(kind, "final") ? 1 : alarm ? 2 : 0;
    char tags[TB_NFIELDS][48];
    Tensorflow__Summary__Value vals[TB_NFIELDS], *vp[TB_NFIELDS];
    size_t nv = 0;
    for (size_t i = 0; i < TB_NFIELDS; i++) {
        if (final != tb_fields[i].result)
            continue;
        double v = rw_json_get_num(m, tb_fields[i].field);
        if (!isfinite(v)) /* absent, or null: not measured (kNN off) */
            continue;
        snprintf(tags[nv], sizeof tags[nv], "%s/%s", prefix, tb_fields[i].tag);
        tensorflow__summary__value__init(&vals[nv]);
        vals[nv].tag = tags[nv];
        vals[nv].value_case = TENSORFLOW__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
        vals[nv].simple_value = (float)v;
        vp[nv] = &vals[nv];
        nv++;
    }
    if (!nv || !buf)
        return nv > 0;
    Tensorflow__Summary sum = TENSORFLOW__SUMMARY__INIT;
    sum.n_value = nv;
    sum.value = vp;
    Tensorflow__Event ev = TENSORFLOW__EVENT__INIT;
    ev.wall_time = wall;
    ev.step = step;
    ev.what_case = TENSORFLOW__EVENT__WHAT_SUMMARY;
    ev.summary = &sum;
    return append_record(buf, len, cap, &ev) != 0 ? -1 : 1;
}

/* At a step, a job reports its step mean, then its epoch's, then a
 * collapse alarm or its result. */
static int kind_order(const char *kind)
{
    return !strcmp(kind, "step") ? 0 : !strcmp(kind, "epoch") ? 1 : 2;
}

/* The START marker at an attempt's first reported step s drops every
 * earlier point at s and after. A resumed attempt sends again what came
 * after its checkpoint, but an attempt whose first report is, say, the
 * epoch mean at s (stopped after the epoch's last step, before its end)
 * will not send again the step mean at s that an earlier attempt did: those
 * points of the kinds reported before `kind` at s are carried over from the
 * database, after the marker. Returns -1 out of memory, else 0. */
static int append_carried(rd_tboard *d, rd_run *run, const char *kind, int64_t step, double wall,
                          unsigned char **buf, size_t *len, size_t *cap)
{
    if (kind_order(kind) == 0)
        return 0;
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT kind, loss, align, uniform, collapse, knn, "
                                     "pairs_per_s, tau, lr, rank, linear, w_cos_i, w_asym "
                                     "FROM metrics WHERE id IN (SELECT MAX(id) FROM metrics "
                                     "WHERE job_id=?1 AND step=?2 AND attempt_id<>?3 AND kind IN "
                                     "('step', 'epoch') GROUP BY kind) ORDER BY kind='epoch'");
    if (!st)
        return 0; /* the database's trouble is said where it happens */
    sqlite3_bind_int64(st, 1, run->job);
    sqlite3_bind_int64(st, 2, step);
    sqlite3_bind_int64(st, 3, run->attempt);
    int rc = 0;
    while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        if (!k || kind_order(k) >= kind_order(kind))
            continue;
        json_t *m = json_object(); /* the row as the report it was stored from */
        for (int c = 1; m && c < sqlite3_column_count(st); c++)
            if (sqlite3_column_type(st, c) != SQLITE_NULL)
                json_object_set_new(m, sqlite3_column_name(st, c),
                                    json_real(sqlite3_column_double(st, c)));
        if (!m || append_report(buf, len, cap, k, m, step, wall) < 0)
            rc = -1;
        json_decref(m);
    }
    sqlite3_finalize(st);
    return rc;
}

void rd_tb_metric(rd_tboard *d, rd_run *run, const char *kind, json_t *m)
{
    if (!d->dir[0] || !run)
        return;
    if (!append_report(NULL, NULL, NULL, kind, m, 0, 0))
        return;
    int64_t step = json_integer_value(json_object_get(m, "step"));
    /* the restart marker goes at the attempt's first report, written or
     * not: one placed at a later report (the first written after a full
     * disk) would leave the earlier attempt's points before it, where the
     * database has this attempt's */
    if (!run->tb_first_kind[0]) {
        run->tb_first_step = step;
        snprintf(run->tb_first_kind, sizeof run->tb_first_kind, "%s", kind);
    }
    /* the result, an attempt's last report, is tried whatever the wait:
     * skipped, a folder mended in the job's last seconds would keep none of
     * the attempt's points */
    if (run->tb_failed && kind_order(kind) < 2 && rd_mono() < run->tb_retry) {
        run->tb_skipped++;
        return;
    }
    char err[PATH_MAX + 64] = "";
    double wall = rd_now();

    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    int fd = -1;
    if (!run->tb_path && open_run_file(d, run, err, sizeof err) != 0)
        goto fail;
    fd = open(run->tb_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, sizeof err, "%s: %s", run->tb_path, strerror(errno));
        goto fail;
    }
    if (st.st_size == 0) { /* a new file (or one a failed first write left empty) */
        Tensorflow__Event ver = TENSORFLOW__EVENT__INIT;
        ver.wall_time = wall;
        ver.what_case = TENSORFLOW__EVENT__WHAT_FILE_VERSION;
        ver.file_version = "brain.Event:2";
        Tensorflow__SessionLog sl = TENSORFLOW__SESSION_LOG__INIT;
        sl.status = TENSORFLOW__SESSION_LOG__SESSION_STATUS__START;
        Tensorflow__Event start = TENSORFLOW__EVENT__INIT;
        start.wall_time = wall;
        start.step = run->tb_first_step;
        start.what_case = TENSORFLOW__EVENT__WHAT_SESSION_LOG;
        start.session_log = &sl;
        if (append_record(&buf, &len, &cap, &ver) != 0 ||
            append_record(&buf, &len, &cap, &start) != 0 ||
            append_carried(d, run, run->tb_first_kind, run->tb_first_step, wall, &buf, &len,
                           &cap) != 0 ||
            append_hparams(d, run, wall, &buf, &len, &cap) < 0) {
            snprintf(err, sizeof err, "out of memory");
            goto fail;
        }
    }
    if (append_report(&buf, &len, &cap, kind, m, step, wall) < 0) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    /* One write of whole records: a reader tailing the file sees a record
     * at a time, and a daemon killed here leaves at most one torn record at
     * the end, which TensorBoard treats as not yet written. A write that
     * fails part way (a full disk) is cut off again, so that the records
     * written after it, once there is room, are read. */
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(err, sizeof err, "%s: %s", run->tb_path, w < 0 ? strerror(errno) : "short write");
            if (off > 0 && ftruncate(fd, st.st_size) != 0)
                rd_log("job j%lld: tensorboard: %s: cannot cut off a torn record: %s",
                       (long long)run->job, run->tb_path, strerror(errno));
            goto fail;
        }
        off += (size_t)w;
    }
    close(fd);
    free(buf);
    if (run->tb_failed) {
        char ev_text[PATH_MAX + 160];
        snprintf(ev_text, sizeof ev_text, "tensorboard: %s written again; %ld records of attempt "
                 "%lld were skipped there (the database has them)", run->tb_path,
                 run->tb_skipped, (long long)run->attempt);
        rd_log("job j%lld: %s", (long long)run->job, ev_text);
        rd_db_event(d->store, run->job, "daemon", ev_text);
        run->tb_failed = 0;
        run->tb_skipped = 0;
    }
    return;
fail:
    if (fd >= 0)
        close(fd);
    free(buf);
    run->tb_skipped++;
    run->tb_retry = rd_mono() + TB_RETRY_S;
    if (run->tb_failed)
        return; /* said when it first failed */
    run->tb_failed = 1;
    char ev_text[sizeof err + 128];
    snprintf(ev_text, sizeof ev_text, "tensorboard: %s (records of attempt %lld are skipped; "
             "tried again every %.0f s)", err, (long long)run->attempt, TB_RETRY_S);
    rd_log("job j%lld: %s", (long long)run->job, ev_text);
    rd_db_event(d->store, run->job, "daemon", ev_text);
}
