-- edrv.term_to_binary and edrv.binary_to_term against erl's: for each case
-- of the corpus that tests/erl/t2b_corpus.erl wrote, binary_to_term of
-- erl's bytes, then term_to_binary with the same options, must give erl's
-- bytes again.    edrv t2b_test.lua CORPUS
local path = assert(arg[1], "usage: t2b_test.lua CORPUS")
local f = assert(io.open(path, "rb"))
local data = f:read("a")
f:close()

local function hex(s, from)
  local t = {}
  for i = from or 1, math.min(#s, (from or 1) + 40) do t[#t + 1] = string.format("%d", s:byte(i)) end
  return table.concat(t, ",")
end

local at, cases, failed = 1, 0, 0
while at <= #data do
  local n = string.unpack(">I4", data, at)
  local opts = edrv.binary_to_term(data:sub(at + 4, at + 3 + n))
  at = at + 4 + n
  n = string.unpack(">I4", data, at)
  local want = data:sub(at + 4, at + 3 + n)
  at = at + 4 + n
  cases = cases + 1
  local ok, got = pcall(function()
    return edrv.term_to_binary(edrv.binary_to_term(want), opts)
  end)
  if not ok or got ~= want then
    failed = failed + 1
    if failed <= 20 then
      local term = select(2, pcall(edrv.binary_to_term, want))
      local where = 1
      if ok then while where <= #want and got:byte(where) == want:byte(where) do where = where + 1 end end
      print(string.format("FAIL case %d %s %s:\n  want %s\n  got  %s (from byte %d)", cases,
        tostring(opts), tostring(term):sub(1, 80), hex(want, math.max(1, where - 5)),
        ok and hex(got, math.max(1, where - 5)) or tostring(got), where))
    end
  end
end
-- binary_to_term's edges
local one = edrv.term_to_binary(1)
assert(edrv.binary_to_term(one .. "rest") == 1, "bytes after the term are ignored")
local v, used = edrv.binary_to_term(one .. "rest", {"used"})
assert(v == 1 and used == #one, "used")
for _, bad in ipairs({"", "\131", "\131\80\0\0\0\3\1\2", "\130\97\1", "\131\104\2\97\1"}) do
  local ok, err = pcall(edrv.binary_to_term, bad)
  assert(not ok and err.reason == "badarg", "bad input must be badarg: " .. hex(bad))
end
local ok, err = pcall(edrv.term_to_binary, 1, {"bogus"})
assert(not ok and err.reason == "badarg")
print(string.format("%d cases, %d failed", cases, failed))
os.exit(failed == 0 and cases > 0 and 0 or 1)
