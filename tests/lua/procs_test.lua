-- Processes in a script: spawn, links, monitors, exit signals, send,
-- registered names, as in Erlang (each rule checked in erl). Run by the edrv
-- command:   edrv procs_test.lua DRIVERS_DIR [TEST_NAME]
local drivers = assert(arg[1], "usage: procs_test.lua DRIVERS_DIR [TEST]")
local only = arg[2]
local h = dofile((arg[0]:match("^(.*)/") or ".") .. "/harness.lua")
local test, eq, raises = h.test, h.eq, h.raises
local A, T, V, ANY = edrv.atom, edrv.tuple, edrv.var, edrv._

-- A bound for a broken build, never a timing; negative checks wait briefly.
local WAIT = 30000
local SHORT = 50

local function recv(what)
  local m = edrv.receive(WAIT)
  if m == nil then error("no message: " .. (what or ""), 2) end
  return m
end

local function recv_match(pattern)
  local m, b = edrv.receive_match(pattern, WAIT)
  if m == nil then error("no message matching " .. tostring(pattern), 2) end
  return m, b
end

local function none()
  local m = edrv.receive(SHORT)
  if m ~= nil then error("unexpected message " .. tostring(m), 2) end
end

-- The reason of the DOWN message of ref.
local function down(ref)
  local _, b = recv_match(T(A"DOWN", ref, A"process", ANY, V"R"))
  return b.R
end

-- The script's process traps exits in the tests that say so, and stops
-- after them (a test that ends it would end the run: cli_test.sh has those).
local function trapping(on) edrv.process_flag("trap_exit", on) end

test("spawn_and_send", function()
  local me = edrv.self()
  local pids = {}
  for i = 1, 5 do
    pids[i] = edrv.spawn(function(parent, k)
      edrv.send(parent, T(edrv.self(), k * k))
    end, me, i)
    eq(edrv.type(pids[i]), "pid")
    assert(pids[i] ~= me)
  end
  local sum = 0
  for i = 1, 5 do
    local m, b = recv_match(T(pids[i], V"N"))
    sum = sum + b.N
  end
  eq(sum, 55, "sum of squares")
  for i = 1, 5 do
    local ref = edrv.monitor("process", pids[i])
    eq(down(ref), A"noproc", "a process that returned is gone")
    eq(edrv.is_process_alive(pids[i]), false)
  end
  eq(edrv.is_process_alive(me), true)
  -- messages between two processes keep their order
  local sink = edrv.spawn(function(parent)
    local last = 0
    for _ = 1, 1000 do
      local n = edrv.receive()
      if n ~= last + 1 then edrv.send(parent, "out of order") return end
      last = n
    end
    edrv.send(parent, "in order")
  end, me)
  for i = 1, 1000 do edrv.send(sink, i) end
  eq(recv(), "in order")
  raises("badarg", edrv.spawn, "not a function")
  raises("badarg", edrv.send, 42, "x")
  raises("badarg", edrv.send, me, function() end)
end)

test("exit_reasons", function()
  -- returning: normal; exit(R): R; an error: {Reason, Stack}, Reason the
  -- error's (an edrv error's reason as an atom, a term as itself)
  local function reason_of(fn, ...)
    local _, ref = edrv.spawn_monitor(fn, ...)
    return down(ref)
  end
  eq(reason_of(function() end), A"normal")
  eq(tostring(reason_of(edrv.exit, T(A"shutdown", 7))), "{shutdown,7}")
  local r = reason_of(function() error(T(A"custom", 1)) end)
  eq(edrv.type(r), "tuple")
  eq(tostring(r[1]), "{custom,1}")
  assert(r[2]:find("stack traceback"), r[2])
  r = reason_of(function() edrv.port_control(nil, 1, "") end)
  eq(r[1], A"badarg")
  assert(r[2]:find("edrv.port_control: badarg"), r[2])
  r = reason_of(function() error("boom") end)
  assert(r[1]:find("procs_test.lua:%d+: boom"), r[1])
  r = reason_of(function() error(function() end) end) -- not a term: its text
  assert(r[1]:find("function"), r[1])
  raises("badarg", edrv.exit, function() end)
end)

