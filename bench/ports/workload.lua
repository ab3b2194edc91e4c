-- Lua workload for bench/ports.py: lpeg (a C module loaded by require),
-- errors caught with pcall (setjmp/longjmp), plain Lua compute and strings.
package.cpath = "./?.so"
local lpeg = require "lpeg"

local parts = {}
for i = 1, 20000 do parts[#parts + 1] = tostring((i * 7919) % 10007) end
local text = table.concat(parts, ",")
local number = lpeg.C(lpeg.R("09") ^ 1) / tonumber
local list = lpeg.Ct(number * ("," * number) ^ 0)
local total = 0
for _ = 1, 30 do
  local t = list:match(text)
  for i = 1, #t do total = total + t[i] end
end
print("lpeg sum", total)

local caught = 0
for i = 1, 100000 do
  if not pcall(error, i) then caught = caught + 1 end
end
print("pcall caught", caught)

local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
print("fib", fib(27))

local s = {}
for i = 1, 100000 do s[#s + 1] = string.format("%05d", i % 99991) end
table.sort(s)
print("sorted", s[1], s[#s])
