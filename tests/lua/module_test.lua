-- The Lua module edrv: every function and its errors. Run by the edrv command:
--   edrv module_test.lua DRIVERS_DIR [TEST_NAME]
local drivers = assert(arg[1], "usage: module_test.lua DRIVERS_DIR [TEST]")
local only = arg[2]
local h = dofile((arg[0]:match("^(.*)/") or ".") .. "/harness.lua")
local test, eq, raises = h.test, h.eq, h.raises
local A, T, L = edrv.atom, edrv.tuple, edrv.list

-- How long a test waits for a message that must come: a bound for a broken
-- build, never a timing (the machine may be loaded). Negative checks (what
-- must not come) wait a short fixed time.
local WAIT = 30000

-- The script's process traps exits, as the Erlang harnesses it mirrors do:
-- its ports' exit signals come as {'EXIT', Port, Reason} messages. The
-- default (false, as in Erlang) is checked here first; what a process that
-- does not trap exits sees is in cli_test.sh (it ends the script).
assert(edrv.process_flag("trap_exit", true) == false, "trap_exit must start false")
assert(edrv.process_flag("trap_exit", true) == true)

local function drain()
  while edrv.receive(0) do end
end

test("load_driver", function()
  eq(edrv.load_driver(drivers, "tdrv"), A"ok") -- as erl_ddll:load_driver/2
  eq(edrv.load_driver(drivers, "tdrv"), A"ok") -- a second user
  raises("driver_incorrect_version", edrv.load_driver, drivers, "ld_v34")
  raises("no_driver_init", edrv.load_driver, drivers, "ld_noinit")
  raises("driver_init_failed", edrv.load_driver, drivers, "ld_initfail")
  raises("bad_driver_name", edrv.load_driver, drivers, "ld_badname")
  local e = raises("open_error", edrv.load_driver, drivers, "no_such_driver")
  assert(e.detail:find("No such file"), e.detail)
  assert(tostring(e):find("edrv.load_driver: open_error"), tostring(e))
  eq(edrv.unload_driver("tdrv"), true)
  eq(edrv.unload_driver("tdrv"), true)
  raises("not_loaded", edrv.unload_driver, "tdrv")
  raises("einval", edrv.load_driver, drivers, "../x")
end)

test("open_port", function()
  edrv.load_driver(drivers, "tdrv")
  local p = edrv.open_port({"spawn_driver", "tdrv"}, {})
  eq(edrv.type(p), "port")
  local q = edrv.open_port(T(A"spawn_driver", "tdrv hello"), {A"binary"})
  eq(tostring(edrv.receive(WAIT)), string.format('{%s,{data,"hello"}}', tostring(q)))
  -- {spawn, Cmd} opens a loaded driver, as in erl; edrv runs no programs
  local s = edrv.open_port({"spawn", "tdrv"}, {})
  eq(edrv.type(s), "port")
  local s2 = edrv.open_port(T(A"spawn", "tdrv hello"), {})
  eq(tostring(edrv.receive(WAIT)), string.format('{%s,{data,"hello"}}', tostring(s2)))
  local err = raises("badarg", edrv.open_port, {"spawn", "ls -l"}, {})
  assert(err.detail:find("no driver named 'ls'"), err.detail)
  edrv.port_close(s); edrv.port_close(s2); drain()
  raises("badarg", edrv.open_port, {"spawn_executable", "tdrv"}, {})
  raises("badarg", edrv.open_port, "tdrv", {})
  raises("badarg", edrv.open_port, {"spawn_driver", "tdrv"}, {"eof_please"})
  local e = edrv.open_port({"spawn_driver", "tdrv"}, {"eof"})
  edrv.port_control(e, 20, "") -- driver_failure_eof
  eq(tostring(edrv.receive(WAIT)), string.format("{%s,eof}", tostring(e)))
  eq(edrv.iolist_to_binary(edrv.port_control(e, 1, "alive")), "alive")
  edrv.port_close(e)
  raises("badarg", edrv.open_port, {"spawn_driver", "nosuchdriver"}, {})
  raises("einval", edrv.open_port, {"spawn_driver", "tdrv general"}, {})
  raises("enoent", edrv.open_port, {"spawn_driver", "tdrv errno"}, {})
  edrv.port_close(p); edrv.port_close(q); drain()
end)

