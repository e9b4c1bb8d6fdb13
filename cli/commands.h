/*
 * commands.h — subcommands that live outside main.c.
 */
#ifndef STRATA_COMMANDS_H
#define STRATA_COMMANDS_H

int cmd_run(int argc, char **argv);
int cmd_runs_list(int argc, char **argv);
int cmd_runs_show(int argc, char **argv);

#endif
