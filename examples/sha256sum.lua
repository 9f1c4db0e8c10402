-- sha256sum.lua: checksums every regular file under the given paths, in
-- parallel on edrv's async pool, through the example file driver
-- (examples/file_drv.c). What it writes is byte for byte what this pipeline
-- writes in the C locale, on standard output and on standard error:
--   find PATH... -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
-- (xargs -r: with no file found, nothing is written).
--
-- usage: edrv [-A N] examples/sha256sum.lua [-v] [--drivers DIR] PATH...
--   -v             a summary on stderr at the end: files, bytes, time, pool
--   --drivers DIR  where file_drv.so is ($EDRV_DRIVERS, else an installed
--                  edrv's drivers, else build/drivers beside this script's
--                  directory)
-- A progress bar is drawn on stderr when stderr is a terminal.
--
-- As find (-P, its default): a path named on the command line that is a
-- symbolic link is not followed, and only regular files are hashed (FIFOs,
-- devices and sockets are left alone, named or found). find's errors (a
-- path that cannot be read) come first, in find's order; then each file's
-- line, or sha256sum's error for it, in byte order of the names. Names in
-- error messages are quoted as find and sha256sum quote them.
-- Exit status: 0 when every path was walked and every file hashed; 1
-- otherwise (a path or file that could not be read, or a write error on
-- standard output); 2 on a usage error.

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
  drivers = edrv.drivers_dir or here .. "/../build/drivers"
end

edrv.load_driver(drivers, "file_drv")
local port = edrv.open_port({"spawn_driver", "file_drv"}, {"binary"})
local status = 0

-- ---- quoting, as find and coreutils quote names in messages ---------------
local c_escapes = {["\a"] = "a", ["\b"] = "b", ["\f"] = "f", ["\n"] = "n", ["\r"] = "r",
                   ["\t"] = "t", ["\v"] = "v"}
local function c_escape(c)
  local e = c_escapes[c]
  return e and "\\" .. e or string.format("\\%03o", c:byte())
end

-- find's: always in quotes, C escapes inside.
local function find_quote(name)
  return "'" .. name:gsub("[\\']", "\\%0"):gsub("[%c\128-\255]", c_escape) .. "'"
end

