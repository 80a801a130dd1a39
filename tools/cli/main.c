/* runaway: the command-line client of runawayd. The table of commands, their
 * help, and the checks every command gets alike (flags, argument counts,
 * exit status); the commands themselves live in one file per family. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rw_config.h"
#include "tools/cli/cli.h"

/* ------------------------------------------------------------------------ */
/* Commands whose arguments are fixed: the table checked how many */

static int run_submit(int n, char **a)
{
    return cmd_submit(n, a);
}
static int run_show(int n, char **a)
{
    (void)n;
    return cmd_show(a[0]);
}
static int run_diff(int n, char **a)
{
    (void)n;
    return cmd_diff(a[0], a[1]);
}
static int run_cancel(int n, char **a)
{
    (void)n;
    return cmd_cancel(a[0]);
}
static int run_requeue(int n, char **a)
{
    (void)n;
    return cmd_requeue(a[0]);
}
static int run_priority(int n, char **a)
{
    (void)n;
    return cmd_priority(a[0], a[1]);
}
static int run_rm(int n, char **a)
{
    (void)n;
    return cmd_rm(a[0]);
}
static int run_grids(int n, char **a)
{
    (void)n, (void)a;
    return cmd_grids();
}
static int run_workers(int n, char **a)
{
    (void)n, (void)a;
    return cmd_workers();
}
static int run_export(int n, char **a)
{
    const char *pos[2] = {NULL, NULL};
    int np = 0, encoder_only = 0;
    for (int i = 0; i < n; i++) {
        if (!strcmp(a[i], "--encoder-only"))
            encoder_only = 1;
        else if (np < 2)
            pos[np++] = a[i];
    }
    return cmd_export(pos[0], pos[1], encoder_only);
}
static int run_run(int n, char **a)
{
    return cmd_run(a[0], n - 1, a + 1);
}
static int run_daemon_start(int n, char **a)
{
    return daemon_start(n, a, 0);
}
static int run_daemon_stop(int n, char **a)
{
    (void)n, (void)a;
    return daemon_stop();
}
static int run_daemon_status(int n, char **a)
{
    (void)n, (void)a;
    return daemon_status();
}
static int run_daemon_check(int n, char **a)
{
    (void)n, (void)a;
    return daemon_check();
}
static int run_token_new(int n, char **a)
{
    (void)n;
    return token_new(a[0]);
}

/* ------------------------------------------------------------------------ */
/* The table */

#define JSON_FLAG {"--json", NULL, NULL, "print one JSON document (docs/cli.md lists its fields)"}

static const cli_flag no_flags[] = {{0}};
static const cli_flag json_only[] = {JSON_FLAG, {0}};
static const cli_flag submit_flags[] = {
    {"--priority", NULL, "P", "the grid's priority, -1000..1000 (higher runs first; default: the file's, else 0)"},
    {"--dry-run", "-n", NULL, "list the jobs and how they differ; submit nothing"},
    {0}};
static const cli_flag ls_flags[] = {
    {"--state", NULL, "S", "only jobs in state S: queued, running, done, failed, cancelled or collapsed"},
    JSON_FLAG,
    {0}};
static const cli_flag logs_flags[] = {
    {"--tail", NULL, "N", "the last N lines and events (default 200)"},
    {"--follow", "-f", NULL, "then print new ones until the job has ended"},
    {0}};
static const cli_flag table_flags[] = {
    {"--format", NULL, "F", "text (default), csv, markdown or latex"},
    JSON_FLAG,
    {0}};
static const cli_flag metrics_flags[] = {
    {"--steps", NULL, NULL, "every logged step's metrics, not every epoch's"},
    {"--out", "-o", "OUT.csv", "write the CSV there (whole, then renamed), not to stdout"},
    JSON_FLAG,
    {0}};
static const cli_flag plot_flags[] = {
    {"--out", "-o", "OUT", "draw into OUT (.png, .pdf or .svg); without it, text on the terminal"},
    {"--every", NULL, "S", "redraw every S seconds until every job has ended"},
    {"--data", NULL, "DIR", "keep gnuplot's data files and script in DIR"},
    {"--size", NULL, "COLSxROWS", "text mode: each panel's size in characters"},
    {0}};
static const cli_flag export_flags[] = {
    {"--encoder-only", NULL, NULL,
     "the encoder alone, exactly torchvision's keys (fc.* aside): no heads, no teacher"},
    {0}};
