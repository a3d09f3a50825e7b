-- Metered pattern matching. Lua's matcher (string.find / match / gmatch / gsub) is C, which the
-- instruction count does not see, and it backtracks: string.find(('a'):rep(40), ('a*'):rep(40)..'b')
-- would run for ages as one instruction. So a process's calls get a bound on the C matcher's work
-- (its steps, worst case, from the subject's length and the pattern's quantifiers): within
-- C_STEPS it runs in C and the bound is charged to the compute limit; past it the same matcher,
-- written here in Lua, runs instead, each of its steps counted as instructions. Loaded after the
-- library (whose own patterns are fixed and linear, and keep C) and before the process's module.
local charge = __verity_charge
__verity_charge = nil
local cfind, cmatch, cgmatch, cgsub = string.find, string.match, string.gmatch, string.gsub
local sbyte, ssub, schar, sformat, tconcat = string.byte, string.sub, string.char, string.format, table.concat
local rawtype, error, select, tointeger, tostring, rawtostring = type, error, select, math.tointeger, tostring, tostring

-- The most steps a C call may take (worst case): a few milliseconds.
local C_STEPS = 2 ^ 20
-- Instructions charged per worst-case step of a C call.
local STEPS_PER_INSTRUCTION = 4

local MAXCCALLS = 200
local MAXCAPTURES = 32
local CAP_UNFINISHED, CAP_POSITION = -1, -2
local B_PCT, B_LB, B_RB, B_LP, B_RP, B_DOT, B_DOLLAR, B_CARET, B_DASH, B_STAR, B_PLUS, B_QUEST =
  sbyte('%[]().$^-*+?', 1, -1)

-- C locale character classes
local CLASS = {}
do
  local function set(name, f) local t = {} for c = 0, 255 do t[c] = f(c) end CLASS[sbyte(name)] = t end
  local function alpha(c) return (c >= 65 and c <= 90) or (c >= 97 and c <= 122) end
  local function digit(c) return c >= 48 and c <= 57 end
  set('a', alpha)
  set('c', function(c) return c < 32 or c == 127 end)
  set('d', digit)
  set('g', function(c) return c >= 33 and c <= 126 end)
  set('l', function(c) return c >= 97 and c <= 122 end)
  set('p', function(c) return c >= 33 and c <= 126 and not alpha(c) and not digit(c) end)
  set('s', function(c) return c == 32 or (c >= 9 and c <= 13) end)
  set('u', function(c) return c >= 65 and c <= 90 end)
  set('w', function(c) return alpha(c) or digit(c) end)
  set('x', function(c) return digit(c) or (c >= 65 and c <= 70) or (c >= 97 and c <= 102) end)
end

local function matchClass(c, cl)
  local lower = cl >= 65 and cl <= 90 and cl + 32 or cl
  local t = CLASS[lower]
  if t == nil then return cl == c end
  if lower ~= cl then return not t[c] end
  return t[c]
end

-- A match state: s (subject), n (its length), p (pattern), pn (its length), level, captures.
local function classEnd(ms, p)
  local c = sbyte(ms.p, p)
  p = p + 1
  if c == B_PCT then
    if p > ms.pn then error('malformed pattern (ends with \'%\')', 0) end
    return p + 1
  elseif c == B_LB then
    if sbyte(ms.p, p) == B_CARET then p = p + 1 end
    repeat
      if p > ms.pn then error('malformed pattern (missing \']\')', 0) end
      local cc = sbyte(ms.p, p)
      p = p + 1
      if cc == B_PCT and p <= ms.pn then p = p + 1 end
    until sbyte(ms.p, p) == B_RB
    return p + 1
  end
  return p
end