test("port_command", function()
  local p = edrv.open_port({"spawn_driver", "tdrv"}, {"binary"})
  eq(edrv.port_command(p, "abc"), true)
  eq(tostring(edrv.receive(WAIT)), string.format('{%s,{data,[111,117,116,58|<<"abc">>]}}', tostring(p)))
  eq(edrv.port_command(p, {"a", {"b", 99}, 100}), true) -- iodata
  local m = edrv.receive(WAIT)
  eq(m[2][2].tail, "abcd")
  eq(edrv.port_command(p, "x", {"nosuspend"}), true)
  edrv.receive(WAIT)
  edrv.port_control(p, 74, "\1") -- set_busy_port
  eq(edrv.port_command(p, "x", {"nosuspend"}), false)
  raises("notsup", edrv.port_command, p, "x", {"force"})
  edrv.port_control(p, 74, "\0")
  raises("badarg", edrv.port_command, p, {"a", 300})
  raises("badarg", edrv.port_command, p, "x", {"sideways"})
  raises("badarg", edrv.port_command, "not a port", "x")
  -- Tables that are not ports: none, another term's, a pid's (which has a
  -- number too), a plain table with an id.
  raises("badarg", edrv.port_command, {}, "x")
  raises("badarg", edrv.port_command, A"p", "x")
  raises("badarg", edrv.port_command, edrv.self(), "x")
  raises("badarg", edrv.port_command, {id = p.id}, "x")
  raises("badarg", edrv.port_control, T(p), 1, "x")
  edrv.port_close(p)
  raises("badarg", edrv.port_command, p, "x")
  drain()
end)

test("port_control", function()
  local p = edrv.open_port({"spawn_driver", "tdrv"}, {})
  -- replies as port_control/3 returns them: a list (a string, to Erlang)
  -- without PORT_CONTROL_FLAG_BINARY, a binary with it
  local r = edrv.port_control(p, 1, "echo me")
  eq(edrv.type(r), "list")
  eq(tostring(r), '"echo me"')
  eq(edrv.format(r, "w"), "[101,99,104,111,32,109,101]")
  eq(edrv.iolist_to_binary(r), "echo me")
  eq(tostring(edrv.port_control(p, 4, "")), "[]") -- *rbuf = NULL
  eq(tostring(edrv.port_control(p, 1, "")), "[]")
  edrv.port_control(p, 2, "") -- set_port_control_flags(port, PORT_CONTROL_FLAG_BINARY)
  eq(edrv.port_control(p, 1, "echo me"), "echo me")
  eq(edrv.port_control(p, 1, ""), "")
  eq(tostring(edrv.port_control(p, 4, "")), "[]") -- NULL is [] whatever the flags, as in OTP 25
  -- the bytes, and back
  eq(edrv.iolist_to_binary({"a", {98, "c"}, edrv.binary_to_list("de")}), "abcde")
  eq(edrv.list_to_binary(edrv.list{1, 2, tail = "\3"}), "\1\2\3")
  eq(tostring(edrv.binary_to_list("hi")), '"hi"')
  raises("badarg", edrv.iolist_to_binary, 42)
  raises("badarg", edrv.iolist_to_binary, {256})
  local e = raises("badarg", edrv.port_control, p, 5, "")
  assert(e.detail:find("returned %-1"), e.detail)
  raises("badarg", edrv.port_control, p, -1, "")
  edrv.port_close(p)
  raises("badarg", edrv.port_control, p, 1, "")
  drain()
end)

test("port_call", function()
  local p = edrv.open_port({"spawn_driver", "tdrv"}, {})
  local term = T(A"ok", 1, -2, 3.5, "bin", L{1, L{}, A"x"}, edrv.map{[A"k"] = "v"}, edrv.self(), p)
  local back = edrv.port_call(p, 1, term)
  eq(tostring(back), tostring(term))
  eq(back[8], edrv.self())
  eq(back[9], p)
  eq(edrv.port_call(p, 5, 0), A"kept")
  raises("badarg", edrv.port_call, p, 2, 0) -- the reply is not a term
  raises("badarg", edrv.port_call, p, 1, function() end)
  edrv.port_close(p); drain()
end)

test("decoding", function()
  -- What the decoder's fast ways give is what the general ones give: atoms
  -- interned (ASCII ones, true and false as booleans, others by name), a
  -- port received again the same object, equal to the opened one, and
  -- terms deeper than its first stack of open compounds.
  local p = edrv.open_port({"spawn_driver", "tdrv"}, {})
  local uni = edrv.atom("\u{e9}t\u{e9}")
  local back = edrv.port_call(p, 1, T(A"data", true, false, uni, p, p))
  assert(rawequal(back[1], A"data"), "an ASCII atom is the interned one")
  eq(back[2], true)
  eq(back[3], false)
  assert(rawequal(back[4], uni), "a UTF-8 atom is the interned one")
  eq(tostring(back[4]), tostring(uni))
  assert(rawequal(back[5], back[6]), "one port, one object")
  eq(back[5], p)
  assert(rawequal(edrv.port_call(p, 1, p), back[5]), "the same object in the next term")
  for _, depth in ipairs{15, 16, 17, 40, 1000} do
    local t = A"leaf"
    for _ = 1, depth do t = T(t, depth) end
    local got = edrv.port_call(p, 1, t)
    eq(tostring(got), tostring(t), "depth " .. depth)
    for _ = 1, depth do got = got[1] end
    assert(rawequal(got, A"leaf"), "the leaf at depth " .. depth)
  end
  edrv.port_close(p); drain()
end)

