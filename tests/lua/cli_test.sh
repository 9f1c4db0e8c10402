#!/usr/bin/env bash
# The edrv command as a user runs it: options, exit statuses, arguments,
# error messages with the script's line, the REPL on a pipe, and the module
# from a stock lua5.4 with require "edrv".
# usage: cli_test.sh EDRV_BINARY MODULE_DIR DRIVERS_DIR
set -uo pipefail
edrv=$1 module_dir=$2 drivers=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

check() { # name, then the command; its stdout must match the pattern in $want
  local name=$1; shift
  local out status
  out=$("$@" 2>&1); status=$?
  if [[ $status -eq $want_status && $out =~ $want ]]; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name: status $status (want $want_status), output:"; echo "$out" | head -20
  fi
}

want_status=0 want='^usage: edrv' check help "$edrv" --help
want_status=0 want='^edrv [0-9]+\.[0-9]+\.[0-9]+ ' check version "$edrv" --version
want_status=2 want='nothing to run' check no_arguments "$edrv"
want_status=2 want="unknown option '--bogus'" check unknown_option "$edrv" --bogus
want_status=2 want='1..1024' check bad_pool_size "$edrv" -A 2000 -e 'print(1)'
want_status=2 want='needs an argument' check missing_argument "$edrv" -e
want_status=0 want='^3$' check pool_size "$edrv" -A 3 -e 'print(edrv.pool().threads)'
want_status=0 want='^5$' check pool_size_long "$edrv" --async-threads=5 -e 'print(edrv.pool().threads)'
want_status=0 want='^hello 2$' check two_e "$edrv" -e 'x = 2' -e 'print("hello " .. x)'

