/* The files of an image folder, as torchvision's ImageFolder finds them:
 * train/ and val/ hold one folder per class, classes numbered in the byte
 * order of their names (strcmp, Python's sorted), images found at any depth
 * below a class folder by their extension (.jpg, .jpeg, .png, any case);
 * unlabeled/ holds images without classes. Hidden entries (a leading dot)
 * and other files are left alone. Nothing is written to the folder. */
#define _GNU_SOURCE /* st_mtim */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "worker/data_internal.h"

#define WALK_DEPTH_MAX 16 /* a symlink loop stops here */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_file(const void *a, const void *b)
{
    return strcmp(((const rw_if_file *)a)->rel, ((const rw_if_file *)b)->rel);
}

static int is_image_name(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") ||
                   !strcasecmp(dot, ".png"));
}

void rw_if_list_free(rw_if_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->files[i].rel);
    for (int c = 0; c < l->classes; c++)
        free(l->class_names[c]);
    free(l->files);
    free(l->class_names);
    memset(l, 0, sizeof *l);
}

static int add_file(rw_if_list *l, const char *rel, const struct stat *st, uint8_t label)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 1024;
        rw_if_file *v = realloc(l->files, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        l->files = v;
        l->cap = cap;
    }
    char *copy = strdup(rel);
    if (!copy)
        return -1;
    l->files[l->n++] = (rw_if_file){copy, (long long)st->st_size,
                                    (long long)st->st_mtim.tv_sec * 1000000000LL +
                                        st->st_mtim.tv_nsec,
                                    label};
    return 0;
}

/* The entries of dir/rel (hidden ones left out), sorted; NULL with err. */
static char **list_dir(const char *dir, const char *rel, int *count, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    DIR *d = opendir(path);
    if (!d) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **v = realloc(names, (size_t)cap * sizeof *v);
            if (!v)
                goto oom;
            names = v;
        }
        if (!(names[n] = strdup(e->d_name)))
            goto oom;
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, (size_t)n, sizeof *names, cmp_str);
    *count = n;
    return names ? names : calloc(1, sizeof *names);
oom:
    closedir(d);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    snprintf(err, errlen, "%s: out of memory listing it", path);
    return NULL;
}

static void free_names(char **names, int n)
{
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Adds the images at any depth below dir/rel with `label`. */
static int walk(const char *dir, const char *rel, uint8_t label, int depth, rw_if_list *l,
                char *err, size_t errlen)
{
    int n;
    char **names = list_dir(dir, rel, &n, err, errlen);
    if (!names)
        return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char sub[4096], path[4096 + 1024];
        struct stat st;
        if (snprintf(sub, sizeof sub, "%s/%s", rel, names[i]) >= (int)sizeof sub) {
            snprintf(err, errlen, "%s/%s: path too long", dir, rel);
            rc = -1;
            break;
        }
        snprintf(path, sizeof path, "%s/%s", dir, sub);
        if (stat(path, &st) != 0) {
            l->ignored++; /* a dangling link */
            continue;
        }
        if (S_ISDIR(st.st_mode) && depth < WALK_DEPTH_MAX)
            rc = walk(dir, sub, label, depth + 1, l, err, errlen);
        else if (S_ISREG(st.st_mode) && is_image_name(names[i])) {
            if (add_file(l, sub, &st, label) != 0) {
                snprintf(err, errlen, "%s: out of memory listing it", dir);
                rc = -1;
            }
        } else
            l->ignored++;
    }
    free_names(names, n);
    return rc;
}

/* The class folders of dir/split: sorted names of its folders. */
static char **list_classes(const char *dir, const char *split, int *count, char *err,
                           size_t errlen)
{
    int n;
    char **names = list_dir(dir, split, &n, err, errlen);
    if (!names) {
        size_t k = strlen(err);
        snprintf(err + k, errlen > k ? errlen - k : 0,
                 " (an image folder holds train/ and val/, one folder of images per class)");
        return NULL;
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        char path[8192];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s/%s", dir, split, names[i]);
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            names[kept++] = names[i];
        else
            free(names[i]);
    }
    if (kept == 0) {
        snprintf(err, errlen, "%s/%s: no class folders (one folder of images per class)", dir,
                 split);
        free(names);
        return NULL;
    }
    *count = kept;
    return names;
}

static int find_class(char *const *names, int n, const char *name)
{
    char *const *hit = bsearch(&name, names, (size_t)n, sizeof *names, cmp_str);
    return hit ? (int)(hit - names) : -1;
}

int rw_if_scan(const char *dir, int train, int unlabeled, rw_if_list *l, char *err,
               size_t errlen)
{
    memset(l, 0, sizeof *l);
    int nclasses;
    char **classes = list_classes(dir, "train", &nclasses, err, errlen);
    if (!classes)
        return -1;
    l->class_names = classes;
    l->classes = nclasses;
    if (nclasses > RW_CLASSES_MAX) {
        snprintf(err, errlen, "%s/train: %d class folders; runaway handles at most %d", dir,
                 nclasses, RW_CLASSES_MAX);
        goto fail;
    }
    const char *split = train ? "train" : "val";
    int nsplit = nclasses;
    char **names = classes;
    if (!train && !(names = list_classes(dir, split, &nsplit, err, errlen)))
        goto fail;
    int rc = 0;
    for (int i = 0; i < nsplit && rc == 0; i++) {
        int label = train ? i : find_class(classes, nclasses, names[i]);
        if (label < 0) {
            snprintf(err, errlen, "%s/val/%s: class '%s' is not in %s/train (val's classes "
                     "must be train's, or some of them)", dir, names[i], names[i], dir);
            rc = -1;
            break;
        }
        char rel[4096];
        snprintf(rel, sizeof rel, "%s/%s", split, names[i]);
        int before = l->n;
        rc = walk(dir, rel, (uint8_t)label, 1, l, err, errlen);
        if (rc == 0 && l->n == before) {
            snprintf(err, errlen, "%s/%s: empty class folder (no .jpg, .jpeg or .png file)",
                     dir, rel);
            rc = -1;
        }
        if (rc == 0)
            qsort(l->files + before, (size_t)(l->n - before), sizeof *l->files, cmp_file);
    }
    if (names != classes)
        free_names(names, nsplit);
    if (rc != 0)
        goto fail;
    l->labeled = l->n;
    char upath[4096];
    struct stat st;
    snprintf(upath, sizeof upath, "%s/unlabeled", dir);
    if (train && unlabeled && stat(upath, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (walk(dir, "unlabeled", RW_NO_LABEL, 1, l, err, errlen) != 0)
            goto fail;
        qsort(l->files + l->labeled, (size_t)(l->n - l->labeled), sizeof *l->files, cmp_file);
    }
    return 0;
fail:
    rw_if_list_free(l);
    return -1;
}

uint64_t rw_if_list_digest(const rw_if_list *l, int side)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    char line[4200];
    for (int i = -1; i < l->n; i++) {
        int n = i < 0 ? snprintf(line, sizeof line, "side %d classes %d\n", side, l->classes)
                      : snprintf(line, sizeof line, "%s\t%lld\t%lld\t%d\n", l->files[i].rel,
                                 l->files[i].size, l->files[i].mtime_ns, l->files[i].label);
        for (int k = 0; k < n && k < (int)sizeof line; k++) {
            h ^= (unsigned char)line[k];
            h *= 0x100000001b3ull;
        }
    }
    return h;
}
