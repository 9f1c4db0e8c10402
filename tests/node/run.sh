#!/bin/sh
# run.sh: runs a node test escript with an epmd of its own on 127.0.0.1.
# erl reads ERL_EPMD_PORT when it starts, so the port is chosen here: one
# per run (from this shell's pid), away from the default 4369, so that the
# test meets no other epmd and a parallel run meets not this one.
# Usage: run.sh ESCRIPT ARGS...
ERL_EPMD_PORT=${EDRV_TEST_EPMD_PORT:-$((20000 + $$ % 20000))}
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT ERL_EPMD_ADDRESS
exec escript "$@"
