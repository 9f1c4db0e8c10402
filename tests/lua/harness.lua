-- harness.lua: what the Lua test scripts share. A script loads it with
--   local h = dofile(arg[0]:match("^(.*)/") .. "/harness.lua")
-- lists its cases with h.test(name, fn) and ends with h.run(only): every
-- case (or the one named), each in a pcall, its leftover messages drained
-- after it; "N passed, N failed", and the exit status.
local h = {}
local tests, order = {}, {}

function h.test(name, fn) tests[name] = fn; order[#order + 1] = name end

function h.eq(got, want, what)
  if got ~= want then
    error(string.format("%s: got %s, want %s", what or "value", tostring(got), tostring(want)), 2)
  end
end

-- Runs fn and returns its error object, failing if it did not raise.
function h.raises(reason, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected an error " .. reason, 2) end
  if type(err) ~= "table" then error("not an edrv error: " .. tostring(err), 2) end
  h.eq(err.reason, reason, "reason")
  return err
end

function h.run(only)
  local passed, failed = 0, 0
  for _, name in ipairs(order) do
    if not only or only == name then
      local ok, err = pcall(tests[name])
      if ok then passed = passed + 1; print("ok   " .. name)
      else failed = failed + 1; print("FAIL " .. name .. ": " .. tostring(err)) end
      while edrv.receive(0) do end
    end
  end
  print(string.format("%d passed, %d failed", passed, failed))
  os.exit(failed == 0 and passed > 0 and 0 or 1)
end

return h
