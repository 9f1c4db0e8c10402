-- bench_msg.lua: the Lua peer of the message path benchmark, run by the edrv
-- command. It loads mdrv.so and mdrvp.so (the drivers bench_msg and
-- bench_msg_erts.erl load) and times, from the script's process, the cases
-- that one Lua thread can run (see bench_msg.c): control, call, command (on a
-- port of mdrv), pipe (on one of mdrvp). Lua has one thread: pipe2p is C and
-- ERTS only.
--
-- Usage: edrv bench/bench_msg.lua PEER DRIVERS_DIR TRIPS PIPE
-- Prints `RESULT PEER CASE METRIC VALUE` lines (see bench/README.md), and
-- `INFO PEER callbacks_in_caller SHARE`: the share of 1000 controls whose
-- callback ran in the script's thread (immediate execution) rather than in
-- edrv's emulator thread.
local peer, dir, trips, pipe = arg[1], arg[2], math.tointeger(tonumber(arg[3])),
  math.tointeger(tonumber(arg[4]))
if not (peer and dir and trips and pipe and trips > 0 and pipe > 0) then
  io.stderr:write("usage: edrv bench_msg.lua PEER DRIVERS_DIR TRIPS PIPE\n")
  os.exit(2)
end

local e = edrv
local port_control, port_call, port_command, receive = e.port_control, e.port_call,
  e.port_command, e.receive
local now = e.monotonic_time

e.load_driver(dir, "mdrv")
e.load_driver(dir, "mdrvp")
local port = e.open_port({"spawn_driver", "mdrv"}, {"binary"})
local portp = e.open_port({"spawn_driver", "mdrvp"}, {"binary"})
local call_term = e.tuple(e.atom"hello", 42)

local function result(case, metric, v)
  io.write(string.format("RESULT %s %s %s %.4f\n", peer, case, metric, v))
  io.flush()
end

-- The echo of one command must be {Port, {data, <<"hello">>}}.
local function check_echo(m, p)
  if not (m and m[1] == p and m[2][2] == "hello") then
    error("unexpected message " .. tostring(m))
  end
end

local function controls(n)
  local r
  for _ = 1, n do r = port_control(port, 1, "hello") end
  assert(e.iolist_to_binary(r) == "HELLO", "control's reply is not HELLO")
end

local function calls(n)
  local r
  for _ = 1, n do r = port_call(port, 1, call_term) end
  assert(r[1] == call_term[1] and r[2] == 42, "call's reply is not the term sent")
end

local function commands(n)
  local m
  for _ = 1, n do
    port_command(port, "hello")
    m = receive(10000)
  end
  check_echo(m, port)
end

local function pipelined(n)
  for _ = 1, n do port_command(portp, "hello") end
  local m
  for _ = 1, n do
    m = receive(10000)
    if not m then error("no echo within 10 s") end
  end
  check_echo(m, portp)
end

local function timed(case, fn, n, rate)
  local t0 = now()
  fn(n)
  local ns = now() - t0
  result(case, "us_per_op", ns / 1e3 / n)
  if rate then result(case, "msgs_per_s", n * 1e9 / ns) end
end

-- Warm-up, as bench_msg: a tenth of each round-trip case, one whole
-- pipelined burst.
local wt = trips // 10 + 1
controls(wt); calls(wt); commands(wt); pipelined(pipe)

timed("control", controls, trips)
timed("call", calls, trips)
timed("command", commands, trips)
timed("pipe", pipelined, pipe, true)
-- The share of 1000 controls whose callback ran in the script's thread: the
-- edrv command's main thread, whose id is the pid.
local pid = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
local mine = 0
for _ = 1, 1000 do
  if e.iolist_to_binary(port_control(port, 2, "")) == pid then mine = mine + 1 end
end
io.write(string.format("INFO %s callbacks_in_caller %.3f\n", peer, mine / 1000))
e.port_close(port)
e.port_close(portp)