local function matchBracket(ms, c, p, ec)
  local pat = ms.p
  local sig = true
  if sbyte(pat, p + 1) == B_CARET then sig = false p = p + 1 end
  p = p + 1
  while p < ec do
    local pc = sbyte(pat, p)
    if pc == B_PCT then
      p = p + 1
      if matchClass(c, sbyte(pat, p)) then return sig end
    elseif sbyte(pat, p + 1) == B_DASH and p + 2 < ec then
      if pc <= c and c <= sbyte(pat, p + 2) then return sig end
      p = p + 2
    elseif pc == c then
      return sig
    end
    p = p + 1
  end
  return not sig
end

local function singleMatch(ms, s, p, ep)
  if s > ms.n then return false end
  local c = sbyte(ms.s, s)
  local pc = sbyte(ms.p, p)
  if pc == B_DOT then return true
  elseif pc == B_PCT then return matchClass(c, sbyte(ms.p, p + 1))
  elseif pc == B_LB then return matchBracket(ms, c, p, ep - 1)
  end
  return pc == c
end

local doMatch

local function maxExpand(ms, s, p, ep)
  local i = 0
  while singleMatch(ms, s + i, p, ep) do i = i + 1 end
  while i >= 0 do
    local res = doMatch(ms, s + i, ep + 1)
    if res then return res end
    i = i - 1
  end
  return nil
end

local function minExpand(ms, s, p, ep)
  while true do
    local res = doMatch(ms, s, ep + 1)
    if res then return res end
    if singleMatch(ms, s, p, ep) then s = s + 1 else return nil end
  end
end

local function startCapture(ms, s, p, what)
  local level = ms.level
  if level >= MAXCAPTURES then error('too many captures', 0) end
  ms.init[level + 1] = s
  ms.len[level + 1] = what
  ms.level = level + 1
  local res = doMatch(ms, s, p)
  if res == nil then ms.level = ms.level - 1 end
  return res
end

local function endCapture(ms, s, p)
  local l
  for i = ms.level, 1, -1 do
    if ms.len[i] == CAP_UNFINISHED then l = i break end
  end
  if l == nil then error('invalid pattern capture', 0) end
  ms.len[l] = s - ms.init[l]
  local res = doMatch(ms, s, p)
  if res == nil then ms.len[l] = CAP_UNFINISHED end
  return res
end

local function matchCapture(ms, s, d)
  local l = d - 48
  if l < 1 or l > ms.level or ms.len[l] == CAP_UNFINISHED then error(sformat('invalid capture index %%%d', l), 0) end
  local len = ms.len[l]
  if len == CAP_POSITION then return nil end
  if ms.n - s + 1 >= len and ssub(ms.s, ms.init[l], ms.init[l] + len - 1) == ssub(ms.s, s, s + len - 1) then return s + len end
  return nil
end

local function matchBalance(ms, s, p)
  if p + 1 > ms.pn then error("malformed pattern (missing arguments to '%b')", 0) end
  if s > ms.n or sbyte(ms.s, s) ~= sbyte(ms.p, p) then return nil end
  local b, e = sbyte(ms.p, p, p + 1)
  local cont = 1
  s = s + 1
  while s <= ms.n do
    local c = sbyte(ms.s, s)
    if c == e then
      cont = cont - 1
      if cont == 0 then return s + 1 end
    elseif c == b then
      cont = cont + 1
    end
    s = s + 1
  end
  return nil
end

