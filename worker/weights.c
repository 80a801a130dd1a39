/* Model tensors <-> safetensors files. */
#include "worker/weights.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rw_config.h"
#include "worker/safetensors.h"

#define CKPT_FORMAT "1"
/* DirectPred's F in a checkpoint: (D, D) float64 */
#define DIRECTPRED_CORR "directpred.corr"

/* Host copies of every model buffer, for one write or read. */
typedef struct host_model {
    float *params, *teacher, *state, *tstate, *m, *v;
    int64_t nbt[RW_MODEL_MAX_BN], tnbt[RW_MODEL_MAX_BN];
} host_model;

static void host_free(host_model *h)
{
    free(h->params);
    free(h->teacher);
    free(h->state);
    free(h->tstate);
    free(h->m);
    free(h->v);
}

static int host_alloc(rw_model *m, host_model *h)
{
    memset(h, 0, sizeof *h);
    h->params = malloc(rw_model_nparams(m) * sizeof(float) + 1);
    h->teacher = malloc(rw_model_nteacher(m) * sizeof(float) + 1);
    h->state = malloc(rw_model_nstate(m) * sizeof(float) + 1);
    h->tstate = malloc(rw_model_nteacher_state(m) * sizeof(float) + 1);
    h->m = malloc(rw_model_nparams(m) * sizeof(float) + 1);
    h->v = malloc(rw_model_nparams(m) * sizeof(float) + 1);
    if (h->params && h->teacher && h->state && h->tstate && h->m && h->v)
        return 0;
    host_free(h);
    return -1;
}

static void host_download(rw_model *m, host_model *h)
{
    kb_backend *be = rw_model_backend(m);
    be->download(be, h->params, rw_model_params(m), rw_model_nparams(m) * sizeof(float));
    be->download(be, h->teacher, rw_model_teacher(m), rw_model_nteacher(m) * sizeof(float));
    be->download(be, h->state, rw_model_state(m), rw_model_nstate(m) * sizeof(float));
    be->download(be, h->tstate, rw_model_teacher_state(m),
                 rw_model_nteacher_state(m) * sizeof(float));
    be->download(be, h->m, rw_model_adam_m(m), rw_model_nparams(m) * sizeof(float));
    be->download(be, h->v, rw_model_adam_v(m), rw_model_nparams(m) * sizeof(float));
    for (int t = 0; t < 2; t++) {
        const long *c = rw_model_bn_counts(m, t);
        for (int i = 0; i < rw_model_nbn(m, t); i++)
            (t ? h->tnbt : h->nbt)[i] = c[i];
    }
}

static float *host_buf(host_model *h, rw_tensor_kind k)
{
    switch (k) {
    case RW_T_PARAM: return h->params;
    case RW_T_STATE: return h->state;
    case RW_T_TEACHER_PARAM: return h->teacher;
    case RW_T_TEACHER_STATE: return h->tstate;
    }
    return NULL;
}

static const int64_t scalar_shape[1] = {1};

/* Adds every named tensor and the num_batches_tracked counters; with
 * encoder_only, the online encoder's alone. */
static void add_model_tensors(rw_st_writer *w, rw_model *m, host_model *h, int encoder_only)
{
    for (int i = 0; i < rw_model_ntensors(m); i++) {
        const rw_named *t = rw_model_tensor(m, i);
        if (encoder_only && !rw_model_in_encoder(m, t))
            continue;
        int64_t shape[4];
        for (int d = 0; d < t->ndim; d++)
            shape[d] = t->shape[d];
        rw_st_add_f32(w, t->name, shape, t->ndim, host_buf(h, t->kind) + t->off);
    }
    char name[96];
    for (int t = 0; t < (encoder_only ? 1 : 2); t++)
        for (int i = 0; i < (encoder_only ? rw_model_nbn_encoder(m) : rw_model_nbn(m, t)); i++) {
            snprintf(name, sizeof name, "%s%s.num_batches_tracked", t ? "teacher." : "",
                     rw_model_bn_prefix(m, i));
            /* PyTorch stores the counter as a 0-dim int64 tensor. */
            rw_st_add(w, name, RW_ST_I64, scalar_shape, 0, t ? &h->tnbt[i] : &h->nbt[i]);
        }
}