test("port_close_and_info", function()
  local p = edrv.open_port({"spawn_driver", "tdrv with args"}, {"binary"})
  local info = edrv.port_info(p)
  eq(info[A"name"], "tdrv with args")
  eq(info[A"connected"], edrv.self())
  eq(info[A"binary"], true)
  eq(info[A"driver"], "tdrv")
  eq(info[A"id"], p.id)
  eq(info[A"pending_jobs"], 0)
  eq(info[A"os_pid"], A"undefined")
  edrv.port_control(p, 73, "") -- erl_drv_set_os_pid(port, 4711)
  eq(edrv.port_info(p)[A"os_pid"], 4711)
  eq(edrv.port_close(p), true)
  eq(tostring(edrv.receive(WAIT)), string.format("{'EXIT',%s,normal}", tostring(p)))
  eq(edrv.port_info(p), A"undefined")
  raises("badarg", edrv.port_close, p)
end)

test("receive", function()
  eq(edrv.receive(0), nil)
  local t0 = edrv.monotonic_time()
  eq(edrv.receive(30), nil)
  assert(edrv.monotonic_time() - t0 >= 25e6, "receive waited")
end)

test("terms", function()
  eq(tostring(A"hello world"), "'hello world'")
  eq(A"x", A"x")
  eq(tostring(T()), "{}")
  eq(tostring(L{}), "[]")
  eq(edrv.format({}), "[]")
  eq(edrv.format({a = 1}), "#{<<\"a\">> => 1}")
  eq(tostring(edrv.list({1, 2, tail = A"t"})), "[1,2|t]")
  eq(tostring(edrv.string("hi\n")), '"hi\\n"')
  eq(tostring(T(1.0e10, 0.1, -7, 1 << 62)), "{1.0e10,0.1,-7,4611686018427387904}")
  eq(tostring(T(true, false)), "{true,false}")
  eq(edrv.type(A"a"), "atom")
  eq(edrv.type(true), "atom")
  eq(edrv.type("b"), "binary")
  eq(edrv.type(1), "integer")
  eq(edrv.type(1.5), "float")
  eq(edrv.type(edrv.map{}), "map")
  raises("badarg", tostring, T(function() end))
  raises("badarg", edrv.atom, string.rep("a", 256))
end)

