/* runaway run: a daemon if none runs, submit, watch until done, the table. */
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/cli/cli.h"

int cmd_run(const char *path, int dargc, char **dargv)
{
    conn c = {.fd = -1};
    /* the spec first: a typo should not start a daemon */
    char *text;
    size_t len;
    char basedir[RW_PATH_MAX], err[2048];
    if (rw_grid_read_file(path, RW_SUBMIT_TEXT_MAX, &text, &len, basedir, sizeof basedir, err,
                          sizeof err) != 0)
        die("%s", err);
    rw_grid g;
    if (rw_grid_parse(text, len, path, basedir, &g, err, sizeof err) != 0)
        die("%s", err);
    rw_grid_free(&g);
    free(text);
    daemon_start(dargc, dargv, 0);
    need_conn(&c);
    json_t *r = do_submit(&c, path, NULL, 0, 0, 0);
    print_submitted(r);
    char grid[32];
    snprintf(grid, sizeof grid, "g%lld", jint(r, "grid"));
    json_decref(r);
    r = request(&c, req_new("status"));
    const char *tb = json_string_value(json_object_get(r, "tensorboard"));
    if (tb) /* the live curves, for whoever has TensorBoard */
        printf("curves: tensorboard --logdir %s   or   runaway plot %s -o %s.png --every 10\n", tb,
               grid, grid);
    json_decref(r);
    fflush(stdout);
    int rc = watch(&c, grid);
    printf("\n");
    char *one[1] = {grid};
    print_table(&c, one, 1);
    conn_close(&c);
    if (rc)
        fprintf(stderr, "runaway: not every job of %s finished: see `runaway ls %s`\n", grid, grid);
    return rc;
}