test("links", function()
  trapping(true)
  local c = edrv.spawn_link(function() edrv.exit(A"bye") end)
  local m = recv_match(T(A"EXIT", c, ANY))
  eq(m[3], A"bye")
  -- a crash ends a linked process that does not trap exits, with its reason
  local me = edrv.self()
  local a = edrv.spawn(function() edrv.receive() end)
  local ref = edrv.monitor("process", a)
  edrv.spawn(function()
    edrv.link(a)
    edrv.exit(A"crashed")
  end)
  eq(down(ref), A"crashed")
  -- normal does not
  local b = edrv.spawn(function() edrv.send(me, edrv.receive()) end)
  local _, lref = edrv.spawn_monitor(function() edrv.link(b) end)
  eq(down(lref), A"normal") -- it ended, b did not
  edrv.send(b, "still here")
  eq(recv(), "still here")
  -- a trapping process gets the message
  local t = edrv.spawn(function()
    edrv.process_flag("trap_exit", true)
    local x = edrv.spawn_link(function() edrv.exit(A"oops") end)
    local got = edrv.receive()
    edrv.send(me, T(got[1], got[2] == x, got[3]))
  end)
  eq(tostring(recv()), "{'EXIT',true,oops}")
  -- unlink: no signal
  local u = edrv.spawn_link(function() edrv.receive() edrv.exit(A"late") end)
  edrv.unlink(u)
  edrv.send(u, "go")
  none()
  -- link to a pid that is not alive: trapping, {'EXIT', Pid, noproc}
  local dead = edrv.spawn(function() end)
  local dref = edrv.monitor("process", dead)
  down(dref)
  eq(edrv.link(dead), true)
  m = recv_match(T(A"EXIT", dead, ANY))
  eq(m[3], A"noproc")
  -- not trapping: link raises noproc
  local nt = edrv.spawn(function()
    local ok, err = pcall(edrv.link, dead)
    edrv.send(me, ok and "linked" or err.reason)
  end)
  eq(recv(), "noproc")
  raises("badarg", edrv.link, "not a pid")
  trapping(false)
end)

test("exit_signals", function()
  local me = edrv.self()
  -- kill cannot be trapped: killed
  local k = edrv.spawn(function() edrv.process_flag("trap_exit", true) edrv.receive() end)
  local ref = edrv.monitor("process", k)
  edrv.yield() -- k runs up to its receive
  eq(edrv.exit(k, A"kill"), true)
  eq(down(ref), A"killed")
  -- normal: ignored by one that does not trap, a message to one that does
  local n = edrv.spawn(function() edrv.send(me, edrv.receive()) end)
  edrv.exit(n, A"normal")
  eq(edrv.is_process_alive(n), true)
  edrv.send(n, "alive")
  eq(recv(), "alive")
  local t = edrv.spawn(function()
    edrv.process_flag("trap_exit", true)
    edrv.send(me, "ready")
    local m = edrv.receive()
    edrv.send(me, T(m[1], m[2] == me, m[3]))
  end)
  eq(recv(), "ready")
  edrv.exit(t, A"normal")
  eq(tostring(recv()), "{'EXIT',true,normal}")
  -- any other reason ends one that does not trap, even while it waits
  local w = edrv.spawn(function() edrv.receive() end)
  ref = edrv.monitor("process", w)
  edrv.yield()
  edrv.exit(w, T(A"stop", 1))
  eq(tostring(down(ref)), "{stop,1}")
  -- a process's signal to itself
  local s = edrv.spawn(function() edrv.exit(edrv.self(), A"normal") edrv.send(me, "survived") end)
  ref = edrv.monitor("process", s)
  eq(down(ref), A"normal")
  none()
  edrv.exit(edrv.spawn(function() end), A"x") -- not alive: fine
end)

test("ended_processes_stop", function()
  -- an exit signal stops a process where it sleeps, yields or sends
  local me = edrv.self()
  local sleeper = edrv.spawn(function() edrv.sleep(10 * WAIT) edrv.send(me, "woke") end)
  local ref = edrv.monitor("process", sleeper)
  edrv.yield()
  edrv.exit(sleeper, A"stop")
  eq(down(ref), A"stop")
  local yielder = edrv.spawn(function()
    while true do edrv.yield() end
  end)
  ref = edrv.monitor("process", yielder)
  edrv.yield()
  edrv.exit(yielder, A"stop")
  eq(down(ref), A"stop")
  -- one that catches the error is still ended: its calls keep failing
  local catcher = edrv.spawn(function()
    local ok, err = pcall(edrv.receive)
    local ok2, err2 = pcall(edrv.send, me, "sent after its end")
    edrv.exit(A"not this")
  end)
  ref = edrv.monitor("process", catcher)
  edrv.yield()
  edrv.exit(catcher, A"stop")
  eq(down(ref), A"stop")
  none()
end)