test("compare", function()
  -- each pair as `erl` orders it (checked there: A < B -> -1, > -> 1, == -> 0)
  local function imp(h, t) local l = L{h}; l.tail = t; return l end
  local cases = {
    {1, 1.0, 0}, {1, 2, -1}, {2.5, 2, 1}, {1, A"x", -1}, {A"b", A"a", 1},
    {T(1, 2), T(1, 2, 0), -1}, {T(1, 3), T(1, 2), 1}, {T(), T(A"a"), -1},
    {L{}, L{1}, -1}, {L{1, 2}, L{1}, 1}, {"ab", "b", -1}, {"abc", "ab", 1}, {"ab", "abc", -1},
    {edrv.string("abc"), L{97, 98, 99}, 0}, {edrv.string("abc"), L{97, 98, 99, 0}, -1},
    {L{1}, "x", -1}, {edrv.map{a = 1}, T(), 1}, {edrv.map{a = 1}, edrv.map{a = 2}, -1},
    {edrv.map{a = 2}, edrv.map{b = 1}, -1}, {edrv.map{a = 1, b = 1}, edrv.map{z = 0}, 1},
    {true, A"true", 0}, {edrv.self(), T(), -1}, {imp(1, 2), L{1, 2}, -1},
    {L{1, 2}, imp(1, 3), 1}, {L{A"a"}, L{1}, 1},
  }
  for i, c in ipairs(cases) do
    eq(edrv.compare(c[1], c[2]), c[3], "case " .. i)
    eq(edrv.compare(c[2], c[1]), -c[3], "case " .. i .. " swapped")
  end
  -- lists:sort([3, z, <<"bin">>, {1}, 1.5, [1], [], a, #{}]) in erl
  local t = edrv.sort({3, A"z", "bin", T(1), 1.5, L{1}, L{}, A"a", edrv.map{}})
  local out = {}
  for i, v in ipairs(t) do out[i] = edrv.format(v) end
  eq(table.concat(out, " "), '1.5 3 a z {1} #{} [] [1] <<"bin">>')
  raises("badarg", edrv.compare, 1, function() end)
  -- format: ~p (the default, tostring's) and ~w, as erl prints them
  local t = T("hi", edrv.string("hi"), L{}, 1.5, A"A b")
  eq(edrv.format(t), '{<<"hi">>,"hi",[],1.5,\'A b\'}')
  eq(edrv.format(t, "p"), edrv.format(t))
  eq(edrv.format(t, "w"), "{<<104,105>>,[104,105],[],1.5,'A b'}")
  raises("badarg", edrv.format, t, "x")
  raises("badarg", edrv.sort, {1, print})
end)

test("input_checks", function()
  -- what Erlang refuses is refused: negative, NaN and non-number timeouts,
  -- a number as port_command's data, nil or a number as port_control's, a
  -- NUL inside a name (which C would cut short)
  edrv.load_driver(drivers, "tdrv")
  local p = edrv.open_port({"spawn_driver", "tdrv"}, {})
  raises("badarg", edrv.receive, -1)
  raises("badarg", edrv.receive, 0 / 0)
  raises("badarg", edrv.receive, "soon")
  raises("badarg", edrv.receive_match, edrv._, -5)
  eq(edrv.receive(0), nil)
  raises("badarg", edrv.port_command, p, 42)
  raises("badarg", edrv.port_control, p, 1, nil)
  raises("badarg", edrv.port_control, p, 1)
  raises("badarg", edrv.port_control, p, 1, 42)
  eq(tostring(edrv.port_control(p, 1, {"ab", 99})), '"abc"') -- iodata, as port_control/3 takes
  local e = raises("badarg", edrv.load_driver, drivers, "tdrv\0x")
  assert(e.detail:find("NUL"), e.detail)
  raises("badarg", edrv.load_driver, drivers .. "\0x", "tdrv")
  raises("badarg", edrv.unload_driver, "tdrv\0x")
  raises("badarg", edrv.open_port, {"spawn_driver", "tdrv\0x"}, {})
  edrv.port_close(p); drain()
end)

test("match", function()
  local msg = T(A"data", 7, L{1, 2})
  local b = edrv.match(msg, T(A"data", edrv.var("N"), edrv._))
  eq(b.N, 7)
  eq(edrv.match(msg, T(A"other", edrv._, edrv._)), nil)
  eq(edrv.match(msg, T(A"data", edrv._)), nil) -- arity
  b = edrv.match(T(1, 1), T(edrv.var("X"), edrv.var("X")))
  eq(b.X, 1)
  eq(edrv.match(T(1, 2), T(edrv.var("X"), edrv.var("X"))), nil)
  eq(edrv.match(edrv.map{[A"a"] = 1, [A"b"] = 2}, edrv.map{[A"a"] = edrv.var("A")}).A, 1)
end)

test("receive_match", function()
  local p = edrv.open_port({"spawn_driver", "tdrv"}, {})
  for _, w in ipairs({"one", "two", "three"}) do edrv.port_command(p, w) end
  local m, b = edrv.receive_match(T(p, T(A"data", edrv.var("D"))), WAIT)
  assert(m and b.D)
  -- Selective: take "three" first; the others stay, in order.
  edrv.port_command(p, "four")
  local want = edrv.string("out:four")
  m = edrv.receive_match(T(p, T(A"data", want)), WAIT)
  eq(tostring(m[2][2]), '"out:four"')
  eq(tostring(edrv.receive(WAIT)[2][2]), '"out:two"')
  eq(tostring(edrv.receive(WAIT)[2][2]), '"out:three"')
  eq(edrv.receive_match(A"never", 20), nil)
  edrv.port_close(p); drain()
end)

test("stats", function()
  edrv.load_driver(drivers, "adrv")
  local p = edrv.open_port({"spawn_driver", "adrv"}, {})
  local before = edrv.pool()
  edrv.port_control(p, 1, string.pack(">BI4I4I4", 0, 0, 10, 0))
  for _ = 1, 10 do assert(edrv.receive(WAIT)) end
  local after = edrv.pool()
  eq(after.submitted - before.submitted, 10)
  eq(after.ready_async - before.ready_async, 10)
  assert(after.threads >= 1)
  local mem = edrv.memory()
  assert(mem.port.blocks >= 1 and mem.total > 0)
  eq(mem.allocator, os.getenv("EDRV_TEST_ALLOCATOR") or mem.allocator)
  assert(mem.allocator == "mimalloc" or mem.allocator == "system")
  edrv.port_close(p); drain()
end)

h.run(only)