/* A writer holding every model tensor (host copies in h, which must live
 * until the write): NULL with a message when out of memory. */
static rw_st_writer *model_writer(rw_model *m, host_model *h, int encoder_only,
                                  const char *path, char *err, size_t errlen)
{
    rw_st_writer *w = rw_st_writer_new();
    if (!w || host_alloc(m, h) != 0) {
        rw_st_writer_free(w);
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    host_download(m, h);
    add_model_tensors(w, m, h, encoder_only);
    return w;
}

static void set_model_meta(rw_st_writer *w, rw_model *m)
{
    char buf[256];
    const rw_model_cfg *c = rw_model_cfg_of(m);
    snprintf(buf, sizeof buf, "%d %d %d %d %d %d", (int)c->stem, c->width, c->proj_hidden,
             c->proj_out, (int)c->predictor, c->pred_hidden);
    rw_st_set_meta(w, "runaway.model", buf);
    rw_st_set_meta(w, "runaway.arch", rw_arch_name(c->arch)); /* absent: resnet18 */
    snprintf(buf, sizeof buf, "%d %.9g %.9g %d", (int)c->loss.kind, c->loss.alpha, c->loss.beta,
             c->loss.tangential);
    rw_st_set_meta(w, "runaway.loss", buf);
    if (c->classes > 0) { /* the supervised baseline; absent: self-supervised */
        snprintf(buf, sizeof buf, "%d", c->classes);
        rw_st_set_meta(w, "runaway.classes", buf);
    }
    if (c->predictor == RW_PRED_DIRECTPRED) { /* absent: not DirectPred */
        snprintf(buf, sizeof buf, "%d %.9g %.9g", c->directpred.every,
                 (double)c->directpred.momentum, (double)c->directpred.eps);
        rw_st_set_meta(w, "runaway.directpred", buf);
    }
}

int rw_weights_model_cfg(const char *path, rw_model_cfg *c, char *err, size_t errlen)
{
    rw_st *st = rw_st_open(path, err, errlen);
    if (!st)
        return -1;
    const char *what = rw_st_meta(st, "runaway.kind");
    if (what && !strcmp(what, "encoder")) {
        snprintf(err, errlen, "%s: an encoder-only export (for torchvision) has no heads to "
                 "start or export a model from; use a checkpoint or a full export", path);
        rw_st_close(st);
        return -1;
    }
    const char *mm = rw_st_meta(st, "runaway.model");
    const char *ll = rw_st_meta(st, "runaway.loss");
    int stem, pred, kind;
    memset(c, 0, sizeof *c);
    if (!mm || !ll ||
        sscanf(mm, "%d %d %d %d %d %d", &stem, &c->width, &c->proj_hidden, &c->proj_out, &pred,
               &c->pred_hidden) != 6 ||
        sscanf(ll, "%d %f %f %d", &kind, &c->loss.alpha, &c->loss.beta, &c->loss.tangential) != 4 ||
        stem < 0 || stem > RW_STEM_CIFAR || pred < 0 || pred > RW_PRED_DIRECTPRED || kind < 0 ||
        kind > KB_LOSS_UNIFIED) {
        snprintf(err, errlen, "%s: not a runaway weights file (no valid runaway.model metadata)",
                 path);
        rw_st_close(st);
        return -1;
    }
    c->stem = (rw_stem)stem;
    c->predictor = (rw_predictor)pred;
    const char *arch = rw_st_meta(st, "runaway.arch");
    if (arch) { /* the files from before ResNet-34 and -50 have none */
        int k = RW_ARCH_RESNET18;
        while (k <= RW_ARCH_RESNET50 && strcmp(arch, rw_arch_name((rw_arch)k)) != 0)
            k++;
        if (k > RW_ARCH_RESNET50) {
            snprintf(err, errlen, "%s: runaway.arch metadata '%.32s' is not resnet18, resnet34 "
                     "or resnet50", path, arch);
            rw_st_close(st);
            return -1;
        }
        c->arch = (rw_arch)k;
    }
    c->loss.kind = (kb_loss_kind)kind;
    if (c->predictor == RW_PRED_DIRECTPRED) {
        /* the settings it trained with; a model to load W into needs some */
        const char *dp = rw_st_meta(st, "runaway.directpred");
        c->directpred.every = 1;
        c->directpred.momentum = 0.99f;
        c->directpred.eps = 0.1f;
        if (dp && (sscanf(dp, "%d %f %f", &c->directpred.every, &c->directpred.momentum,
                          &c->directpred.eps) != 3 || c->directpred.every < 1 ||
                   !(c->directpred.momentum >= 0 && c->directpred.momentum < 1) ||
                   !(c->directpred.eps >= 0))) {
            snprintf(err, errlen, "%s: bad runaway.directpred metadata", path);
            rw_st_close(st);
            return -1;
        }
    }
    const char *cl = rw_st_meta(st, "runaway.classes");
    if (cl && (sscanf(cl, "%d", &c->classes) != 1 || c->classes < 1 || c->classes > 100000)) {
        snprintf(err, errlen, "%s: runaway.classes metadata is not a class count (1..100000)",
                 path);
        rw_st_close(st);
        return -1;
    }
    rw_st_close(st);
    return 0;
}

/* The "runaway" metadata entry: JSON a person (or a script) reads, where
 * runaway.model and runaway.loss are what `init` and `export` read back. */
static char *origin_json(rw_model *m, const rw_export_info *info, int encoder_only)
{
    const rw_model_cfg *c = rw_model_cfg_of(m);
    json_t *o = json_object(), *enc = json_object();
    json_object_set_new(o, "format", json_integer(1));
    json_object_set_new(o, "version", json_string(RW_VERSION));
    json_object_set_new(o, "contents", json_string(encoder_only ? "encoder" : "full"));
    json_object_set_new(enc, "arch", json_string(rw_arch_name(c->arch)));
    json_object_set_new(enc, "stem", json_string(c->stem == RW_STEM_CIFAR ? "cifar" : "imagenet"));
    json_object_set_new(enc, "width", json_integer(c->width));
    json_object_set_new(enc, "features", json_integer(rw_model_feat_dim(m)));
    json_object_set_new(o, "encoder", enc);
    int known = info != NULL;
    json_object_set_new(o, "epoch", known && info->epoch >= 0 ? json_integer(info->epoch)
                                                                : json_null());
    json_object_set_new(o, "data_digest", known && info->data_digest[0]
                                              ? json_string(info->data_digest) : json_null());
    json_object_set_new(o, "spec", known && info->spec_yaml ? json_string(info->spec_yaml)
                                                              : json_null());
    char *js = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return js;
}

int rw_weights_export_ex(rw_model *m, const char *path, const rw_export_info *info,
                         int encoder_only, char *err, size_t errlen)
{
    host_model h;
    rw_st_writer *w = model_writer(m, &h, encoder_only, path, err, errlen);
    if (!w)
        return -1;
    /* an encoder alone cannot start a job (no heads): no model keys to read */
    if (!encoder_only)
        set_model_meta(w, m);
    rw_st_set_meta(w, "runaway.kind", encoder_only ? "encoder" : "weights");
    char *js = origin_json(m, info, encoder_only);
    if (js)
        rw_st_set_meta(w, "runaway", js);
    free(js);
    int rc = js ? rw_st_write(w, path, err, errlen) : -1;
    if (!js)
        snprintf(err, errlen, "%s: out of memory", path);
    rw_st_writer_free(w);
    host_free(&h);
    return rc;
}

int rw_weights_export(rw_model *m, const char *path, char *err, size_t errlen)
{
    return rw_weights_export_ex(m, path, NULL, 0, err, errlen);
}

void rw_export_info_free(rw_export_info *info)
{
    free(info->spec_yaml);
    info->spec_yaml = NULL;
}

int rw_export_info_read(const char *path, rw_export_info *info, char *err, size_t errlen)
{
    memset(info, 0, sizeof *info);
    info->epoch = -1;
    rw_st *st = rw_st_open(path, err, errlen);
    if (!st)
        return -1;
    const char *kind = rw_st_meta(st, "runaway.kind");
    int rc = 0;
    if (kind && !strcmp(kind, "checkpoint")) {
        const char *spec = rw_st_meta(st, "runaway.spec");
        const char *pos = rw_st_meta(st, "runaway.position");
        const char *data = rw_st_meta(st, "runaway.data_digest");
        if (pos && sscanf(pos, "%d", &info->epoch) != 1)
            info->epoch = -1;
        snprintf(info->data_digest, sizeof info->data_digest, "%s", data ? data : "");
        info->spec_yaml = spec ? strdup(spec) : NULL;
    } else if (rw_st_meta(st, "runaway")) { /* an export of ours: passed on */
        json_error_t jerr;
        json_t *o = json_loads(rw_st_meta(st, "runaway"), 0, &jerr);
        if (!json_is_object(o)) {
            snprintf(err, errlen, "%s: the runaway metadata is not JSON (%s)", path, jerr.text);
            rc = -1;
        } else {
            json_t *e = json_object_get(o, "epoch"), *d = json_object_get(o, "data_digest");
            json_t *sp = json_object_get(o, "spec");
            info->epoch = json_is_integer(e) ? (int)json_integer_value(e) : -1;
            snprintf(info->data_digest, sizeof info->data_digest, "%s",
                     json_is_string(d) ? json_string_value(d) : "");
            info->spec_yaml = json_is_string(sp) ? strdup(json_string_value(sp)) : NULL;
        }
        json_decref(o);
    }
    rw_st_close(st);
    return rc;
}

/* Reads the named tensors (and counters) of the file into h. */
static int read_model_tensors(rw_st *st, rw_model *m, host_model *h, const char *path,
                              char *err, size_t errlen)
{
    int has_teacher = rw_st_find(st, "teacher.conv1.weight") != NULL;
    for (int i = 0; i < rw_model_ntensors(m); i++) {
        const rw_named *t = rw_model_tensor(m, i);
        int teacher = t->kind == RW_T_TEACHER_PARAM || t->kind == RW_T_TEACHER_STATE;
        if (teacher && !has_teacher)
            continue;
        int64_t shape[4];
        for (int d = 0; d < t->ndim; d++)
            shape[d] = t->shape[d];
        if (!rw_st_find(st, t->name)) {
            snprintf(err, errlen, "%s: tensor '%s' is missing (is it from another model "
                     "configuration?)", path, t->name);
            return -1;
        }
        if (rw_st_get_f32(st, t->name, shape, t->ndim, host_buf(h, t->kind) + t->off, err,
                          errlen) != 0)
            return -1;
    }
    char name[96];
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < rw_model_nbn(m, t); i++) {
            int64_t *dst = t ? &h->tnbt[i] : &h->nbt[i];
            snprintf(name, sizeof name, "%s%s.num_batches_tracked", t ? "teacher." : "",
                     rw_model_bn_prefix(m, i));
            *dst = 0;
            if (rw_st_find(st, name) &&
                rw_st_get(st, name, RW_ST_I64, scalar_shape, 0, dst, err, errlen) != 0)
                return -1;
        }
    return has_teacher;
}