cat > "$tmp/args.lua" <<'LUA'
print(arg[0], arg[1], arg[2], #arg, select('#', ...))
LUA
want_status=0 want='args.lua	a	b c	2	2$' check script_args "$edrv" "$tmp/args.lua" a "b c"

cat > "$tmp/fails.lua" <<'LUA'
edrv.load_driver(arg[1], "tdrv")
local p = edrv.open_port({"spawn_driver", "tdrv"}, {})
edrv.port_control(p, 5, "")
LUA
want_status=1 want='fails.lua:3: edrv.port_control: badarg \(tdrv: control 5 returned -1\)' \
  check error_line "$edrv" "$tmp/fails.lua" "$drivers"
want_status=1 want='driver_incorrect_version' check error_reason \
  "$edrv" -e "edrv.load_driver('$drivers', 'ld_v34')"
want_status=1 want='syntax|expected' check syntax_error "$edrv" -e 'print('
want_status=1 want='cannot open' check missing_script "$edrv" "$tmp/none.lua"
want_status=0 want='^from stdin$' check script_from_stdin bash -c "echo 'print(\"from stdin\")' | '$edrv' -"

# The REPL reads lines from a pipe too: expressions print their value.
want_status=0 want='2.*#Port<0\.[0-9]+>' check repl bash -c \
  "printf '%s\n' '1 + 1' 'edrv.load_driver(\"$drivers\", \"tdrv\")' 'p = edrv.open_port({\"spawn_driver\", \"tdrv\"}, {})' 'p' | HOME='$tmp' '$edrv' -i"
want_status=0 want='badarg' check repl_error bash -c \
  "printf '%s\n' 'edrv.port_close(42)' 'print(\"still here\")' | HOME='$tmp' '$edrv' -i"
# input that ends inside a chunk: its syntax error, not a panic
want_status=0 want="'end' expected near <eof>" check repl_eof_in_chunk bash -c \
  "printf 'for i=1,2 do\\n' | HOME='$tmp' '$edrv' -i"
# an exit signal that ends the shell's process: a new process takes over
want_status=0 want='ended the shell.s process <0\.1\.0>: <<"boom">>; <0\.3\.0> takes its place.*edrv.self\(\).<0\.3\.0>' check repl_new_process bash -c \
  "printf '%s\\n' 'edrv.spawn_link(function() edrv.exit(\"boom\") end)' 'edrv.receive(30000)' 'edrv.self()' | HOME='$tmp' '$edrv' -i 2>&1"
want_status=0 want='^for i=1,2 do' check repl_history bash -c "test -s '$tmp/.edrv_history' && printf 'for i=1,2 do\nprint(i)\nend\n' | HOME='$tmp' '$edrv' -i >/dev/null && grep -A2 '^for i=1,2 do' '$tmp/.edrv_history'"

# Standard output that fails: the script ends with a clear error and status 1,
# a reader that goes away included (SIGPIPE is ignored, as erl ignores it).
want_status=1 want='standard output: No space left on device' check stdout_full bash -c \
  "'$edrv' -e 'print(1)' 2>&1 >/dev/full"
want_status=0 want='^1[[:space:]]1$' check stdout_closed bash -c \
  "'$edrv' -e 'for i = 1, 1e9 do print(i) end' 2>/dev/null | head -1; echo \${PIPESTATUS[0]}"
want_status=1 want='standard output: No space left on device' check stdout_full_io_write bash -c \
  "'$edrv' -e 'io.write(\"x\")' 2>&1 >/dev/full"

# Who runs a callback: by default the script's own thread, once the emulator
# thread sleeps (tried until then); with -S 1 --no-immediate, always the
# emulator thread; with -S 2 --no-immediate, the scheduler of the port's lock
# (two port-locked ports: one each).
want_status=0 want='^edrv$' check immediate_by_default "$edrv" -e "
  edrv.load_driver('$drivers', 'idrv')
  local p = edrv.open_port({'spawn_driver', 'idrv'}, {})
  local name
  for i = 1, 3000 do
    name = edrv.iolist_to_binary(edrv.port_control(p, 10, ''))
    if name ~= 'emulator' then break end
    os.execute('sleep 0.01')
  end
  print(name)"
want_status=0 want='^emulator 100$' check no_immediate "$edrv" -S 1 --no-immediate -e "
  edrv.load_driver('$drivers', 'idrv')
  local p = edrv.open_port({'spawn_driver', 'idrv'}, {})
  local n = 0
  for i = 1, 100 do
    if edrv.iolist_to_binary(edrv.port_control(p, 10, '')) == 'emulator' then n = n + 1 end
  end
  print('emulator ' .. n)"

want_status=0 want='^emulator scheduler 2$' check two_schedulers "$edrv" -S 2 --no-immediate -e "
  edrv.load_driver('$drivers', 'idrvp')
  local names = {}
  for i = 1, 2 do
    local p = edrv.open_port({'spawn_driver', 'idrvp'}, {})
    names[i] = edrv.iolist_to_binary(edrv.port_control(p, 10, ''))
  end
  table.sort(names)
  print(names[1] .. ' ' .. names[2])"
want_status=0 want='^3$' check schedulers_long "$edrv" --schedulers=3 -e "
  edrv.load_driver('$drivers', 'idrv')
  print(edrv.iolist_to_binary(edrv.port_control(edrv.open_port({'spawn_driver', 'idrv'}, {}), 12, '')))"
want_status=2 want='1..1024' check bad_schedulers "$edrv" -S 0 -e 'print(1)'

# Exit signals: the script's process does not trap exits by default. A port
# that fails with a reason other than normal ends it: the next call raises an
# error that carries the reason (status 1 unless caught); port_close leaves
# no message behind; with trap_exit, the signal is a message.
want_status=1 want='exited .*ended by an exit signal: boom' check exit_signal_ends_script "$edrv" -e "
  edrv.load_driver('$drivers', 'tdrv')
  local p = edrv.open_port({'spawn_driver', 'tdrv'}, {})
  edrv.port_control(p, 21, 'boom')
  edrv.receive()"
want_status=0 want='^exited[[:space:]]boom[[:space:]]true$' check exit_signal_caught "$edrv" -e "
  edrv.load_driver('$drivers', 'tdrv')
  local p = edrv.open_port({'spawn_driver', 'tdrv'}, {})
  edrv.port_control(p, 21, 'boom')
  local ok, err = pcall(edrv.receive, 0)
  print(err.reason, tostring(err.exit_reason), err.exit_reason == edrv.atom('boom'))"
want_status=0 want='^nil[[:space:]]\{.EXIT.,#Port<0\.2>,normal\}$' check trap_exit_flag "$edrv" -e "
  edrv.load_driver('$drivers', 'tdrv')
  edrv.port_close(edrv.open_port({'spawn_driver', 'tdrv'}, {}))
  local none = edrv.receive(100)
  assert(edrv.process_flag('trap_exit', true) == false)
  edrv.port_close(edrv.open_port({'spawn_driver', 'tdrv'}, {}))
  print(tostring(none), tostring(edrv.receive(30000)))"

# Spawned processes: a linked process's exit ends the script's process as a
# port's does; edrv.exit(normal) ends the script with status 0, any other
# reason with status 1; a crash in a spawned process is reported on stderr
# (as Erlang's error logger does) and does not stop the script.
want_status=1 want='edrv.receive: exited .*ended by an exit signal: <<"bye">>' check linked_exit_ends_script "$edrv" -e "
  edrv.spawn_link(function() edrv.exit('bye') end)
  edrv.receive(30000)
  print('not here')"
want_status=0 want='^$' check exit_normal "$edrv" -e "edrv.exit(edrv.atom'normal') print('not here')"
want_status=1 want='edrv.exit: exit \(<<"why">>\)' check exit_other "$edrv" -e "edrv.exit('why')"
want_status=0 want='error in process <0\.2\.0>: \(command line\):2: boom.*still here' check child_crash_reported "$edrv" -e "
  local _, ref = edrv.spawn_monitor(function() error('boom') end)
  edrv.receive(30000)
  io.stderr:write('still here')"

# require "edrv" from a stock lua5.4.
if command -v lua5.4 > /dev/null && [ -z "${EDRV_SANITIZED:-}" ]; then
  want_status=0 want='^\{#Port<0\.1>,\{data,<<"ok">>\}\} 2$' check stock_lua \
    env LUA_CPATH="$module_dir/?.so" EDRV_ASYNC_THREADS=2 lua5.4 -e "
      local edrv = require 'edrv'
      edrv.load_driver('$drivers', 'echo_drv')
      local p = edrv.open_port({'spawn_driver', 'echo_drv'}, {'binary'})
      edrv.port_command(p, 'ok')
      print(tostring(edrv.receive(30000)) .. ' ' .. edrv.pool().threads)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
