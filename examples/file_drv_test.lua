-- A test harness for examples/file_drv.c written as its escript would be:
-- worker processes, each owning a port, write and read files side by side;
-- a process that exits closes its port and so its files; a crash in one
-- worker reaches the harness as an exit signal, as in Erlang.
--
--   edrv examples/file_drv_test.lua [DRIVERS_DIR] [WORKERS]
--
-- Prints one line per check and "N passed, N failed"; status 1 on failure.
local edrv = edrv
local A, T, V, ANY = edrv.atom, edrv.tuple, edrv.var, edrv._
local drivers = arg[1] or edrv.drivers_dir or "build/drivers"
local workers = tonumber(arg[2]) or 20

local OPEN, READ, WRITE, CLOSE, LISTDIR = 1, 2, 3, 5, 7
local RD, WR, CREATE = 1, 2, 4
local TIMEOUT = 30000

-- port() -> open_port({spawn_driver, "file_drv"}, [binary])
local function port()
  edrv.load_driver(drivers, "file_drv")
  return edrv.open_port({"spawn_driver", "file_drv"}, {"binary"})
end

-- result(Ref) -> receive {file_drv, Ref, R} -> R after ?TIMEOUT -> error end
local function result(ref)
  local _, b = edrv.receive_match(T(A"file_drv", ref, V"R"), TIMEOUT)
  if not b then error(T(A"no_result", ref)) end
  return b.R
end

local function req(p, op, data)
  return (string.unpack(">I4", edrv.port_control(p, op, data)))
end

local function call(p, op, data) return result(req(p, op, data)) end

local function open(p, flags, path)
  local ref, fd = string.unpack(">I4I4", edrv.port_control(p, OPEN, string.char(flags) .. path))
  local r = result(ref)
  if r ~= A"ok" then error(T(A"open", path, r)) end
  return fd
end

local function write(p, fd, data) return call(p, WRITE, string.pack(">I4", fd) .. data) end
local function read(p, fd, n) return call(p, READ, string.pack(">I4I4", fd, n)) end
local function close(p, fd) return call(p, CLOSE, string.pack(">I4", fd)) end

local tmp = os.getenv("TMPDIR") or "/tmp"
local dir = string.format("%s/file_drv_test.%d.%d", tmp, edrv.self().num, os.time())
assert(os.execute("mkdir -p '" .. dir .. "'"), "cannot make " .. dir)

local passed, failed = 0, 0
local function check(name, fn)
  local ok, err = pcall(fn)
  if ok then passed = passed + 1; print("ok   " .. name)
  else failed = failed + 1; print("FAIL " .. name .. ": " .. tostring(err)) end
end

-- Each worker writes its own file through its own port, reads it back, and
-- reports {done, Self, Bytes}; the harness waits for every one (in any order).
check("workers_write_and_read", function()
  local me = edrv.self()
  local pids = {}
  for i = 1, workers do
    pids[edrv.spawn_link(function()
      local p = port()
      local path = string.format("%s/w%d", dir, i)
      local content = string.rep(string.format("worker %d;", i), 200 * i)
      local fd = open(p, RD | WR | CREATE, path)
      assert(write(p, fd, content) == A"ok")
      assert(close(p, fd) == A"ok")
      fd = open(p, RD, path)
      local got = {}
      while true do
        local r = read(p, fd, 4096)
        if r == A"eof" then break end
        got[#got + 1] = r[2]
      end
      edrv.send(me, T(A"done", edrv.self(), table.concat(got) == content and #content or -1))
    end)] = i
  end
  for _ = 1, workers do
    local _, b = edrv.receive_match(T(A"done", V"Pid", V"N"), TIMEOUT)
    assert(b, "a worker did not report")
    local i = assert(pids[b.Pid], "a report from a stranger")
    assert(b.N == #string.format("worker %d;", i) * 200 * i, "worker " .. i .. " read back other bytes")
    pids[b.Pid] = nil
  end
  assert(next(pids) == nil)
  -- every worker returned: their links brought no signal (reason normal)
  assert(edrv.receive(50) == nil)
  local p = port()
  local r = call(p, LISTDIR, dir)
  assert(#r[2] == workers, "listdir: " .. tostring(r))
  edrv.port_close(p)
end)

-- An owner that dies closes its port, and so its files.
check("owner_exit_closes_files", function()
  local me = edrv.self()
  local pid, mon = edrv.spawn_monitor(function()
    local p = port()
    for c in ("abc"):gmatch(".") do open(p, RD | WR | CREATE, dir .. "/g" .. c) end
    edrv.send(me, A"opened")
    edrv.exit(A"done")
  end)
  assert(edrv.receive_match(A"opened", TIMEOUT), "not opened")
  local _, b = edrv.receive_match(T(A"DOWN", mon, A"process", pid, V"Why"), TIMEOUT)
  assert(b and b.Why == A"done", "no DOWN")
  local function fds_under()
    local n = 0
    for line in io.popen("ls -l /proc/self/fd/ 2>/dev/null"):lines() do
      if line:find(dir, 1, true) then n = n + 1 end
    end
    return n
  end
  local deadline = edrv.monotonic_time() + TIMEOUT * 1e6
  while fds_under() > 0 and edrv.monotonic_time() < deadline do edrv.sleep(10) end
  assert(fds_under() == 0, "files still open")
end)

-- A worker's crash reaches a linked harness that traps exits as
-- {'EXIT', Pid, {Reason, Stack}}; the harness itself goes on.
check("crash_reaches_linked_harness", function()
  edrv.process_flag("trap_exit", true)
  local pid = edrv.spawn_link(function()
    local p = port()
    edrv.port_control(p, 99, "") -- an unknown op: badarg, as in erl
  end)
  local _, b = edrv.receive_match(T(A"EXIT", pid, V"Why"), TIMEOUT)
  edrv.process_flag("trap_exit", false)
  assert(b and b.Why[1] == A"badarg", "no EXIT: " .. tostring(b and b.Why))
end)

os.execute("rm -rf '" .. dir .. "'")
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