-- Positions are 1-based; a match ends at `res`, the position after its last character.
doMatch = function(ms, s, p)
  ms.depth = ms.depth - 1
  if ms.depth == 0 then error('pattern too complex', 0) end
  local pat = ms.p
  while true do
    if p > ms.pn then break end
    local pc = sbyte(pat, p)
    local dflt = false
    if pc == B_LP then
      if sbyte(pat, p + 1) == B_RP then s = startCapture(ms, s, p + 2, CAP_POSITION)
      else s = startCapture(ms, s, p + 1, CAP_UNFINISHED) end
      break
    elseif pc == B_RP then
      s = endCapture(ms, s, p + 1)
      break
    elseif pc == B_DOLLAR and p == ms.pn then
      if s ~= ms.n + 1 then s = nil end
      break
    elseif pc == B_PCT then
      local nc = sbyte(pat, p + 1)
      if nc == 98 then -- %b
        s = matchBalance(ms, s, p + 2)
        if s == nil then break end
        p = p + 4
      elseif nc == 102 then -- %f
        p = p + 2
        if sbyte(pat, p) ~= B_LB then error("missing '[' after '%f' in pattern", 0) end
        local ep = classEnd(ms, p)
        local previous = s == 1 and 0 or sbyte(ms.s, s - 1)
        local current = s <= ms.n and sbyte(ms.s, s) or 0
        if not matchBracket(ms, previous, p, ep - 1) and matchBracket(ms, current, p, ep - 1) then
          p = ep
        else
          s = nil
          break
        end
      elseif nc ~= nil and nc >= 48 and nc <= 57 then
        s = matchCapture(ms, s, nc)
        if s == nil then break end
        p = p + 2
      else
        dflt = true
      end
    else
      dflt = true
    end
    if dflt then
      local ep = classEnd(ms, p)
      local epc = sbyte(pat, ep)
      if not singleMatch(ms, s, p, ep) then
        if epc == B_STAR or epc == B_QUEST or epc == B_DASH then
          p = ep + 1
        else
          s = nil
          break
        end
      else
        if epc == B_QUEST then
          local res = doMatch(ms, s + 1, ep + 1)
          if res then s = res break end
          p = ep + 1
        elseif epc == B_PLUS then
          s = maxExpand(ms, s + 1, p, ep)
          break
        elseif epc == B_STAR then
          s = maxExpand(ms, s, p, ep)
          break
        elseif epc == B_DASH then
          s = minExpand(ms, s, p, ep)
          break
        else
          s = s + 1
          p = ep
        end
      end
    end
  end
  ms.depth = ms.depth + 1
  return s
end

local function oneCapture(ms, i, s, e)
  if i > ms.level then
    if i ~= 1 then error(sformat('invalid capture index %%%d', i), 0) end
    return ssub(ms.s, s, e - 1)
  end
  local l = ms.len[i]
  if l == CAP_UNFINISHED then error('unfinished capture', 0) end
  if l == CAP_POSITION then return ms.init[i] end
  return ssub(ms.s, ms.init[i], ms.init[i] + l - 1)
end

local function captures(ms, s, e, whole)
  local n = (ms.level == 0 and whole) and 1 or ms.level
  local out = {}
  for i = 1, n do out[i] = oneCapture(ms, i, s, e) end
  return out, n
end