static const cli_flag sphere_flags[] = {
    {"--out", "-o", "OUT", "draw into OUT (.png, .pdf or .svg); without it, only the numbers"},
    {"--samples", NULL, "N", "how many training images to embed (default 2048; at most the set)"},
    {"--snapshots", NULL, "K", "a row of K epochs per variant, from the run's snapshots"},
    {"--data", NULL, "DIR", "keep the data files and the gnuplot script in DIR"},
    {"--backend", NULL, "B", "auto (default), cpu or cuda: where the embeddings are computed"},
    {0}};

static const cli_flag distance_flags[] = {
    {"--out", "-o", "OUT", "also draw the curves into OUT (.png, .pdf or .svg), log y"},
    {"--data", NULL, "DIR", "keep the data files and the gnuplot script in DIR"},
    JSON_FLAG,
    {0}};

static const cli_cmd commands[] = {
    {"daemon start", "[RUNAWAYD OPTIONS...]", "start runawayd in the background",
     "The options go to runawayd as they are (runawayd --help, docs/daemon.md). Waits until it\n"
     "answers; if it fails to start, prints the end of its log.",
     0, -1, NULL, run_daemon_start},
    {"daemon stop", "", "stop runawayd: workers checkpoint, jobs go back to the queue", NULL, 0, 0,
     no_flags, run_daemon_stop},
    {"daemon status", "", "runawayd's state: jobs, workers, the database", NULL, 0, 0, json_only,
     run_daemon_status},
    {"daemon check", "", "PRAGMA integrity_check of the database and its backup",
     "Read-only, with or without a running daemon, on this host's files (not through a\n"
     "forwarded socket). Exits 1 on damage, printing the recovery commands.",
     0, 0, no_flags, run_daemon_check},
    {"submit", "SPEC.yaml [KEY=VALUE...]", "queue a grid file, or a plain spec as a 1-job grid",
     "KEY=VALUE sets a base field by its dotted name (optim.lr=1e-3 model.predictor=linear),\n"
     "checked like the file's; a grid's variants, sweeps and seeds still apply on top (one\n"
     "that every job sets again is refused). Relative paths are from this folder.",
     1, -1, submit_flags, run_submit},
    {"ls", "[GRID]", "jobs: the newest 500, or one grid's", NULL, 0, 1, ls_flags, cmd_ls},
    {"grids", "", "the newest 200 grids: jobs by state and the time left (estimated)", NULL, 0, 0,
     json_only, run_grids},
    {"show", "JOB", "a job: state, attempts, result, spec", NULL, 1, 1, json_only, run_show},
    {"diff", "JOB JOB", "the fields in which two jobs' specs differ", NULL, 2, 2, no_flags,
     run_diff},
    {"logs", "JOB", "the job's log and events", NULL, 1, 1, logs_flags, cmd_logs},
    {"workers", "", "the workers runawayd knows: slots, jobs, hosts", NULL, 0, 0, json_only,
     run_workers},
    {"watch", "JOB|GRID...", "live progress until every job has ended", NULL, 1, -1, no_flags,
     cmd_watch},
    {"cancel", "JOB|GRID", "cancel: running jobs checkpoint and stop", NULL, 1, 1, no_flags,
     run_cancel},
    {"requeue", "JOB|GRID", "failed or cancelled jobs back to the queue, each from its checkpoint",
     NULL, 1, 1, no_flags, run_requeue},
    {"priority", "JOB|GRID P", "a new priority (-1000..1000) for the jobs not yet done",
     "The queued ones move in the queue; running ones keep running.", 2, 2, no_flags,
     run_priority},
    {"rm", "JOB|GRID", "ended jobs out of the database, with their run folders and TensorBoard runs",
     NULL, 1, 1, no_flags, run_rm},
    {"table", "GRID...", "per variant: mean ± std over seeds of the results",
     "Several grids: their jobs pooled by variant name. n: seeds with numbers / jobs; one\n"
     "seed shows its value alone. L_uniform(f) and linear eval are compared with the random\n"
     "baseline (the variant with optim.epochs 0) by Welch's t-test over the seeds, and marked\n"
     "only where two-sided p < 0.05: worse (text *, bold) when L_uniform(f) is higher or\n"
     "linear eval lower, better (text +, italic) the other way; a side with one seed (n=1) is\n"
     "not compared. Jobs the collapse alarm stopped count where they stopped, in a collapsed\n"
     "column. csv adds <m>_vs_baseline (worse, better, ns, n=1), <m>_p, acc_n and collapsed.",
     1, -1, table_flags, cmd_table},
    {"metrics", "JOB|GRID...", "every epoch's metrics as CSV", NULL, 1, -1, metrics_flags,
     cmd_metrics},
    {"plot", "JOB|GRID...", "curves per epoch, per variant (mean over seeds), by gnuplot",
     "Panels: loss, L_align, L_uniform, collapse, kNN, rank, linear evaluation (the jobs'\n"
     "final result a dot), the align-uniform trace and cos(W,I); one key under them.",
     1, -1, plot_flags, cmd_plot},
    {"sphere", "JOB|GRID...", "the paper's Figure 3: f(x) by PCA onto the circle, per variant",
     "Per variant its lowest finished seed; prints the spread numbers. runawayd computes\n"
     "it where the run folders are not on this host.",
     1, -1, sphere_flags, cmd_sphere},
    {"distance", "JOB_A JOB_B [JOB_C JOB_D...]",
     "per pair, how far apart the two jobs' weights are at each snapshot",
     "Per epoch both kept (checkpoint.snapshot_every), |x_A - x_B| / |x_A| of the online\n"
     "encoders' parameters, and of the predictors' with the output layer of a run started\n"
     "from -W0 (model.predictor_negated) negated back: Theorem 5.1 as an experiment\n"
     "(docs/theorem-5-1.md). Reads the run folders: on runawayd's host or a shared state folder.",
     2, -1, distance_flags, cmd_distance},
    {"export", "JOB OUT.safetensors", "the job's weights, with torchvision's names",
     "The encoder under torchvision's names; heads under projector., predictor. (classifier.),\n"
     "the teacher under teacher.; metadata \"runaway\": JSON with the spec, epoch, data digest\n"
     "and version. docs/results.md shows how a CIFAR stem or another width loads.",
     2, 2, export_flags, run_export},
    {"token new", "FILE", "a strong token for --tcp (--token-file), in a new file of mode 0600",
     NULL, 1, 1, no_flags, run_token_new},
    {"run", "SPEC.yaml [RUNAWAYD OPTIONS...]",
     "start a daemon if needed, submit, watch until done, print the table", NULL, 1, -1, NULL,
     run_run},
};
enum { NCOMMANDS = sizeof commands / sizeof commands[0] };

