/*
 * commands.h — subcommands that live outside main.c.
 */
#ifndef STRATA_COMMANDS_H
#define STRATA_COMMANDS_H

#include "args.h"
#include "db/db.h"
#include "ir/cluster.h"
#include "ir/graph.h"

/* The database every command uses without --db. */
#define CLI_DEFAULT_DB "strata.db"

/* For a command that reads the store: parses argv (--db, --json, --help and
 * npos positional arguments), answers --help or a usage mistake (a malformed
 * id of an id_noun row, when id_noun is given, among them), and opens the
 * database, which must exist. Returns NULL with *rc the exit status when the
 * command is done already; else the caller closes the Db. */
Db *cli_open_store(int argc, char **argv, const char *cmd, const char *usage, int npos,
                   const char *id_noun, Args *a, int *rc);

/* Marks the profiles whose process ended before closing them (killed)
 * interrupted, saying so on stderr; a store too busy to write is only
 * warned about. For the commands that read a profile's status. */
void cli_settle_profiles(Db *db);
/* The same for searches whose process ended before them (db_search_interrupt). */
void cli_settle_searches(Db *db);

/* The id a `noun` row given to option opt, when given, is well formed
 * (db_id_check): 0, or -1 with err naming the option. */
int check_id_option(const Args *a, const char *opt, const char *noun, Err *err);

/* --model and --cluster (when need_cluster) given, and --also when not NULL;
 * --nodes only with --cluster. */
int check_model_cluster(const Args *a, bool need_cluster, const char *also, Err *err);
/* Loads --model and, when given, --cluster [--nodes] (checked already).
 * Caller frees both. */
int load_model_cluster(const Args *a, Graph **g, Cluster **c, Err *err);

/* A duration for people: "12.3 us", "4.56 ms", "7.890 s"; "-" when not finite. */
void cli_seconds(double t, char *out, int n);

int cmd_estimate(int argc, char **argv);
int cmd_validate(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_runs_list(int argc, char **argv);
int cmd_runs_show(int argc, char **argv);
int cmd_profile(int argc, char **argv);
int cmd_profile_list(int argc, char **argv);
int cmd_profile_show(int argc, char **argv);
int cmd_costmodel_train(int argc, char **argv);
int cmd_costmodel_list(int argc, char **argv);
int cmd_costmodel_show(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_searches_list(int argc, char **argv);
int cmd_searches_show(int argc, char **argv);
int cmd_searches_events(int argc, char **argv);

#endif
