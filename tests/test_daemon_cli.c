/* The runaway CLI's errors and what it does without a daemon: submit
 * --dry-run, clear messages for a missing daemon and bad specs, and daemon
 * start / status / stop. */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* submit --dry-run needs no daemon: each job, with the fields in which the
 * grid's jobs differ (not the name and seed its name carries), and what
 * the others share; nothing is started or written. */
Test(cli, submit_dry_run_lists_the_jobs_and_what_differs, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 30)
{
    char out[8192], path[128];
    snprintf(path, sizeof path, "%s/dry.yaml", fx.dir);
    fx_write_grid(path, "dry", 3, 0,
                  "  seed: [0, 1]\n"
                  "  variant:\n"
                  "    - {name: base, optim: {epochs: 0}}\n"
                  "    - {name: np, model: {predictor: none}}\n");
    int rc = fx_cli(out, sizeof out, 10, "submit", path, "--dry-run", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "grid dry: 4 jobs, priority 0 (dry run: nothing submitted)\n"), "%s", out);
    /* the two fields that vary, in the spec's order, and nothing else */
    const char *rows[4] = {"  dry/base/seed0", "  dry/base/seed1", "  dry/np/seed0", "  dry/np/seed1"};
    const char *diff[2] = {"model.predictor: mlp  optim.epochs: 0\n",
                           "model.predictor: none  optim.epochs: 3\n"};
    for (int k = 0; k < 4; k++) {
        const char *row = strstr(out, rows[k]);
        cr_assert_not_null(row, "%s", out);
        const char *end = strchr(row, '\n');
        const char *d = strstr(row, diff[k / 2]);
        cr_assert(d && d + strlen(diff[k / 2]) - 1 == end, "row %d: %.*s", k, (int)(end - row), row);
    }
    cr_assert(strstr(out, " fields the same in every job"), "%s", out);
    char sp[160];
    snprintf(sp, sizeof sp, "%s/runawayd.sock", fx.dir);
    struct stat st;
    cr_assert(stat(sp, &st) != 0 && errno == ENOENT, "a daemon was started: %s", sp);
    /* a bad grid: the parser's message */
    fx_write_grid(path, "dry", 3, 0, "  variant:\n    - {name: x, model: {predictor: nope}}\n");
    rc = fx_cli(out, sizeof out, 10, "submit", "-n", path, NULL);
    cr_assert(rc == 1 && strstr(out, "model.predictor") && strstr(out, "nope"), "%s", out);
}

/* A figure in a format that plot and sphere do not draw (.png, .pdf, .svg)
 * is a usage error, found before runawayd is asked anything (there is
 * none here): not a PNG under another name. */