static const char *const global_help =
    "global options (before the command):\n"
    "  --state-dir DIR    runawayd's state folder (default $XDG_STATE_HOME/runaway,\n"
    "                     else ~/.local/state/runaway)\n"
    "  --daemon-bin PATH  the runawayd to start (default: next to runaway, else PATH)\n"
    "  --worker PATH      the runaway-worker to use (default: likewise)\n"
    "  --help, -h         this help; runaway help COMMAND or runaway COMMAND --help: a command's\n"
    "  --version, -V      the version\n";

static void print_usage(FILE *f)
{
    fprintf(f, "usage: runaway [GLOBAL OPTIONS] COMMAND [ARGS...]\n\ncommands:\n");
    for (int i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n%s\nJOB: j12, 12 or a job name (grid/variant/seedK); GRID: g3 or a grid name.\n",
            global_help);
}

static void flag_text(const cli_flag *fl, char *out, size_t len)
{
    snprintf(out, len, "%s%s%s%s%s", fl->name, fl->alias ? ", " : "", fl->alias ? fl->alias : "",
             fl->arg ? " " : "", fl->arg ? fl->arg : "");
}

static void print_help(FILE *f, const cli_cmd *c)
{
    fprintf(f, "usage: runaway %s%s%s%s\n\n%s\n", c->name, c->args[0] ? " " : "", c->args,
            c->flags && c->flags[0].name ? " [OPTIONS]" : "", c->summary);
    if (c->help)
        fprintf(f, "\n%s\n", c->help);
    fprintf(f, "\noptions:\n");
    for (const cli_flag *fl = c->flags; fl && fl->name; fl++) {
        char t[64];
        flag_text(fl, t, sizeof t);
        fprintf(f, "  %-20s %s\n", t, fl->help);
    }
    fprintf(f, "  %-20s %s\n", "--help, -h", "this help");
}

/* Edit distance with transpositions: how far a typo is from a name. */
static int typo_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 99;
    int d[41][41];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int cost = a[i - 1] != b[j - 1];
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[la][lb];
}

/* The nearest of names to word, when near enough to be a typo of it. */
static const char *nearest(const char *word, const char *const *names, int n)
{
    const char *best = NULL;
    int bd = 3;
    for (int i = 0; i < n; i++) {
        int d = typo_distance(word, names[i]);
        if (d < bd || (d == bd && best && strlen(names[i]) < strlen(best)))
            bd = d, best = names[i];
    }
    size_t len = strlen(word);
    return best && (size_t)bd * 3 <= len + 2 ? best : NULL;
}