static void host_upload(rw_model *m, host_model *h, int teacher, int adam)
{
    kb_backend *be = rw_model_backend(m);
    be->upload(be, rw_model_params(m), h->params, rw_model_nparams(m) * sizeof(float));
    be->upload(be, rw_model_state(m), h->state, rw_model_nstate(m) * sizeof(float));
    long *c = rw_model_bn_counts(m, 0);
    for (int i = 0; i < rw_model_nbn(m, 0); i++)
        c[i] = (long)h->nbt[i];
    if (teacher) {
        be->upload(be, rw_model_teacher(m), h->teacher, rw_model_nteacher(m) * sizeof(float));
        be->upload(be, rw_model_teacher_state(m), h->tstate,
                   rw_model_nteacher_state(m) * sizeof(float));
        c = rw_model_bn_counts(m, 1);
        for (int i = 0; i < rw_model_nbn(m, 1); i++)
            c[i] = (long)h->tnbt[i];
    } else {
        rw_model_teacher_from_online(m);
    }
    if (adam) {
        be->upload(be, rw_model_adam_m(m), h->m, rw_model_nparams(m) * sizeof(float));
        be->upload(be, rw_model_adam_v(m), h->v, rw_model_nparams(m) * sizeof(float));
    }
    rw_model_params_written(m);
}