Test(cli, a_figure_of_another_extension_is_a_usage_error, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 30)
{
    char out[4096];
    int rc = fx_cli(out, sizeof out, 10, "plot", "g1", "-o", "plot.jpg", NULL);
    cr_assert(rc == 2 && strstr(out, "runaway plot: -o plot.jpg: the figure is a .png, .pdf or "
                                     ".svg file (by its extension)\nusage: runaway plot "),
              "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "sphere", "g1", "--out", "sphere", NULL);
    cr_assert(rc == 2 && strstr(out, "runaway sphere: -o sphere: the figure is a .png, .pdf or "
                                     ".svg file"), "got: %s", out);
    /* a good one goes on to ask runawayd */
    rc = fx_cli(out, sizeof out, 10, "plot", "g1", "-o", "plot.PDF", NULL);
    cr_assert(rc == 1 && strstr(out, "no runawayd at "), "got: %s", out);
}

Test(cli, clear_errors_without_a_daemon_and_for_bad_specs, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 30)
{
    char out[4096], want[256], path[128];
    int rc = fx_cli(out, sizeof out, 10, "ls", NULL);
    snprintf(want, sizeof want,
             "no runawayd at %s/runawayd.sock: start it with `runaway daemon start`", fx.dir);
    cr_assert_eq(rc, 1);
    cr_assert(strstr(out, want) != NULL, "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "watch", "g1", NULL);
    cr_assert(rc == 1 && strstr(out, want), "got: %s", out);

    /* a bad spec: the parser's message, daemon or not */
    snprintf(path, sizeof path, "%s/bad.yaml", fx.dir);
    fx_write_file(path, "base:\n  optim: {lr: fast}\ngrid: {seed: [0]}\n");
    rc = fx_cli(out, sizeof out, 10, "submit", path, NULL);
    cr_assert_eq(rc, 1);
    cr_assert(strstr(out, "bad.yaml: base: optim.lr: must be a number") && strstr(out, "line 2"),
              "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "run", path, NULL);
    cr_assert(rc == 1 && strstr(out, "optim.lr"), "got: %s", out);
    cr_assert_neq(access(fx.sock, F_OK), 0, "run started a daemon for a bad spec");
    rc = fx_cli(out, sizeof out, 10, "submit", "/nonexistent.yaml", NULL);
    cr_assert(rc == 1 && strstr(out, "/nonexistent.yaml: cannot open"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "frobnicate", NULL);
    cr_assert(rc == 2 && strstr(out, "unknown command"), "got: %s", out);

    /* daemon start / status / stop, then the same errors again */
    rc = fx_cli(out, sizeof out, 20, "daemon", "start", "--cpu-slots", "1", NULL);
    cr_assert(rc == 0 && strstr(out, "runawayd started"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "daemon", "status", NULL);
    cr_assert(rc == 0 && strstr(out, "1 worker slots"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "show", "j7", NULL);
    cr_assert(rc == 1 && strstr(out, "no job 'j7'"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 30, "daemon", "stop", NULL);
    cr_assert(rc == 0 && strstr(out, "runawayd stopped"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "ls", NULL);
    cr_assert(rc == 1 && strstr(out, want), "got: %s", out);
}

/* Every command and subcommand answers --help and `runaway help CMD` with its
 * usage and exits 0; the list comes from the program (help --commands), so a
 * command added later is checked too. */
Test(cli, every_command_answers_help_and_exits_0, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 60)
{
    char list[4096], out[8192];
    int rc = fx_cli(list, sizeof list, 10, "help", "--commands", NULL);
    cr_assert_eq(rc, 0, "%s", list);
    int seen = 0;
    for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
        char words[64], *sub = NULL;
        snprintf(words, sizeof words, "%s", line);
        if ((sub = strchr(words, ' ')))
            *sub++ = 0;
        char want[96];
        snprintf(want, sizeof want, "usage: runaway %s", line);
        if (!strcmp(line, "help"))
            snprintf(want, sizeof want, "usage: runaway [GLOBAL OPTIONS]");
        rc = sub ? fx_cli(out, sizeof out, 10, words, sub, "--help", NULL)
                 : fx_cli(out, sizeof out, 10, words, "--help", NULL);
        cr_assert(rc == 0 && strstr(out, want) == out, "%s --help: rc %d: %s", line, rc, out);
        rc = sub ? fx_cli(out, sizeof out, 10, "help", words, sub, NULL)
                 : fx_cli(out, sizeof out, 10, "help", words, NULL);
        cr_assert(rc == 0 && strstr(out, want) == out, "help %s: rc %d: %s", line, rc, out);
        seen++;
    }
    cr_assert_geq(seen, 20, "only %d commands listed", seen);
    /* a group answers with its subcommands */
    rc = fx_cli(out, sizeof out, 10, "daemon", "--help", NULL);
    cr_assert(rc == 0 && strstr(out, "daemon start") && strstr(out, "daemon check"), "%s", out);
    /* help is not the command: grids --help printed the grids before */
    rc = fx_cli(out, sizeof out, 10, "grids", "--help", NULL);
    cr_assert(rc == 0 && !strstr(out, "no runawayd"), "%s", out);
    rc = fx_cli(out, sizeof out, 10, "--version", NULL);
    cr_assert(rc == 0 && !strncmp(out, "runaway ", 8) && strchr("0123456789", out[8]), "%s", out);
}

/* Usage errors exit 2 and say what is wrong (with a near name when there is
 * one); failures exit 1; the same for every command. */
Test(cli, usage_errors_exit_2_and_suggest_the_near_name, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 60)
{
    char out[4096];
    static const struct {
        const char *args[5], *want;
    } cases[] = {
        {{"sbumit", "q.yaml"}, "unknown command 'sbumit'; did you mean 'submit'?"},
        {{"tabel", "g1"}, "did you mean 'table'?"},
        {{"submit", "q.yaml", "--dryrun"}, "unknown option '--dryrun'; did you mean '--dry-run'?"},
        {{"logs", "j1", "--tial", "5"}, "did you mean '--tail'?"},
        {{"logs", "j1", "--tail"}, "--tail needs a value"},
        {{"show"}, "runaway show: expected JOB"},
        {{"show", "j1", "j2"}, "runaway show: too many arguments"},
        {{"grids", "extra"}, "runaway grids: takes no arguments"},
        {{"diff", "j1"}, "runaway diff: expected JOB JOB"},
        {{"daemon"}, "runaway daemon: which subcommand?"},
        {{"daemon", "strat"}, "runaway daemon: no subcommand 'strat'"},
        {{"--stat-dir", "x", "ls"}, "did you mean '--state-dir'?"},
        {{"submit", "q.yaml", "--priority", "high"}, "'high' is not a whole number"},
        {{"ls", "--xyzzy"}, "unknown option '--xyzzy'"},
        {{"plot", "g1", "--every", "0.01"}, "runaway plot: --every takes seconds"},
        {{"sphere", "g1", "--samples", "2"}, "runaway sphere: --samples takes 3..50000"},
        {{"sphere", "g1", "--backend", "tpu"}, "runaway sphere: --backend is auto, cpu or cuda"},
        {{"table", "g1", "--format", "html"}, "runaway table: --format is text, csv"},
        {{"logs", "j1", "--tail", "many"}, "--tail: 'many' is not a count"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *const *a = cases[i].args;
        int rc = fx_cli(out, sizeof out, 10, a[0], a[1], a[2], a[3], a[4], NULL);
        cr_assert(rc == 2 && strstr(out, cases[i].want), "case %zu (%s): rc %d: %s", i, a[0], rc,
                  out);
    }
    /* a failure, not a usage error: 1 */
    int rc = fx_cli(out, sizeof out, 10, "show", "j1", NULL);
    cr_assert(rc == 1 && strstr(out, "no runawayd"), "rc %d: %s", rc, out);
}

/* --json: one JSON document per command, with the reply's field names. */
Test(cli, json_on_ls_show_grids_workers_table_metrics_status, .init = fx_setup,
     .fini = fx_teardown, .timeout = 90)
{
    fx_submit_grid("js", 2, 0, "  seed: [0, 1]\n");
    fx_wait_jobs("done", 2, 60);
    static const struct {
        const char *args[3], *path; /* a field that must be there: "a" or "a.0.b" */
    } cases[] = {
        {{"ls"}, "jobs.0.id"},          {{"ls", "js"}, "progress"},
        {{"show", "j1"}, "job.state"}, {{"grids"}, "grids.0.name"},
        {{"workers"}, "workers.0.slot"}, {{"table", "js"}, "rows.0.variant"},
        {{"metrics", "js"}, "rows.0.loss"}, {{"daemon", "status"}, "pid"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[1 << 16];
        const char *const *a = cases[i].args;
        int rc = a[1] ? fx_cli(out, sizeof out, 20, a[0], a[1], "--json", NULL)
                      : fx_cli(out, sizeof out, 20, a[0], "--json", NULL);
        cr_assert_eq(rc, 0, "%s --json: %s", a[0], out);
        json_error_t e;
        json_t *doc = json_loads(out, 0, &e);
        cr_assert(json_is_object(doc), "%s --json is not one JSON object (%s): %.300s", a[0],
                  e.text, out);
        cr_assert_null(json_object_get(doc, "type"), "%s: the envelope leaked", a[0]);
        char path[64];
        snprintf(path, sizeof path, "%s", cases[i].path);
        const json_t *v = doc;
        for (char *part = strtok(path, "."); part && v; part = strtok(NULL, "."))
            v = json_is_array(v) ? json_array_get(v, strtoul(part, NULL, 10))
                                 : json_object_get(v, part);
        cr_assert_not_null(v, "%s --json: no %s in %.400s", a[0], cases[i].path, out);
        json_decref(doc);
    }
    /* metrics: every row, the same as the CSV's */
    char csv[1 << 16], js[1 << 16];
    cr_assert_eq(fx_cli(csv, sizeof csv, 20, "metrics", "js", NULL), 0, "%s", csv);
    cr_assert_eq(fx_cli(js, sizeof js, 20, "metrics", "js", "--json", NULL), 0, "%s", js);
    json_t *doc = json_loads(js, 0, NULL);
    int lines = 0;
    for (const char *p = csv; (p = strchr(p, '\n')); p++)
        lines++;
    cr_assert_eq((int)json_array_size(json_object_get(doc, "rows")), lines - 1, "%s", csv);
    json_decref(doc);
}

/* The bash completion asks runaway itself: commands, subcommands, flags. */
Test(cli, bash_completion_offers_commands_subcommands_and_flags, .init = fx_prepare,
     .fini = fx_teardown, .timeout = 30)
{
    const char *src = getenv("RW_SOURCE_ROOT");
    cr_assert_not_null(src, "RW_SOURCE_ROOT is not set");
    char bin[PATH_MAX], script[PATH_MAX * 2 + 1024], out[4096];
    fx_bin(bin, sizeof bin, "tools");
    snprintf(script, sizeof script,
             "PATH=%s:$PATH; source %s/tools/cli/runaway.bash\n"
             "c() { COMP_WORDS=(\"$@\"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=();"
             " _runaway; echo \"$*|${COMPREPLY[*]}\"; }\n"
             "c runaway sub; c runaway daemon st; c runaway submit q.yaml --dr;"
             " c runaway plot g1 --ev; c runaway --sta\n",
             bin, src);
    const char *argv[] = {"/bin/bash", "-c", script, NULL};
    int rc = fx_run(out, sizeof out, 20, argv);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "runaway sub|submit\n"), "%s", out);
    cr_assert(strstr(out, "runaway daemon st|start stop status\n"), "%s", out);
    cr_assert(strstr(out, "runaway submit q.yaml --dr|--dry-run\n"), "%s", out);
    cr_assert(strstr(out, "runaway plot g1 --ev|--every\n"), "%s", out);
    cr_assert(strstr(out, "runaway --sta|--state-dir\n"), "%s", out);
}

/* submit's FIELD=VALUE words set the grid's base: --dry-run shows what
 * they changed, the daemon applies them through the same parser (its
 * messages), the stored specs and the grid's text record them; diff
 * compares specs field by field, and show prints floats short. */
Test(cli, submit_overrides_diff_by_field_and_short_floats, .init = fx_setup, .fini = fx_teardown,
     .timeout = 60)
{
    char out[8192], path[128];
    snprintf(path, sizeof path, "%s/ov.yaml", fx.dir);
    fx_write_grid(path, "ov", 2, 0,
                  "  variant:\n"
                  "    - {name: byol, loss: {kind: byol}}\n"
                  "    - {name: raft, loss: {kind: unified, alpha: 1.0, beta: -1.0}}\n"
                  "    - {name: np, model: {predictor: none}}\n");
    int rc = fx_cli(out, sizeof out, 10, "submit", path, "--dry-run", "optim.lr=3e-3",
                    "model.predictor=linear", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "command line: optim.lr=3e-3 model.predictor=linear\n") &&
                  strstr(out, "\n  optim.lr                       0.0003 -> 0.003\n") &&
                  strstr(out, "\n  model.predictor                mlp -> linear\n"),
              "%s", out);
    /* by field: the weights RAFT has and BYOL lacks, and nothing shifted */
    char want[512];
    snprintf(want, sizeof want, "  %-40s  model.predictor: linear  loss.kind: byol  loss.alpha: "
             "(absent)  loss.beta: (absent)\n", "ov/byol/seed0");
    cr_assert(strstr(out, want), "%s", out);
    snprintf(want, sizeof want, "  %-40s  model.predictor: linear  loss.kind: unified  "
             "loss.alpha: 1  loss.beta: -1\n", "ov/raft/seed0");
    cr_assert(strstr(out, want), "%s", out);

    /* bad words: the parser's messages, from the daemon too */
    rc = fx_cli(out, sizeof out, 20, "submit", path, "optim.lr=fast", NULL);
    cr_assert(rc == 1 && strstr(out, "command line: optim.lr: must be a number in (0, 10], got "
                                     "'fast'") && !strstr(out, "(line"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "submit", path, "optim.lrr=1", NULL);
    cr_assert(rc == 1 && strstr(out, "command line: optim.lrr: unknown field (allowed in optim: "
                                     "lr, weight_decay"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "submit", path, "fast", NULL);
    cr_assert(rc == 2 && strstr(out, "unexpected argument 'fast'"), "%s", out);
    /* sent raw, past the client's own parse: the daemon's word */
    json_t *m = rw_msg_new("submit", 3);
    json_object_set_new(m, "text", json_string("name: raw\n"));
    json_object_set_new(m, "origin", json_string("raw.yaml"));
    json_object_set_new(m, "basedir", json_string("/tmp"));
    json_object_set_new(m, "overrides", json_pack("[s]", "model.width=199"));
    fx_expect_error(fx_ask(m), RW_E_BAD_SPEC,
                    "command line: model.width: must be an integer in 1..128, got '199'");

    rc = fx_cli(out, sizeof out, 20, "submit", path, "optim.lr=3e-3", "model.predictor=linear",
                NULL);
    cr_assert_eq(rc, 0, "%s", out);
    sqlite3 *db = fx_open_db();
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM jobs WHERE instr(spec, '  lr: 0.003\n') > 0 "
                               "AND instr(spec, '  predictor: linear\n') > 0",
                           0),
                 2, "byol and raft store the overridden values");
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM jobs WHERE instr(spec, '  lr: 0.003\n') > 0 "
                               "AND instr(spec, '  predictor: none\n') > 0",
                           0),
                 1, "np's variant sets the predictor over the base");
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM grids WHERE instr(text, '\n# runaway submit, "
                               "on the base: optim.lr=3e-3 model.predictor=linear\n') > 0",
                           0),
                 1, "the grid's text records the words");
    sqlite3_close(db);

    rc = fx_cli(out, sizeof out, 20, "diff", "ov/byol/seed0", "ov/raft/seed0", NULL);
    cr_assert(rc == 0 && strstr(out, "\n4 fields differ\n"), "%s", out);
    const char *rows[4][3] = {{"name", "\"byol\"", "\"raft\""},
                              {"loss.kind", "byol", "unified"},
                              {"loss.alpha", "(absent)", "1"},
                              {"loss.beta", "(absent)", "-1"}};
    for (int k = 0; k < 4; k++) {
        snprintf(want, sizeof want, "\n%-32s %-28s %s\n", rows[k][0], rows[k][1], rows[k][2]);
        cr_assert(strstr(out, want), "no '%s' in:\n%s", want + 1, out);
    }
    rc = fx_cli(out, sizeof out, 20, "show", "ov/byol/seed0", NULL);
    cr_assert(rc == 0 && strstr(out, "\n    lr: 0.003\n") && strstr(out, "\n    tau: 0.996\n") &&
                  strstr(out, "mean: [0.4914, 0.4822, 0.4465]\n") && !strstr(out, "0.00300000") &&
                  !strstr(out, "0.996000004"),
              "%s", out);
}
