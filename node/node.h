/*
 * node.h: edrv as an Erlang node (`edrv --node NAME`), see node.c and
 * docs/node.md.
 */
#ifndef EDRV_NODE_H
#define EDRV_NODE_H

/* Whether the command line asks for node mode (an option --node, --sname or
 * --name before the first argument that is not an option). */
int edrv_node_wanted(int argc, char **argv);
/* Runs the node until SIGINT or SIGTERM: parses the whole command line
 * itself. Returns the exit status (0; 1 when the node cannot start; 2 on a
 * usage error). */
int edrv_node_main(int argc, char **argv);

#endif
