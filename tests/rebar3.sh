#!/usr/bin/env bash
# The Erlang application builds with rebar3 as it is in the repository
# (erlang/: rebar.config, src/edrv.app.src, src/edrv.erl), offline, and the
# result loads: the layout a rebar3 project that depends on edrv needs.
# usage: rebar3.sh SOURCE_DIR
set -euo pipefail
src=$1
command -v rebar3 >/dev/null || { echo "rebar3 not found (Debian's rebar3)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/erlang" "$work/edrv"
cd "$work/edrv"
# a HOME of its own: rebar3 keeps its caches there, and needs no network
HOME=$work rebar3 compile
ebin=$work/edrv/_build/default/lib/edrv/ebin
got=$(erl -noshell -pa "$ebin" -eval '
  ok = application:load(edrv),
  {ok, Mods} = application:get_key(edrv, modules),
  {module, edrv} = code:ensure_loaded(edrv),
  io:format("~p", [Mods]), halt().')
[ "$got" = "[edrv]" ] || { echo "rebar3's edrv application: modules $got" >&2; exit 1; }
echo "rebar3 builds the edrv application, and erl loads it"
