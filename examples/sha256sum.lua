-- sha256sum.lua: checksums every file under the given paths, in parallel on
-- edrv's async pool, through the example file driver (examples/file_drv.c).
-- The output is byte for byte that of
--   find PATH... -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
--
-- usage: edrv [-A N] examples/sha256sum.lua [-v] [--drivers DIR] PATH...
--   -v             a summary on stderr at the end: files, bytes, time, pool
--   --drivers DIR  where file_drv.so is ($EDRV_DRIVERS, else build/drivers
--                  beside this script's directory)
-- A progress bar is drawn on stderr when stderr is a terminal.
-- Exit status: 0, or 1 if some path or file could not be read (reported on
-- stderr, as find and sha256sum do).

local T, A = edrv.tuple, edrv.atom

-- ---- arguments -----------------------------------------------------------
local verbose, drivers, paths = false, os.getenv("EDRV_DRIVERS"), {}
local i = 1
while i <= #arg do
  local a = arg[i]
  if a == "-v" then verbose = true
  elseif a == "--drivers" then i = i + 1; drivers = arg[i]
  elseif a == "--" then
    for k = i + 1, #arg do paths[#paths + 1] = arg[k] end
    break
  elseif a:sub(1, 1) == "-" and #a > 1 then
    io.stderr:write("sha256sum.lua: unknown option '", a, "'\n")
    os.exit(2)
  else paths[#paths + 1] = a end
  i = i + 1
end
if #paths == 0 then
  io.stderr:write("usage: edrv examples/sha256sum.lua [-v] [--drivers DIR] PATH...\n")
  os.exit(2)
end
if not drivers then
  local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
  drivers = here .. "/../build/drivers"
end

edrv.load_driver(drivers, "file_drv")
local port = edrv.open_port({"spawn_driver", "file_drv"}, {"binary"})
local status = 0

-- ---- the file driver's protocol -------------------------------------------
local OPEN, CLOSE, SHA256, LISTDIR = 1, 5, 6, 7
local F_READ = 1

-- Sends a request; returns its Ref (and the Fd for an open).
local function request(op, data)
  local reply = edrv.port_control(port, op, data)
  return string.unpack(#reply == 8 and ">I4I4" or ">I4", reply)
end

-- What each outstanding Ref is for.
local pending, npending = {}, 0
local function expect(ref, what)
  pending[ref] = what
  npending = npending + 1
end

-- The next result: the Ref's purpose and the result term.
local function next_result()
  local m, b = edrv.receive_match(T(A"file_drv", edrv.var("Ref"), edrv.var("Res")))
  local what = pending[b.Ref]
  pending[b.Ref] = nil
  npending = npending - 1
  return what, b.Res
end

local function posix(res)
  return res[1] == A"error" and tostring(res[2]) or nil
end

local messages = {
  enoent = "No such file or directory", eacces = "Permission denied",
  eisdir = "Is a directory", eloop = "Too many levels of symbolic links",
  enotdir = "Not a directory",
}
local function complain(tool, path, reason)
  io.stderr:write(string.format("%s: %s: %s\n", tool,
    tool == "find" and ("'" .. path .. "'") or path, messages[reason] or reason))
  status = 1
end

-- ---- walking: every directory listed in parallel ---------------------------
local files = {}
local function join(dir, name)
  return dir:sub(-1) == "/" and dir .. name or dir .. "/" .. name
end

for _, p in ipairs(paths) do
  expect(request(LISTDIR, p), {kind = "list", path = p, top = true})
end
while npending > 0 do
  local what, res = next_result()
  if res[1] == A"ok" then
    for _, entry in ipairs(res[2]) do
      local name, kind = entry[1], entry[2]
      local path = join(what.path, name)
      if kind == A"directory" then
        expect(request(LISTDIR, path), {kind = "list", path = path})
      elseif kind == A"regular" then
        files[#files + 1] = path
      end
    end
  elseif posix(res) == "enotdir" and what.top then
    files[#files + 1] = what.path -- a file named on the command line
  else
    complain("find", what.path, posix(res) or tostring(res))
  end
end
table.sort(files) -- byte order: the C locale of `LC_ALL=C sort -z`

-- ---- hashing: a window of files in flight, output in order -----------------
local function escaped(path)
  if not path:find("[\\\n\r]") then return "", path end
  return "\\", (path:gsub("[\\\n\r]", {["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r"}))
end

local progress = edrv.isatty(2)
local started = edrv.monotonic_time()
local window = math.max(8, 4 * edrv.pool().threads)
local results, nextout, nextin, inflight, done = {}, 1, 1, 0, 0

local function launch(k)
  local ref, fd = request(OPEN, string.char(F_READ) .. files[k])
  expect(ref, {kind = "open", k = k})
  -- The file's own key keeps these in order after the open.
  expect(request(SHA256, string.pack(">I4", fd)), {kind = "sha", k = k})
  expect(request(CLOSE, string.pack(">I4", fd)), {kind = "close", k = k})
  inflight = inflight + 1
end

local function flush()
  while results[nextout] ~= nil do
    local r = results[nextout]
    if r then
      local mark, name = escaped(files[nextout])
      io.stdout:write(mark, r, "  ", name, "\n")
    end
    results[nextout] = nil
    nextout = nextout + 1
  end
end

local function draw()
  local width = 40
  local filled = #files > 0 and math.floor(width * done / #files) or width
  io.stderr:write(string.format("\r[%s%s] %d/%d files", string.rep("#", filled),
    string.rep(".", width - filled), done, #files))
end

local failed = {}
while nextin <= #files or npending > 0 do
  while nextin <= #files and inflight < window do
    launch(nextin)
    nextin = nextin + 1
  end
  local what, res = next_result()
  local k = what.k
  if what.kind == "open" and posix(res) then
    failed[k] = posix(res)
  elseif what.kind == "sha" then
    if res[1] == A"ok" then
      results[k] = res[2]:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    else
      failed[k] = failed[k] or posix(res) or tostring(res)
    end
  elseif what.kind == "close" then
    if failed[k] then
      complain("sha256sum", files[k], failed[k])
      results[k] = false
    end
    inflight = inflight - 1
    done = done + 1
    if progress and (done % 64 == 0 or done == #files) then draw() end
  end
  flush()
end
flush()
io.stdout:flush()
if progress then io.stderr:write("\r", string.rep(" ", 60), "\r") end

-- ---- summary -------------------------------------------------------------------
if verbose then
  local bytes = 0
  for _, f in ipairs(files) do
    local h = io.open(f, "rb")
    if h then bytes = bytes + h:seek("end"); h:close() end
  end
  local secs = (edrv.monotonic_time() - started) / 1e9
  local pool = edrv.pool()
  io.stderr:write(string.format(
    "%d files, %d bytes in %.3f s (%.1f MB/s); pool: %d threads, %d jobs, %d cancelled\n",
    #files, bytes, secs, secs > 0 and bytes / secs / 1e6 or 0, pool.threads,
    pool.submitted, pool.cancelled))
end
edrv.port_close(port)
os.exit(status)