test("odd_waits", function()
  -- receive where the coroutine cannot yield (a table.sort comparator):
  -- it waits there, running the others (here the one that answers it; the
  -- script's process is below it on the stack and waits until it is done)
  local me = edrv.self()
  local answerer = edrv.spawn(function()
    while true do
      local m = edrv.receive()
      if m == "stop" then return end
      edrv.send(m, "go")
    end
  end)
  edrv.spawn(function()
    local t, answers = {3, 1, 2}, 0
    table.sort(t, function(a, b)
      edrv.send(answerer, edrv.self())
      if edrv.receive(WAIT) == "go" then answers = answers + 1 end
      return a < b
    end)
    edrv.send(me, T(A"sorted", t[1], t[2], t[3], answers > 0))
  end)
  eq(tostring(recv()), "{sorted,1,2,3,true}")
  edrv.send(answerer, "stop")
  -- an error whose __tostring raises: the process still ends, as lua_error
  local _, ref = edrv.spawn_monitor(function()
    error(setmetatable({}, {__tostring = function() error("no text") end}))
  end)
  eq(down(ref), A"lua_error")
end)

test("monitors", function()
  local me = edrv.self()
  local p = edrv.spawn(function() edrv.receive() end)
  local r1 = edrv.monitor("process", p)
  local r2 = edrv.monitor(A"process", p)
  assert(r1 ~= r2)
  eq(edrv.type(r1), "other")
  assert(tostring(r1):find("^#Ref<0%.%d+%.%d+%.%d+>$"), tostring(r1))
  eq(edrv.demonitor(r2), true)
  eq(edrv.demonitor(r2, {"info"}), false)
  edrv.send(p, "go")
  local m, b = recv_match(T(A"DOWN", V"Ref", A"process", V"Pid", V"Why"))
  eq(b.Ref, r1); eq(b.Pid, p); eq(b.Why, A"normal")
  none() -- nothing for the demonitored one
  -- flush: a DOWN that came already goes
  local q = edrv.spawn(function() end)
  local r3 = edrv.monitor("process", q)
  edrv.yield()
  edrv.send(me, "after")
  eq(edrv.demonitor(r3, {"flush"}), true)
  eq(recv(), "after")
  none()
  raises("badarg", edrv.monitor, "port", p)
  raises("badarg", edrv.demonitor, "not a ref")
  raises("badarg", edrv.demonitor, r1, {"bogus"})
  -- a reference goes out and back as itself
  edrv.send(me, T(r1))
  eq(recv()[1], r1)
end)

test("names", function()
  local me = edrv.self()
  local w = edrv.spawn(function()
    local m = edrv.receive()
    edrv.send(m, "got it")
  end)
  eq(edrv.register("worker", w), true)
  eq(edrv.whereis("worker"), w)
  eq(edrv.whereis(A"worker"), w)
  raises("badarg", edrv.register, "worker", me)
  raises("badarg", edrv.register, "undefined", me)
  eq(edrv.whereis("nobody"), A"undefined")
  raises("badarg", edrv.send, "nobody", 1)
  edrv.send(A"worker", me)
  eq(recv(), "got it")
  local ref = edrv.monitor("process", w)
  down(ref)
  eq(edrv.whereis("worker"), A"undefined") -- the name went with it
  eq(edrv.register("me", me), true)
  eq(edrv.unregister("me"), true)
  raises("badarg", edrv.unregister, "me")
end)

test("timeouts", function()
  local me = edrv.self()
  -- a waiting process times out while others run
  edrv.spawn(function()
    local m = edrv.receive(10)
    local s = edrv.receive_match(T(A"never"), 10)
    edrv.send(me, T(m == nil, s == nil))
  end)
  eq(tostring(recv()), "{true,true}")
  local t0 = edrv.monotonic_time()
  edrv.spawn(function(p) edrv.sleep(30) edrv.send(p, "slept") end, me)
  eq(recv(), "slept")
  assert(edrv.monotonic_time() - t0 >= 30e6, "slept too little")
  -- sleep leaves messages where they are
  edrv.send(me, "kept")
  edrv.sleep(1)
  eq(recv(), "kept")
  raises("badarg", edrv.sleep, -1)
end)

test("coroutines_inside", function()
  -- receive in a coroutine of a process's own making waits there, and
  -- lets the others run
  local me = edrv.self()
  local echo = edrv.spawn(function()
    while true do
      local m = edrv.receive()
      if m == "stop" then return end
      edrv.send(m[1], m[2])
    end
  end)
  local p = edrv.spawn(function()
    local co = coroutine.wrap(function()
      edrv.send(echo, T(edrv.self(), "inner"))
      return edrv.receive()
    end)
    edrv.send(me, co())
  end)
  eq(recv(), "inner")
  -- the script's own process, in a coroutine
  local got = coroutine.wrap(function()
    edrv.send(echo, T(me, "outer"))
    return edrv.receive()
  end)()
  eq(got, "outer")
  edrv.send(echo, "stop")
end)

test("yield", function()
  local me = edrv.self()
  local counter = 0
  local spinner = edrv.spawn(function()
    for _ = 1, 100 do counter = counter + 1; edrv.yield() end
    edrv.send(me, "done")
  end)
  edrv.spawn(function() coroutine.yield() edrv.send(me, "plain yield") end)
  eq(recv(), "plain yield")
  eq(recv(), "done")
  eq(counter, 100)
end)

test("ports_of_processes", function()
  edrv.load_driver(drivers, "echo_drv")
  edrv.load_driver(drivers, "tdrv")
  local me = edrv.self()
  -- a port's messages reach its owner, a spawned process
  local owner = edrv.spawn(function()
    local p = edrv.open_port({"spawn_driver", "echo_drv"}, {"binary"})
    edrv.send(me, p)
    edrv.port_command(p, "hi")
    local _, b = edrv.receive_match(T(p, T(A"data", V"D")))
    edrv.send(me, b.D)
    edrv.receive()
  end)
  local port = recv()
  eq(recv(), "hi")
  eq(edrv.port_info(port)[A"connected"], owner)
  -- its end closes its port
  edrv.exit(owner, A"kill")
  local ref = edrv.monitor("process", owner)
  eq(down(ref), A"noproc")
  -- the port closes once the signal reaches it (as in ERTS, not
  -- necessarily before the DOWN)
  local until_ = edrv.monotonic_time() + WAIT * 1e6
  while edrv.port_info(port) ~= A"undefined" and edrv.monotonic_time() < until_ do
    edrv.sleep(1)
  end
  eq(edrv.port_info(port), A"undefined")
  -- a port's exit ends an owner that does not trap, and its monitors see it
  local o2 = edrv.spawn(function()
    edrv.send(me, edrv.open_port({"spawn_driver", "tdrv"}, {}))
    edrv.receive()
  end)
  local p2 = recv()
  ref = edrv.monitor("process", o2)
  edrv.port_control(p2, 21, "port_gone") -- tdrv: driver_failure_atom
  eq(down(ref), A"port_gone")
end)

test("many_processes", function()
  -- 10 000 processes, each owning a port (1000 under the sanitizers:
  -- ThreadSanitizer's bookkeeping of the coroutines' longjmps grows with
  -- the number of suspended ones, and makes the run quadratic)
  edrv.load_driver(drivers, "echo_drv")
  local me = edrv.self()
  local N = os.getenv("EDRV_SANITIZED") and 1000 or 10000
  local pids = {}
  for i = 1, N do
    pids[i] = edrv.spawn(function()
      local p = edrv.open_port({"spawn_driver", "echo_drv"}, {"binary"})
      edrv.port_command(p, tostring(i))
      local _, b = edrv.receive_match(T(p, T(A"data", V"D")))
      edrv.send(me, T(i, b.D))
      edrv.receive()
    end)
  end
  local seen = {}
  for _ = 1, N do
    local m = recv()
    eq(tostring(m[1]), m[2], "each its own reply")
    seen[m[1]] = true
  end
  for i = 1, N do assert(seen[i], "no reply from " .. i) end
  for i = 1, N do edrv.send(pids[i], "stop") end
  local last = edrv.monitor("process", pids[N])
  down(last)
end)

h.run(only)
