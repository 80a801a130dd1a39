/* The parts of runaway, the CLI: one file per family of commands (cli.h is
 * what they share; main.c holds the table of commands, help and dispatch). */
#ifndef RUNAWAY_TOOLS_CLI_H
#define RUNAWAY_TOOLS_CLI_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>

#include "proto/frame.h"

/* One command: main checks its flags and argument count, prints its help,
 * then calls run with the arguments after its name (flags included). */
typedef struct cli_flag {
    const char *name;  /* "--dry-run" */
    const char *alias; /* "-n", or NULL */
    const char *arg;   /* its value's name ("P"), or NULL: a switch */
    const char *help;
} cli_flag;

typedef struct cli_cmd {
    const char *name;    /* "submit", "daemon start" */
    const char *args;    /* the arguments' synopsis: "SPEC.yaml [KEY=VALUE...]" */
    const char *summary; /* one line for the table of commands */
    const char *help;    /* what more a user needs, or NULL */
    int min_args, max_args; /* arguments besides flags; max -1: any number */
    const cli_flag *flags;  /* ends with {0}; NULL: options pass through to runawayd */
    int (*run)(int argc, char **argv);
} cli_cmd;

/* Exit status: 0 done (help included), 1 a failure, 2 a usage error. */
enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2 };

/* A usage error of command cmd: the message, then "see runaway CMD --help"; exits 2. */
void usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/* --json was given: commands that offer it print one JSON document. */
extern int cli_json;
/* The running command's arguments, for usage_error's usage line. */
extern const char *cli_usage_args;
/* Prints v as one JSON document on stdout (indented, keys sorted) and frees it. */
void print_json(json_t *v);
/* A reply of runawayd as that document: its fields (proto/PROTOCOL.md), not type and id. */
void print_reply_json(json_t *r);

/* State: where runawayd's socket is, and the programs to start. */
extern char state_dir[PATH_MAX];
extern char sock_path[PATH_MAX + 32];
extern const char *daemon_bin, *worker_bin;
extern int connect_errno; /* errno of the last connect that failed */

/* How long a command waits for a runawayd that went away. */
#define RECONNECT_S 600

typedef struct conn {
    int fd;
    rw_frame_reader r;
} conn;

/* client.c */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void die_no_daemon(void) __attribute__((noreturn));
void conn_close(conn *c);
json_t *request_or_lost(conn *c, json_t *m, int secs, char *why, size_t whylen);
json_t *request_within(conn *c, json_t *m, int secs);
json_t *request(conn *c, json_t *m);
int open_conn(conn *c);
void need_conn(conn *c);
double mono_s(void);
void reconnect(conn *c, const char *why);
json_t *req_new(const char *type);
const char *jstr(const json_t *o, const char *k);
long long jint(const json_t *o, const char *k);
int find_prog(const char *name, const char *subdir, char *out, size_t len);

/* daemonctl.c */
int daemon_start(int argc, char **argv, int quiet);
int daemon_check(void);
int daemon_stop(void);
int daemon_status(void);
int token_new(const char *path);
void warn_db_down(const json_t *r);

/* run.c */
int cmd_run(const char *path, int dargc, char **dargv);

/* jobs.c */
json_t *do_submit(conn *c, const char *path, char *const *words, int nwords, int has_prio,
                  long prio);
int dry_run(const char *path, char *const *words, int nwords);
void print_submitted(json_t *r);
void fmt_duration(double s, char *out, size_t len);
void print_grid_progress(const char *grid, const json_t *p);
int cmd_grids(void);
int cmd_ls(int argc, char **argv);
int cmd_diff(const char *ja, const char *jb);
int cmd_show(const char *job);
int cmd_logs(int argc, char **argv);
int cmd_workers(void);
int cmd_cancel(const char *target);
int cmd_priority(const char *target, const char *value);
int cmd_requeue(const char *target);
int cmd_rm(const char *target);
int cmd_submit(int n, char **a);

/* watch.c */
void add_target(const char *cmd, char **t, int *nt, char *arg);
int watch(conn *c, const char *target);
int cmd_watch(int n, char **a);

/* tables.c */
void set_targets(json_t *m, const char *one, const char *many, char *const *t, int nt);
void print_table(conn *c, char *const *grids, int ng);
int cmd_metrics(int n, char **a);
int cmd_table(int n, char **a);

/* figures.c */
int cmd_sphere(int n, char **a);
int cmd_plot(int n, char **a);
/* 1 when the run folder at path (runawayd's) is the one this client sees:
 * the folder exists here and, given the final weights' version (`show`'s
 * weights_version), holds that file. */
int run_dir_here(const char *path, const char *version);

/* distance.c */
int cmd_distance(int n, char **a);

/* export.c */
int cmd_export(const char *job, const char *out, int encoder_only);

#endif