int rw_weights_init(rw_model *m, const char *path, char *err, size_t errlen)
{
    host_model h;
    rw_st *st = rw_st_open(path, err, errlen);
    if (!st)
        return -1;
    const char *kind = rw_st_meta(st, "runaway.kind");
    if (kind && !strcmp(kind, "encoder")) {
        snprintf(err, errlen, "%s: an encoder-only export (for torchvision) has no projector "
                 "or predictor to start from; use a checkpoint or a full export", path);
        rw_st_close(st);
        return -1;
    }
    if (host_alloc(m, &h) != 0) {
        rw_st_close(st);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    int rc = read_model_tensors(st, m, &h, path, err, errlen);
    if (rc >= 0)
        host_upload(m, &h, rc, 0);
    rw_st_close(st);
    host_free(&h);
    return rc < 0 ? -1 : 0;
}

void rw_spec_digest(const rw_spec *s, char out[17])
{
    char buf[4096];
    int n = snprintf(buf, sizeof buf,
                     "seed=%llu init=%s data=%d,%s,%d,%d,%llu,%d,%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g "
                     "model=%d,%d,%d,%d,%d,%d loss=%d,%.9g,%.9g,%d optim=%.9g,%.9g,%d,%d,%ld "
                     "ema=%.9g,%d devices=%d sync_bn=%d",
                     (unsigned long long)s->seed, s->init, (int)s->data.kind, s->data.path,
                     s->data.synthetic_train, s->data.synthetic_test,
                     (unsigned long long)s->data.synthetic_seed, s->data.image_size,
                     (int)s->data.augment, s->data.mean[0], s->data.mean[1], s->data.mean[2],
                     s->data.std[0], s->data.std[1], s->data.std[2], (int)s->model.stem,
                     s->model.width, s->model.proj_hidden, s->model.proj_out,
                     (int)s->model.predictor, s->model.pred_hidden, (int)s->loss.kind,
                     s->loss.alpha, s->loss.beta, s->loss.tangential, s->optim.lr,
                     s->optim.weight_decay, s->optim.batch_size, s->optim.epochs,
                     s->optim.max_steps, s->ema.tau, (int)s->ema.schedule, s->devices, s->sync_bn);
    /* Fields added later, written only when they matter: the checkpoints of
     * specs that do not use them keep their digest. */
    if (n > 0 && (size_t)n < sizeof buf && s->data.kind == RW_DATA_SYNTHETIC &&
        s->data.synthetic_style != RW_SYNTH_CLUTTERED)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " synth_style=%d",
                      (int)s->data.synthetic_style);
    if (n > 0 && (size_t)n < sizeof buf && s->data.kind == RW_DATA_CIFAR100)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " labels=%d", (int)s->data.labels);
    if (n > 0 && (size_t)n < sizeof buf && s->data.kind == RW_DATA_STL10)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " unlabeled=%d", s->data.unlabeled);
    if (n > 0 && (size_t)n < sizeof buf && s->data.kind == RW_DATA_IMAGEFOLDER)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " imagefolder=%d,%d,%d",
                      s->data.cache_size, s->data.skip_bad, s->data.unlabeled);
    if (n > 0 && (size_t)n < sizeof buf && s->model.arch != RW_ARCH_RESNET18)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " arch=%d", (int)s->model.arch);
    if (n > 0 && (size_t)n < sizeof buf &&
        (s->optim.schedule != RW_LR_CONSTANT || s->optim.warmup_epochs > 0))
        n += snprintf(buf + n, sizeof buf - (size_t)n, " lr_schedule=%d,%d",
                      (int)s->optim.schedule, s->optim.warmup_epochs);
    if (n > 0 && (size_t)n < sizeof buf && s->model.predictor == RW_PRED_DIRECTPRED)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " directpred=%d,%.9g,%.9g",
                      s->model.directpred.every, (double)s->model.directpred.momentum,
                      (double)s->model.directpred.eps);
    if (n > 0 && (size_t)n < sizeof buf && s->model.pred_frozen)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " pred_frozen=1");
    if (n > 0 && (size_t)n < sizeof buf && s->optim.predictor_lr_mult != 1.0f)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " pred_lr_mult=%.9g",
                      (double)s->optim.predictor_lr_mult);
    if (n > 0 && (size_t)n < sizeof buf &&
        (s->model.predictor_negated || s->model.init_nudge_ulps))
        n += snprintf(buf + n, sizeof buf - (size_t)n, " init_mods=%d,%d",
                      s->model.predictor_negated, s->model.init_nudge_ulps);
    uint64_t hsh = 0xcbf29ce484222325ull; /* FNV-1a */
    for (int i = 0; i < n && i < (int)sizeof buf; i++) {
        hsh ^= (unsigned char)buf[i];
        hsh *= 0x100000001b3ull;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)hsh);
}