local function state(s, p, pstart)
  return { s = s, n = #s, p = p, pn = #p, level = 0, depth = MAXCCALLS, init = {}, len = {}, pstart = pstart }
end

local function reset(ms) ms.level = 0 ms.depth = MAXCCALLS end

-- Worst-case steps of the C matcher on subject s from init (n characters left): a quantified item
-- tries at most one more length than the longest run of characters its class matches in s (the
-- whole rest for '.'), each try of the rest of the pattern walks at most its items (and, for a %b
-- or a back reference, the subject), and an unanchored pattern is tried at every position. Runs
-- are measured in C with the item alone ('X+' on its own never backtracks: linear), and charged.
local function longestRun(s, init, class, runs)
  local r = runs[class]
  if r then return r end
  r = 0
  local i, item, scanned = init, (class == '^' and '%^' or class) .. '+', 0
  while true do
    local a, b = cfind(s, item, i)
    if a == nil then break end
    if b - a + 1 > r then r = b - a + 1 end
    i = b + 1
    scanned = scanned + 1
  end
  runs[class] = r
  charge(scanned + (#s - init + 1) // STEPS_PER_INSTRUCTION)
  return r
end

local function worstSteps(s, init, p, anchored)
  local n = #s - init + 1.0 -- floats: a product of lengths must not wrap around
  local ms = { p = p, pn = #p }
  local factor, specials, runs = 1.0, 0, {}
  local i, pn = anchored and 2 or 1, #p
  while i <= pn do
    local c = sbyte(p, i)
    if c == B_LP or c == B_RP or (c == B_DOLLAR and i == pn) then
      i = i + 1
    elseif c == B_PCT and sbyte(p, i + 1) == 98 then -- %bxy
      specials = specials + 1
      i = i + 4
    elseif c == B_PCT and sbyte(p, i + 1) == 102 then -- %f[set]
      i = classEnd(ms, i + 2)
    elseif c == B_PCT and (sbyte(p, i + 1) or 0) >= 48 and (sbyte(p, i + 1) or 0) <= 57 then
      specials = specials + 1
      i = i + 2
    else
      local ep = classEnd(ms, i)
      local q = sbyte(p, ep)
      if q == B_STAR or q == B_PLUS or q == B_DASH or q == B_QUEST then
        local r = q == B_QUEST and 1 or (c == B_DOT and ep == i + 1) and n or longestRun(s, init, ssub(p, i, ep - 1), runs)
        factor = factor * (r + 1)
        if factor > 1e12 then return 1e15 end
        ep = ep + 1
      end
      i = ep
    end
  end
  local attempt = factor * (2 * pn + 2 + specials * (n + 1))
  return anchored and attempt or attempt * (n + 2)
end

local function checkString(v, i, name)
  local t = rawtype(v)
  if t == 'string' then return v end
  if t == 'number' then return rawtostring(v) end
  error(sformat("bad argument #%d to '%s' (string expected, got %s)", i, name, t == 'nil' and 'no value' or t), 3)
end

local function startAt(init, n)
  init = init == nil and 1 or tointeger(init)
  if init == nil then error("bad argument #3 (number has no integer representation)", 3) end
  if init > 0 then return init end
  if init == 0 or init < -n then return 1 end
  return n + init + 1
end

local function pay(steps)
  charge(steps >= 2 ^ 30 and 2 ^ 30 or (steps // STEPS_PER_INSTRUCTION) // 1)
end

local function noSpecials(p)
  return cfind(p, '[%^%$%*%+%?%.%(%[%%%-]') == nil -- C's SPECIALS: ^$*+?.([%-
end

local function findAux(find, s, p, init, plain, name)
  s = checkString(s, 1, name)
  p = checkString(p, 2, name)
  local n = #s
  init = startAt(init, n)
  if init > n + 1 then return nil end
  if find and (plain or noSpecials(p)) then
    local steps = (n - init + 2.0) * (#p + 1.0)
    if steps <= C_STEPS then pay(steps) return cfind(s, p, init, true) end
    -- past the bound: the first byte in C (linear, charged), the rest compared here
    local m = #p
    if m == 0 then return init, init - 1 end
    local first = ssub(p, 1, 1)
    local i = init
    while true do
      local j = cfind(s, first, i, true)
      if j == nil or j + m - 1 > n then pay(n - i + 2) return nil end
      pay(j - i + 1 + m)
      if ssub(s, j, j + m - 1) == p then return j, j + m - 1 end
      i = j + 1
    end
  end
  local anchored = sbyte(p, 1) == B_CARET
  local steps = worstSteps(s, init, p, anchored)
  if steps <= C_STEPS then
    pay(steps)
    if find then return cfind(s, p, init) end
    return cmatch(s, p, init)
  end
  local ms = state(s, p)
  local pstart = anchored and 2 or 1
  local s1 = init
  repeat
    reset(ms)
    local e = doMatch(ms, s1, pstart)
    if e then
      if find then
        local caps, k = captures(ms, nil, 0, false)
        return s1, e - 1, table.unpack(caps, 1, k)
      end
      local caps, k = captures(ms, s1, e, true)
      return table.unpack(caps, 1, k)
    end
    s1 = s1 + 1
  until s1 > n + 1 or anchored
  return nil
end

function string.find(s, p, init, plain) return findAux(true, s, p, init, plain, 'find') end
function string.match(s, p, init) return findAux(false, s, p, init, false, 'match') end

function string.gmatch(s, p, init)
  s = checkString(s, 1, 'gmatch')
  p = checkString(p, 2, 'gmatch')
  local n = #s
  init = startAt(init, n)
  if init > n + 1 then init = n + 2 end
  local steps = worstSteps(s, init <= n + 1 and init or n + 1, p, false)
  if steps <= C_STEPS then
    pay(steps)
    return cgmatch(s, p, init)
  end
  local ms = state(s, p)
  local src, last = init, nil
  return function()
    while src <= n + 1 do
      reset(ms)
      local e = doMatch(ms, src, 1)
      if e and e ~= last then
        local from = src
        src, last = e, e
        local caps, k = captures(ms, from, e, true)
        return table.unpack(caps, 1, k)
      end
      src = src + 1
    end
    return nil
  end
end

local function addValue(ms, out, s, e, repl, tr)
  local value
  if tr == 'function' then
    local caps, k = captures(ms, s, e, true)
    value = repl(table.unpack(caps, 1, k))
  elseif tr == 'table' then
    value = repl[oneCapture(ms, 1, s, e)]
  else
    local parts, i, rn = {}, 1, #repl
    while i <= rn do
      local j = cfind(repl, '%', i, true)
      if j == nil then parts[#parts + 1] = ssub(repl, i) break end
      parts[#parts + 1] = ssub(repl, i, j - 1)
      local d = sbyte(repl, j + 1)
      if d == B_PCT then parts[#parts + 1] = '%'
      elseif d ~= nil and d >= 48 and d <= 57 then
        if d == 48 then parts[#parts + 1] = ssub(ms.s, s, e - 1)
        else parts[#parts + 1] = tostring(oneCapture(ms, d - 48, s, e)) end
      else
        error("invalid use of '%' in replacement string", 0)
      end
      i = j + 2
    end
    out[#out + 1] = tconcat(parts)
    return
  end
  if value == nil or value == false then
    out[#out + 1] = ssub(ms.s, s, e - 1)
  elseif rawtype(value) == 'string' or rawtype(value) == 'number' then
    out[#out + 1] = rawtostring(value)
  else
    error('invalid replacement value (a ' .. rawtype(value) .. ')', 0)
  end
end

function string.gsub(s, p, repl, max)
  s = checkString(s, 1, 'gsub')
  p = checkString(p, 2, 'gsub')
  local tr = rawtype(repl)
  if tr == 'number' then repl = rawtostring(repl) tr = 'string' end
  if tr ~= 'string' and tr ~= 'table' and tr ~= 'function' then
    error("bad argument #3 to 'gsub' (string/function/table expected, got " .. (tr == 'nil' and 'no value' or tr) .. ')', 2)
  end
  local n = #s
  local anchored = sbyte(p, 1) == B_CARET
  local steps = worstSteps(s, 1, p, anchored)
  if steps <= C_STEPS then
    pay(steps)
    return cgsub(s, p, repl, max)
  end
  if max ~= nil then
    max = tointeger(max)
    if max == nil then error("bad argument #4 to 'gsub' (number has no integer representation)", 2) end
  else
    max = n + 1
  end
  local ms = state(s, p)
  local pstart = anchored and 2 or 1
  local out, src, last, count, copied = {}, 1, nil, 0, 1
  while count < max do
    reset(ms)
    local e = doMatch(ms, src, pstart)
    if e and e ~= last then
      count = count + 1
      if copied < src then out[#out + 1] = ssub(s, copied, src - 1) end
      addValue(ms, out, src, e, repl, tr)
      src, last, copied = e, e, e
    elseif src <= n then
      src = src + 1
    else
      break
    end
    if anchored then break end
  end
  if copied <= n then out[#out + 1] = ssub(s, copied) end
  return tconcat(out), count
end

return true