/* ------------------------------------------------------------------------ */
/* Finding the command, checking its arguments */

/* The command whose name is words[0] (and words[1] for a group such as
 * `daemon start`); *used says how many words it took. */
static const cli_cmd *find_command(int n, char **words, int *used)
{
    for (int i = 0; i < NCOMMANDS; i++) {
        const char *name = commands[i].name, *sp = strchr(name, ' ');
        if (!sp && !strcmp(name, words[0])) {
            *used = 1;
            return &commands[i];
        }
        if (sp && n >= 2 && !strncmp(name, words[0], (size_t)(sp - name)) &&
            words[0][sp - name] == 0 && !strcmp(sp + 1, words[1])) {
            *used = 2;
            return &commands[i];
        }
    }
    return NULL;
}

/* A group's name (`daemon`) with its subcommands, or 0 if word is none. */
static int group_help(FILE *f, const char *word)
{
    size_t len = strlen(word);
    int found = 0;
    for (int i = 0; i < NCOMMANDS; i++)
        if (!strncmp(commands[i].name, word, len) && commands[i].name[len] == ' ') {
            if (f && !found)
                fprintf(f, "usage: runaway %s SUBCOMMAND ...\n\n", word);
            if (f)
                fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
            found++;
        }
    return found;
}

static void unknown_command(int n, char **words)
{
    const char *names[NCOMMANDS + 2];
    int k = 0;
    char group[NCOMMANDS][32];
    for (int i = 0; i < NCOMMANDS; i++) {
        const char *sp = strchr(commands[i].name, ' ');
        if (!sp) {
            names[k++] = commands[i].name;
        } else {
            snprintf(group[i], sizeof group[i], "%.*s", (int)(sp - commands[i].name),
                     commands[i].name);
            names[k++] = group[i];
        }
    }
    names[k++] = "help";
    if (group_help(stderr, words[0])) {
        if (n >= 2)
            fprintf(stderr, "runaway %s: no subcommand '%s'\n", words[0], words[1]);
        else
            fprintf(stderr, "runaway %s: which subcommand?\n", words[0]);
        exit(CLI_USAGE);
    }
    const char *near = nearest(words[0], names, k);
    fprintf(stderr, "runaway: unknown command '%s'", words[0]);
    if (near)
        fprintf(stderr, "; did you mean '%s'?", near);
    fprintf(stderr, "\n(runaway --help lists the commands)\n");
    exit(CLI_USAGE);
}

static const cli_flag *find_flag(const cli_cmd *c, const char *arg)
{
    for (const cli_flag *fl = c->flags; fl->name; fl++)
        if (!strcmp(fl->name, arg) || (fl->alias && !strcmp(fl->alias, arg)))
            return fl;
    return NULL;
}

/* A word that is an option, not a value: -x, --xyz; a negative number is a value. */
static int is_option(const char *a)
{
    return a[0] == '-' && a[1] && !(a[1] >= '0' && a[1] <= '9') && !(a[1] == '.' && a[2]);
}

/* Checks the command's flags and argument count and takes --json out;
 * returns the new argc. */
static int check_args(const cli_cmd *c, int n, char **a)
{
    int out = 0, positional = 0, rest = 0;
    for (int k = 0; k < n; k++) {
        if (rest || !is_option(a[k])) {
            positional++;
            a[out++] = a[k];
            continue;
        }
        if (!strcmp(a[k], "--")) {
            rest = 1;
            continue;
        }
        const cli_flag *fl = find_flag(c, a[k]);
        if (!fl) {
            const char *names[64];
            int m = 0;
            for (const cli_flag *f = c->flags; f->name && m < 62; f++) {
                names[m++] = f->name;
                if (f->alias)
                    names[m++] = f->alias;
            }
            const char *near = nearest(a[k], names, m);
            if (near)
                usage_error(c->name, "unknown option '%s'; did you mean '%s'?", a[k], near);
            usage_error(c->name, "unknown option '%s'", a[k]);
        }
        if (!strcmp(fl->name, "--json")) {
            cli_json = 1;
            continue;
        }
        a[out++] = a[k];
        if (fl->arg) {
            if (k + 1 >= n)
                usage_error(c->name, "%s needs a value (%s)", a[k], fl->arg);
            a[out++] = a[++k];
        }
    }
    if (positional < c->min_args || (c->max_args >= 0 && positional > c->max_args)) {
        if (c->max_args == 0)
            usage_error(c->name, "takes no arguments");
        if (positional < c->min_args)
            usage_error(c->name, "expected %s", c->args);
        usage_error(c->name, "too many arguments (expected %s)", c->args);
    }
    return out;
}