/* lr, rank, linear, w_cos_i and w_asym came later: a checkpoint without
 * them reads NaN (not recorded) */
static const char *hist_fields[] = {"loss", "align", "uniform", "collapse", "knn", "pairs_per_s",
                                    "tau", "lr", "rank", "linear", "w_cos_i", "w_asym"};
#define NHIST_FIELDS (int)(sizeof hist_fields / sizeof hist_fields[0])
#define STEP_COLS (2 + NHIST_FIELDS)

static double *hist_field(rw_metrics *e, int k)
{
    double *f[] = {&e->loss, &e->align, &e->uniform, &e->collapse, &e->knn, &e->pairs_per_s,
                   &e->tau, &e->lr, &e->rank, &e->linear, &e->w_cos_i, &e->w_asym};
    return f[k];
}

int rw_checkpoint_save(rw_model *m, const rw_train_state *ts, const char *path, char *err,
                       size_t errlen)
{
    host_model h;
    rw_st_writer *w = model_writer(m, &h, 0, path, err, errlen);
    if (!w)
        return -1;
    int64_t np = (int64_t)rw_model_nparams(m);
    rw_st_add_f32(w, "optimizer.adam_m", &np, 1, h.m);
    rw_st_add_f32(w, "optimizer.adam_v", &np, 1, h.v);
    /* DirectPred's running correlation, exact (a resume sets the same W) */
    const double *corr = rw_model_directpred_corr(m);
    const int64_t dd[2] = {rw_model_cfg_of(m)->proj_out, rw_model_cfg_of(m)->proj_out};
    if (corr)
        rw_st_add(w, DIRECTPRED_CORR, RW_ST_F64, dd, 2, corr);
    set_model_meta(w, m);
    rw_st_set_meta(w, "runaway.kind", "checkpoint");
    rw_st_set_meta(w, "runaway.checkpoint_format", CKPT_FORMAT);
    rw_st_set_meta(w, "runaway.spec_digest", ts->spec_digest);
    if (ts->spec_yaml)
        rw_st_set_meta(w, "runaway.spec", ts->spec_yaml);
    if (ts->data_digest[0])
        rw_st_set_meta(w, "runaway.data_digest", ts->data_digest);
    char buf[256];
    snprintf(buf, sizeof buf, "%d %ld %ld %ld %.17g %.17g %.17g %.17g %.17g %.17g", ts->epoch,
             ts->batch, ts->step, rw_model_adam_step(m), ts->sums[0], ts->sums[1], ts->sums[2],
             ts->sums[3], ts->sums[4], ts->elapsed);
    rw_st_set_meta(w, "runaway.position", buf);
    snprintf(buf, sizeof buf, "%.17g %.17g %.17g %.17g %.17g", ts->step_sums[0], ts->step_sums[1],
             ts->step_sums[2], ts->step_sums[3], ts->step_sums[4]);
    rw_st_set_meta(w, "runaway.step_window", buf);
    /* History as JSON (NaN -> null: JSON has no NaN). */
    json_t *arr = json_array();
    for (int e = 0; e < ts->nhist; e++) {
        json_t *o = json_object();
        json_object_set_new(o, "epoch", json_integer(ts->hist[e].epoch));
        json_object_set_new(o, "step", json_integer(ts->hist[e].step));
        for (int k = 0; k < NHIST_FIELDS; k++) {
            double v = *hist_field(&ts->hist[e], k);
            json_object_set_new(o, hist_fields[k], isfinite(v) ? json_real(v) : json_null());
        }
        json_array_append_new(arr, o);
    }
    char *js = json_dumps(arr, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(arr);
    rw_st_set_meta(w, "runaway.history", js ? js : "[]");
    free(js);
    /* the step reports as float64 rows (exact; bulkier as JSON): epoch,
     * step, then the history's fields */
    double *rows = ts->nsteps > 0 ? malloc((size_t)ts->nsteps * STEP_COLS * sizeof *rows) : NULL;
    if (ts->nsteps > 0 && !rows) {
        snprintf(err, errlen, "%s: out of memory", path);
        rw_st_writer_free(w);
        host_free(&h);
        return -1;
    }
    for (long i = 0; i < ts->nsteps; i++) {
        double *r = rows + i * STEP_COLS;
        r[0] = ts->steps[i].epoch;
        r[1] = (double)ts->steps[i].step;
        for (int k = 0; k < NHIST_FIELDS; k++)
            r[2 + k] = *hist_field(&ts->steps[i], k);
    }
    if (rows) {
        int64_t shape[2] = {ts->nsteps, STEP_COLS};
        rw_st_add(w, "runaway.step_history", RW_ST_F64, shape, 2, rows);
    }
    int rc = rw_st_write(w, path, err, errlen);
    free(rows);
    rw_st_writer_free(w);
    host_free(&h);
    return rc;
}

int rw_checkpoint_load(rw_model *m, const char *path, const char *expect_digest,
                       const char *expect_data, rw_train_state *ts, char *err, size_t errlen)
{
    memset(ts, 0, sizeof *ts);
    rw_st *st = rw_st_open(path, err, errlen);
    if (!st)
        return -1;
    host_model h;
    int rc = -1;
    json_t *arr = NULL;
    if (host_alloc(m, &h) != 0) {
        rw_st_close(st);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    const char *kind = rw_st_meta(st, "runaway.kind");
    const char *digest = rw_st_meta(st, "runaway.spec_digest");
    const char *pos = rw_st_meta(st, "runaway.position");
    const char *hist = rw_st_meta(st, "runaway.history");
    if (!kind || strcmp(kind, "checkpoint") != 0 || !digest || !pos || !hist) {
        snprintf(err, errlen, "%s: not a runaway checkpoint (metadata missing)", path);
        goto done;
    }
    if (expect_digest && strcmp(digest, expect_digest) != 0) {
        snprintf(err, errlen, "%s: checkpoint belongs to a different spec (digest %s, this spec %s); "
                 "remove it or use another output folder", path, digest, expect_digest);
        goto done;
    }
    /* written before data digests: taken on trust */
    const char *data = rw_st_meta(st, "runaway.data_digest");
    if (data && expect_data && strcmp(data, expect_data) != 0) {
        snprintf(err, errlen, "%s: written while training on other data (%s) than data.path "
                 "holds now (%s): its files changed since the job started; remove the checkpoint "
                 "(or use another output folder) to train afresh on them", path, data, expect_data);
        goto done;
    }
    long adam_step;
    if (sscanf(pos, "%d %ld %ld %ld %lg %lg %lg %lg %lg %lg", &ts->epoch, &ts->batch, &ts->step,
               &adam_step, &ts->sums[0], &ts->sums[1], &ts->sums[2], &ts->sums[3], &ts->sums[4],
               &ts->elapsed) != 10 || ts->epoch < 0 || ts->batch < 0 || ts->step < 0) {
        snprintf(err, errlen, "%s: bad runaway.position metadata", path);
        goto done;
    }
    /* written before it was kept: the window in progress starts empty */
    const char *win = rw_st_meta(st, "runaway.step_window");
    if (win && (sscanf(win, "%lg %lg %lg %lg %lg", &ts->step_sums[0], &ts->step_sums[1],
                       &ts->step_sums[2], &ts->step_sums[3], &ts->step_sums[4]) != 5 ||
                !(ts->step_sums[4] >= 0))) {
        snprintf(err, errlen, "%s: bad runaway.step_window metadata", path);
        goto done;
    }
    int has_teacher = read_model_tensors(st, m, &h, path, err, errlen);
    if (has_teacher < 0)
        goto done;
    if (!has_teacher) {
        snprintf(err, errlen, "%s: checkpoint has no teacher tensors", path);
        goto done;
    }
    int64_t np = (int64_t)rw_model_nparams(m);
    if (rw_st_get_f32(st, "optimizer.adam_m", &np, 1, h.m, err, errlen) != 0 ||
        rw_st_get_f32(st, "optimizer.adam_v", &np, 1, h.v, err, errlen) != 0)
        goto done;
    double *corr = rw_model_directpred_corr(m);
    const int64_t dd[2] = {rw_model_cfg_of(m)->proj_out, rw_model_cfg_of(m)->proj_out};
    if (corr && rw_st_get(st, DIRECTPRED_CORR, RW_ST_F64, dd, 2, corr, err, errlen) != 0)
        goto done;
    json_error_t jerr;
    arr = json_loads(hist, 0, &jerr);
    if (!arr || !json_is_array(arr)) {
        snprintf(err, errlen, "%s: bad runaway.history metadata", path);
        goto done;
    }
    ts->nhist = (int)json_array_size(arr);
    ts->hist = calloc((size_t)ts->nhist + 1, sizeof *ts->hist);
    if (!ts->hist) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto done;
    }
    for (int e = 0; e < ts->nhist; e++) {
        json_t *o = json_array_get(arr, (size_t)e);
        ts->hist[e].epoch = (int)json_integer_value(json_object_get(o, "epoch"));
        ts->hist[e].step = (long)json_integer_value(json_object_get(o, "step"));
        for (int k = 0; k < NHIST_FIELDS; k++) {
            json_t *v = json_object_get(o, hist_fields[k]);
            *hist_field(&ts->hist[e], k) = json_is_number(v) ? json_number_value(v) : NAN;
        }
    }
    /* written before it was kept: no step reports to send again */
    const rw_st_tensor *sh = rw_st_find(st, "runaway.step_history");
    if (sh) {
        if (sh->dtype != RW_ST_F64 || sh->ndim != 2 || sh->shape[1] != STEP_COLS ||
            sh->shape[0] > (1L << 26)) {
            snprintf(err, errlen, "%s: bad runaway.step_history tensor", path);
            goto done;
        }
        ts->nsteps = ts->capsteps = (long)sh->shape[0];
        ts->steps = calloc((size_t)ts->nsteps + 1, sizeof *ts->steps);
        if (!ts->steps) {
            snprintf(err, errlen, "%s: out of memory", path);
            goto done;
        }
        for (long i = 0; i < ts->nsteps; i++) {
            double r[STEP_COLS];
            memcpy(r, (const char *)sh->data + (size_t)i * sizeof r, sizeof r); /* unaligned */
            if (!(r[0] >= 0 && r[0] <= 1e6 && r[1] >= 0 && r[1] <= 9e15)) {
                snprintf(err, errlen, "%s: runaway.step_history row %ld: epoch %g, step %g",
                         path, i, r[0], r[1]);
                goto done;
            }
            ts->steps[i].epoch = (int)r[0];
            ts->steps[i].step = (long)r[1];
            for (int k = 0; k < NHIST_FIELDS; k++)
                *hist_field(&ts->steps[i], k) = r[2 + k];
        }
    }
    snprintf(ts->spec_digest, sizeof ts->spec_digest, "%s", digest);
    snprintf(ts->data_digest, sizeof ts->data_digest, "%s", data ? data : "");
    host_upload(m, &h, 1, 1);
    rw_model_set_adam_step(m, adam_step);
    rc = 0;
done:
    if (rc != 0) {
        free(ts->hist);
        ts->hist = NULL;
        free(ts->steps);
        ts->steps = NULL;
        ts->nsteps = ts->capsteps = 0;
    }
    json_decref(arr);
    rw_st_close(st);
    host_free(&h);
    return rc;
}
