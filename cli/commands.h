/*
 * commands.h — subcommands that live outside main.c.
 */
#ifndef STRATA_COMMANDS_H
#define STRATA_COMMANDS_H

#include "args.h"
#include "db/db.h"

/* The database every command uses without --db. */
#define CLI_DEFAULT_DB "strata.db"

/* For a command that reads the store: parses argv (--db, --json, --help and
 * npos positional arguments), answers --help or a usage mistake, and opens the
 * database, which must exist. Returns NULL with *rc the exit status when the
 * command is done already; else the caller closes the Db. */
Db *cli_open_store(int argc, char **argv, const char *cmd, const char *usage, int npos, Args *a,
                   int *rc);

int cmd_run(int argc, char **argv);
int cmd_runs_list(int argc, char **argv);
int cmd_runs_show(int argc, char **argv);
int cmd_profile(int argc, char **argv);
int cmd_profile_list(int argc, char **argv);
int cmd_profile_show(int argc, char **argv);

#endif