-- coreutils' (quotef): as is when the shell would take it so; else in
-- single quotes, control bytes as $'\n' between them, or in double quotes
-- when that is the one thing needing care.
local function shell_quote(name)
  local special = name == "" or name:find("[%s!\"$&'()*;<=>?%[\\^`|%c\128-\255]") or
                  name:find("^[#~]") or name == "{" or name == "}"
  if not special then return name end
  if name:find("'") and not name:find("[\"$`\\!%c\128-\255]") then
    return '"' .. name .. '"'
  end
  local out, open = {"'"}, true
  local pos = 1
  while pos <= #name do
    local run = name:match("^[%c\128-\255]+", pos)
    if run then
      if open then out[#out + 1] = "'"; open = false end
      out[#out + 1] = "$'" .. run:gsub(".", c_escape) .. "'"
      pos = pos + #run
    else
      local text = name:match("^[^%c\128-\255]+", pos)
      if not open then out[#out + 1] = "'"; open = true end
      out[#out + 1] = text:gsub("'", "'\\''")
      pos = pos + #text
    end
  end
  if open then out[#out + 1] = "'" end
  return table.concat(out)
end

-- ---- the file driver's protocol -------------------------------------------
local LISTDIR, LSTAT, SHA256S = 7, 9, 10

-- What each outstanding Ref is for.
local pending, npending = {}, 0
local function request(op, data, what)
  local ref = string.unpack(">I4", edrv.port_control(port, op, data))
  pending[ref] = what
  npending = npending + 1
end

-- The next result: the Ref's purpose and the result term. Every message is
-- one of file_drv's {file_drv, Ref, Result}.
local function next_result()
  local m = edrv.receive()
  local what = pending[m[2]]
  pending[m[2]] = nil
  npending = npending - 1
  return what, m[3]
end

local function posix(res)
  return res[1] == A"error" and tostring(res[2]) or nil
end

-- ---- walking: every directory listed in parallel ---------------------------
-- find's errors are kept with the place find would meet them: the path of
-- indexes (command-line position, then readdir position) packed so that
-- byte order is find's depth-first order.
local files, errors = {}, {}
local function join(dir, name)
  return dir:sub(-1) == "/" and dir .. name or dir .. "/" .. name
end
local function find_error(key, path, reason)
  errors[#errors + 1] = {key, string.format("find: %s: %s\n", find_quote(path),
                                            edrv.strerror(reason))}
end

for k, p in ipairs(paths) do
  request(LSTAT, p, {kind = "stat", path = p, key = string.pack(">I4", k)})
end
while npending > 0 do
  local what, res = next_result()
  if posix(res) then
    find_error(what.key, what.path, posix(res))
  elseif what.kind == "stat" then
    if res[2] == A"directory" then
      request(LISTDIR, what.path, {kind = "list", path = what.path, key = what.key})
    elseif res[2] == A"regular" then
      files[#files + 1] = what.path
    end -- a symbolic link (not followed), a FIFO, a device: not a file to hash
  else
    for j, entry in ipairs(res[2]) do
      local name, kind = entry[1], entry[2]
      local path = join(what.path, name)
      if kind == A"directory" then
        request(LISTDIR, path, {kind = "list", path = path, key = what.key .. string.pack(">I4", j)})
      elseif kind == A"regular" then
        files[#files + 1] = path
      end
    end
  end
end
table.sort(errors, function(a, b) return a[1] < b[1] end)
for _, e in ipairs(errors) do io.stderr:write(e[2]) end
if #errors > 0 then status = 1 end
table.sort(files) -- byte order: the C locale of `LC_ALL=C sort -z`

-- ---- hashing: batches of files in flight, output in order ------------------
local out_failed = false
io.stdout:setvbuf("full", 65536)
local function out(s)
  if not out_failed and not io.stdout:write(s) then out_failed = true end
end

local function escaped(path)
  if not path:find("[\\\n\r]") then return "", path end
  return "\\", (path:gsub("[\\\n\r]", {["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r"}))
end

local HEX = {} -- each byte's two hex digits
for b = 0, 255 do HEX[string.char(b)] = string.format("%02x", b) end
local BATCH = 32
local progress = edrv.isatty(2)
local started = edrv.monotonic_time()
local window = math.max(4, 4 * edrv.pool().threads) -- batches in flight
local results, nextout, nextin, inflight, done = {}, 1, 1, 0, 0

local function launch()
  local first, last = nextin, math.min(nextin + BATCH - 1, #files)
  request(SHA256S, table.concat(files, "\0", first, last), {first = first})
  nextin = last + 1
  inflight = inflight + 1
end

local function flush()
  while results[nextout] ~= nil do
    local r = results[nextout]
    if type(r) == "string" then
      local mark, name = escaped(files[nextout])
      out(mark .. r .. "  " .. name .. "\n")
    else -- {error, Posix}
      io.stdout:flush()
      io.stderr:write("sha256sum: ", shell_quote(files[nextout]), ": ", edrv.strerror(r[2]), "\n")
      status = 1
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

while nextin <= #files or npending > 0 do
  while nextin <= #files and inflight < window do launch() end
  local what, res = next_result()
  inflight = inflight - 1
  if posix(res) then error("file_drv: " .. tostring(res)) end -- the batch itself (memory)
  for k, r in ipairs(res[2]) do
    results[what.first + k - 1] = type(r) == "string" and r:gsub(".", HEX) or r
  end
  done = done + #res[2]
  if progress then draw() end
  flush()
end
flush()
if not io.stdout:flush() then out_failed = true end
if progress then io.stderr:write("\r", string.rep(" ", 60), "\r") end
if out_failed then
  io.stderr:write("sha256sum: write error\n")
  status = 1
end

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