static int wants_help(int n, char **a)
{
    for (int k = 0; k < n && strcmp(a[k], "--"); k++)
        if (!strcmp(a[k], "--help") || !strcmp(a[k], "-h"))
            return 1;
    return 0;
}

/* runaway help [COMMAND]; --commands and --flags CMD feed the shell's completion. */
static int cmd_help(int n, char **a)
{
    if (n == 0 || !strcmp(a[0], "--help") || !strcmp(a[0], "-h") || !strcmp(a[0], "help")) {
        print_usage(stdout);
        return CLI_OK;
    }
    if (!strcmp(a[0], "--commands")) {
        for (int i = 0; i < NCOMMANDS; i++)
            printf("%s\n", commands[i].name);
        printf("help\n");
        return CLI_OK;
    }
    int flags_only = !strcmp(a[0], "--flags");
    if (flags_only)
        a++, n--;
    int used = 0;
    const cli_cmd *c = n ? find_command(n, a, &used) : NULL;
    if (!c) {
        if (n && group_help(flags_only ? NULL : stdout, a[0]))
            return CLI_OK;
        unknown_command(n ? n : 1, n ? a : (char *[]){""});
    }
    if (!flags_only) {
        print_help(stdout, c);
        return CLI_OK;
    }
    for (const cli_flag *fl = c->flags; fl && fl->name; fl++)
        printf("%s\n%s%s", fl->name, fl->alias ? fl->alias : "", fl->alias ? "\n" : "");
    printf("--help\n");
    return CLI_OK;
}

/* ------------------------------------------------------------------------ */

static void set_state_dir(const char *sd)
{
    if (sd) {
        snprintf(state_dir, sizeof state_dir, "%s", sd);
    } else {
        const char *x = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
        if (x && x[0] == '/')
            snprintf(state_dir, sizeof state_dir, "%s/runaway", x);
        else if (home && home[0])
            snprintf(state_dir, sizeof state_dir, "%s/.local/state/runaway", home);
        else
            die("no HOME or XDG_STATE_HOME: give --state-dir");
    }
    char real[PATH_MAX];
    if (realpath(state_dir, real))
        snprintf(state_dir, sizeof state_dir, "%s", real);
    snprintf(sock_path, sizeof sock_path, "%s/runawayd.sock", state_dir);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    int i = 1;
    const char *sd = NULL;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            print_usage(stdout);
            return CLI_OK;
        }
        if (!strcmp(o, "-V") || !strcmp(o, "--version")) {
            printf("runaway %s\n", RW_VERSION);
            return CLI_OK;
        }
        const char **slot = !strcmp(o, "--state-dir")    ? &sd
                            : !strcmp(o, "--daemon-bin") ? &daemon_bin
                            : !strcmp(o, "--worker")     ? &worker_bin
                                                         : NULL;
        if (!slot) {
            const char *names[] = {"--state-dir", "--daemon-bin", "--worker", "--help", "--version"};
            const char *near = nearest(o, names, 5);
            fprintf(stderr, "runaway: unknown global option '%s'", o);
            if (near)
                fprintf(stderr, "; did you mean '%s'?", near);
            fprintf(stderr, "\n(runaway --help lists them)\n");
            return CLI_USAGE;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "runaway: %s needs a value\n", o);
            return CLI_USAGE;
        }
        *slot = argv[++i];
    }
    if (i >= argc) {
        print_usage(stderr);
        return CLI_USAGE;
    }
    int n = argc - i;
    char **a = argv + i;
    if (!strcmp(a[0], "help"))
        return cmd_help(n - 1, a + 1);
    int used = 0;
    const cli_cmd *c = find_command(n, a, &used);
    if (!c) {
        if (n >= 2 && wants_help(1, a + 1) && group_help(stdout, a[0]))
            return CLI_OK;
        unknown_command(n, a);
    }
    cli_usage_args = c->args;
    n -= used, a += used;
    if (wants_help(n, a)) {
        print_help(stdout, c);
        return CLI_OK;
    }
    if (c->flags)
        n = check_args(c, n, a);
    else if (n < c->min_args)
        usage_error(c->name, "expected %s", c->args);
    set_state_dir(sd);
    return c->run(n, a);
}
