-- Verity's aos-compatible process library (Lua 5.4). The Lua runtime (src/ao/lua-runtime.ts) loads
-- this file into every process VM before the process's own module source. It gives process code
-- what aos gives it — `json`, `Handlers`, `ao`, `Send`, `Spawn`, `Assign`, `Owner`, `Inbox`, Eval
-- from the owner — and the entry point the runtime calls once per message:
--
--   __verity_handle(messageJson, envJson) -> outcomeJson
--
-- Written for Verity from aos's documented behaviour; docs/lua.md ("The aos library") says what
-- is covered and how it differs. Determinism is a correctness property here: every CU that runs the
-- same messages must produce the same outcome bytes. So nothing below lets `pairs` order, table
-- addresses, the clock or the GC reach an outcome: JSON objects are written with sorted keys, tags
-- built from a table come in name order, `tostring` of a table names it by a counter instead of its
-- address, `os.time` is the message's Timestamp and `math.random` is seeded from the message.

local rawnext, rawtype, rawget, rawset, rawtostring = next, type, rawget, rawset, tostring
local getmetatable, setmetatable, select, error, pcall, xpcall = getmetatable, setmetatable, select, error, pcall, xpcall
local tconcat, tinsert, tremove, tsort, tunpack = table.concat, table.insert, table.remove, table.sort, table.unpack
local sformat, sbyte, schar, ssub, sfind, sgsub, smatch, srep = string.format, string.byte, string.char, string.sub, string.find, string.gsub, string.match, string.rep
local mtype, mfloor, mhuge = math.type, math.floor, math.huge
local sgmatch = string.gmatch

---------------------------------------------------------------------------------------------------
-- Limits this library enforces itself (memory and instructions are the runtime's).
---------------------------------------------------------------------------------------------------
local LIMITS = {
  inbox = 10000,            -- unhandled messages kept in Inbox (the oldest are dropped, as aos does)
  jsonDepth = 512,          -- nesting of arrays/objects in json.encode / json.decode
  output = 1024 * 1024,     -- bytes of printed text per message; the rest is dropped with a note
}

---------------------------------------------------------------------------------------------------
-- Deterministic identities, ordering, tostring and pairs.
---------------------------------------------------------------------------------------------------
local objectIds = setmetatable({}, { __mode = 'k' })
local nextObjectId = 0
local function objectId(v)
  local id = objectIds[v]
  if id == nil then
    nextObjectId = nextObjectId + 1
    id = nextObjectId
    objectIds[v] = id
  end
  return id
end

local function hasMetafield(v, name)
  local mt = getmetatable(v)
  return rawtype(mt) == 'table' and rawget(mt, name) ~= nil
end

-- tostring without addresses: a table, function, thread or userdata without __tostring is named by
-- the order in which it was first named ("table: 0x00000001"), the same on every CU.
local function detTostring(v)
  local t = rawtype(v)
  if t == 'table' or t == 'function' or t == 'thread' or t == 'userdata' then
    if hasMetafield(v, '__tostring') then return rawtostring(v) end
    local mt = getmetatable(v)
    local name = (rawtype(mt) == 'table' and rawtype(rawget(mt, '__name')) == 'string') and rawget(mt, '__name') or t
    return sformat('%s: 0x%08x', name, objectId(v))
  end
  return rawtostring(v)
end
tostring = detTostring

local TYPE_RANK = { number = 1, string = 2, boolean = 3, table = 4, ['function'] = 5, userdata = 6, thread = 7 }
local function keyLess(a, b)
  local ta, tb = rawtype(a), rawtype(b)
  if ta ~= tb then return TYPE_RANK[ta] < TYPE_RANK[tb] end
  if ta == 'number' or ta == 'string' then return a < b end
  if ta == 'boolean' then return (not a) and b end
  return objectId(a) < objectId(b)
end

local function sortedKeys(t)
  local keys, n, strings, numbers = {}, 0, 0, 0
  for k in rawnext, t do
    n = n + 1
    keys[n] = k
    local tk = rawtype(k)
    if tk == 'string' then strings = strings + 1 elseif tk == 'number' then numbers = numbers + 1 end
  end
  -- one type of key: Lua's own comparison, without a Lua function call per comparison
  if strings == n or numbers == n then tsort(keys) else tsort(keys, keyLess) end
  return keys, n
end

-- The library's own walks over tables go in a fixed order: numbers ascending, then strings (byte
-- order), then booleans, then other keys in the order they were first named. Keys set to nil during
-- the walk are skipped. (The global `pairs` is Lua's own: the runtime fixes the string-hash seed and
-- keeps the memory image, so its order is the same on every CU that ran the same messages; sorting
-- every pairs call would cost process code O(n log n) instructions.)
local function detPairs(t)
  local keys, n = sortedKeys(t)
  local i = 0
  return function()
    while i < n do
      i = i + 1
      local k = keys[i]
      local v = rawget(t, k)
      if v ~= nil then return k, v end
    end
    return nil
  end, t, nil
end

-- string.format: %p (an address) is refused, and %s of a table/function names it deterministically.
local function detFormat(fmt, ...)
  if rawtype(fmt) == 'string' and sfind(fmt, '%', 1, true) then
    -- C's matcher (this pattern's (.) ends every try at once: linear)
    for conv in sgmatch(fmt, '%%[-+ #0]*%d*%.?%d*(.)') do
      if conv == 'p' then error("string.format: '%p' is not available (addresses differ between CUs)", 2) end
    end
  end
  local n = select('#', ...)
  if n == 0 then return sformat(fmt) end
  local args = { ... }
  for i = 1, n do
    local t = rawtype(args[i])
    if t == 'table' or t == 'function' or t == 'thread' or t == 'userdata' then args[i] = detTostring(args[i]) end
  end
  return sformat(fmt, tunpack(args, 1, n))
end
string.format = detFormat

-- collectgarbage: what it reports depends on allocation history, which differs between a CU that
-- replayed and one restored from a checkpoint, so it reports nothing ("count" is 0). Collection
-- itself still runs; the collector cannot be stopped.
local rawcollect = collectgarbage
collectgarbage = function(opt, ...)
  opt = opt or 'collect'
  if opt == 'collect' then rawcollect('collect') return 0 end
  if opt == 'step' then rawcollect('step', ...) return true end
  if opt == 'isrunning' then return true end
  if opt == 'incremental' or opt == 'generational' then return rawcollect(opt, ...) end
  if opt == 'count' or opt == 'stop' or opt == 'restart' or opt == 'setpause' or opt == 'setstepmul' then return 0 end
  error("bad argument #1 to 'collectgarbage' (invalid option '" .. rawtostring(opt) .. "')", 2)
end

---------------------------------------------------------------------------------------------------
-- package / require / os: the runtime opens neither package, os nor io.
---------------------------------------------------------------------------------------------------
package = { loaded = {}, preload = {}, path = '', cpath = '', config = '/\n;\n?\n!\n-\n' }
local loaded, preload = package.loaded, package.preload

function require(name)
  if rawtype(name) ~= 'string' then error("bad argument #1 to 'require' (string expected, got " .. rawtype(name) .. ')', 2) end
  local m = loaded[name]
  if m ~= nil then return m end
  local loader = preload[name]
  if loader == nil then error("module '" .. name .. "' not found", 2) end
  local result = loader(name, ':preload:')
  if result == nil then result = true end
  if loaded[name] == nil then loaded[name] = result end
  return loaded[name]
end

-- The message being handled (its Timestamp is the process's clock).
local current = { timestamp = 0 }

os = {
  time = function() return current.timestamp end,
  clock = function() return 0 end,
}
io = nil
debug = nil
dofile = nil
loadfile = nil

loaded._G = _G
loaded.string = string
loaded.table = table
loaded.math = math
loaded.utf8 = utf8
loaded.coroutine = coroutine
loaded.os = os

---------------------------------------------------------------------------------------------------
-- json
---------------------------------------------------------------------------------------------------
local json = { _version = 'verity-1' }

local OBJECT_MT = { __jsontype = 'object' }
--- Marks a table to be written as a JSON object even when it is empty (an unmarked empty table is []).
function json.object(t)
  return setmetatable(t or {}, OBJECT_MT)
end

local ESCAPES = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
local function escapeChar(c)
  return ESCAPES[c] or sformat('\\u%04x', sbyte(c))
end
local function encodeString(s)
  if not sfind(s, '[%c"\\]') then return '"' .. s .. '"' end
  return '"' .. sgsub(s, '[%c"\\]', escapeChar) .. '"'
end

local function encodeNumber(n)
  if mtype(n) == 'integer' then return sformat('%d', n) end
  if n ~= n or n == mhuge or n == -mhuge then error('json.encode: cannot encode ' .. rawtostring(n) .. ' (not a JSON number)', 0) end
  local s
  for precision = 14, 17 do
    s = sformat('%.' .. precision .. 'g', n)
    if tonumber(s) == n then break end
  end
  -- A float keeps a fraction or exponent so that decoding it gives a float again.
  if not sfind(s, '[.eEn]') then s = s .. '.0' end
  -- exponents as JavaScript writes them: 1e-7, not 1e-07
  return (sgsub(s, 'e([-+])0*(%d)', 'e%1%2'))
end

local encodeValue
local function encodeTable(t, out, depth, seen)
  if seen[t] then error('json.encode: circular reference', 0) end
  if depth > LIMITS.jsonDepth then error('json.encode: nesting deeper than ' .. LIMITS.jsonDepth, 0) end
  seen[t] = true
  local count, strings, others = 0, 0, 0
  for k in rawnext, t do
    count = count + 1
    if rawtype(k) == 'string' then strings = strings + 1
    elseif mtype(k) == 'integer' and k >= 1 then others = others + 0
    else others = others + 1 end
  end
  local mt = getmetatable(t)
  local asObject = rawtype(mt) == 'table' and rawget(mt, '__jsontype') == 'object'
  if strings == 0 and others == 0 and not asObject then
    -- every key an integer >= 1: an array, if they are exactly 1..count
    for i = 1, count do
      if rawget(t, i) == nil then error('json.encode: sparse array (a table with integer keys that are not 1..n)', 0) end
    end
    out[#out + 1] = '['
    for i = 1, count do
      if i > 1 then out[#out + 1] = ',' end
      encodeValue(rawget(t, i), out, depth + 1, seen)
    end
    out[#out + 1] = ']'
  else
    if strings ~= count then error('json.encode: a table with mixed or non-string keys cannot be a JSON object', 0) end
    local keys = sortedKeys(t)
    local n = #out + 1
    out[n] = '{'
    for i = 1, count do
      local k = keys[i]
      local v = rawget(t, k)
      local key = (i > 1 and ',' or '') .. encodeString(k) .. ':'
      -- strings and integers written here, without a call per value
      if mtype(v) == 'integer' then
        n = n + 1
        out[n] = key .. sformat('%d', v)
      elseif rawtype(v) == 'string' and not sfind(v, '[%c"\\]') then
        n = n + 1
        out[n] = key .. '"' .. v .. '"'
      else
        out[n + 1] = key
        encodeValue(v, out, depth + 1, seen)
        n = #out
      end
    end
    out[n + 1] = '}'
  end
  seen[t] = nil
end

encodeValue = function(v, out, depth, seen)
  local t = rawtype(v)
  if t == 'string' then out[#out + 1] = encodeString(v)
  elseif t == 'number' then out[#out + 1] = encodeNumber(v)
  elseif t == 'boolean' then out[#out + 1] = v and 'true' or 'false'
  elseif v == nil or v == json.null then out[#out + 1] = 'null'
  elseif t == 'table' then encodeTable(v, out, depth, seen)
  else error('json.encode: cannot encode a ' .. t, 0) end
end

--- JSON text of a Lua value: objects with sorted keys, a table with keys 1..n as an array, an empty
--- table as [] (json.object({}) for {}), integers as integers, floats round-trippable.
function json.encode(v)
  local out = {}
  encodeValue(v, out, 1, {})
  return tconcat(out)
end

-- json.null: a value that encodes as null (decode gives nil for null, as aos's json does).
json.null = setmetatable({}, { __tostring = function() return 'null' end, __jsontype = 'null' })

local function decodeError(str, pos, what)
  local line, col = 1, 1
  for i = 1, pos - 1 do
    if sbyte(str, i) == 10 then line, col = line + 1, 1 else col = col + 1 end
    if i > 1e6 then break end
  end
  error(sformat('json.decode: %s at line %d column %d', what, line, col), 0)
end

local function skipSpace(str, pos)
  local b = sbyte(str, pos)
  if b == nil or b > 32 then return pos end
  local _, e = sfind(str, '^[ \t\r\n]*', pos)
  return e + 1
end

local function codepointUtf8(cp)
  return utf8.char(cp)
end

local decodeValue

local function decodeString(str, pos)
  -- pos is at the opening quote; the common case is a string without escapes
  local q = sfind(str, '["\\%c]', pos + 1)
  if q and sbyte(str, q) == 34 then return ssub(str, pos + 1, q - 1), q + 1 end
  local parts, n = {}, 0
  local i = pos + 1
  while true do
    local s = sfind(str, '["\\%c]', i)
    if not s then decodeError(str, pos, 'unterminated string') end
    if s > i then n = n + 1; parts[n] = ssub(str, i, s - 1) end
    local c = sbyte(str, s)
    if c == 34 then -- "
      return tconcat(parts), s + 1
    elseif c == 92 then -- backslash
      local e = ssub(str, s + 1, s + 1)
      if e == 'u' then
        local hex = smatch(str, '^%x%x%x%x', s + 2)
        if not hex then decodeError(str, s, 'bad \\u escape') end
        local cp = tonumber(hex, 16)
        local after = s + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local low = smatch(str, '^\\u([dD][c-fC-F]%x%x)', after)
          if low then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (tonumber(low, 16) - 0xDC00)
            after = after + 6
          else
            cp = 0xFFFD -- a lone surrogate becomes U+FFFD
          end
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          cp = 0xFFFD
        end
        n = n + 1; parts[n] = codepointUtf8(cp)
        i = after
      else
        local map = { ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' }
        local r = map[e]
        if not r then decodeError(str, s, 'bad escape \\' .. e) end
        n = n + 1; parts[n] = r
        i = s + 2
      end
    else
      decodeError(str, s, 'control character in string')
    end
  end
end

local function decodeNumber(str, pos)
  local s, e = sfind(str, '^-?%d+', pos)
  if not s then decodeError(str, pos, 'unexpected character') end
  local first = sbyte(str, pos) == 45 and pos + 1 or pos
  if sbyte(str, first) == 48 and e > first then decodeError(str, pos, 'leading zero in number') end
  local isFloat = false
  local b = sbyte(str, e + 1)
  if b == 46 then -- .
    local fs, fe = sfind(str, '^%.%d+', e + 1)
    if not fs then decodeError(str, e + 1, 'bad number') end
    e, isFloat = fe, true
    b = sbyte(str, e + 1)
  end
  if b == 101 or b == 69 then -- e E
    local xs, xe = sfind(str, '^[eE][-+]?%d+', e + 1)
    if not xs then decodeError(str, e + 1, 'bad number') end
    e, isFloat = xe, true
  end
  local v = tonumber(ssub(str, pos, e))
  if isFloat then v = v + 0.0 end
  return v, e + 1
end

local function decodeArray(str, pos, depth)
  if depth > LIMITS.jsonDepth then decodeError(str, pos, 'nesting deeper than ' .. LIMITS.jsonDepth) end
  local arr, n = {}, 0
  pos = skipSpace(str, pos + 1)
  if ssub(str, pos, pos) == ']' then return arr, pos + 1 end
  while true do
    local v
    v, pos = decodeValue(str, pos, depth)
    n = n + 1
    arr[n] = v
    pos = skipSpace(str, pos)
    local c = sbyte(str, pos)
    if c == 93 then return arr, pos + 1 end
    if c ~= 44 then decodeError(str, pos, "expected ',' or ']'") end
    pos = skipSpace(str, pos + 1)
  end
end

local function decodeObject(str, pos, depth)
  if depth > LIMITS.jsonDepth then decodeError(str, pos, 'nesting deeper than ' .. LIMITS.jsonDepth) end
  local obj = {}
  pos = skipSpace(str, pos + 1)
  if ssub(str, pos, pos) == '}' then return obj, pos + 1 end
  while true do
    local k, v
    -- the common case in one step: a key without escapes, the colon and the spaces around it
    local _, e, key = sfind(str, '^"([^"\\%c]*)"[ \t\r\n]*:[ \t\r\n]*', pos)
    if e then
      k, pos = key, e + 1
    else
      if sbyte(str, pos) ~= 34 then decodeError(str, pos, 'expected a string key') end
      k, pos = decodeString(str, pos)
      pos = skipSpace(str, pos)
      if sbyte(str, pos) ~= 58 then decodeError(str, pos, "expected ':'") end
      pos = skipSpace(str, pos + 1)
    end
    local b = sbyte(str, pos)
    if b == 45 or (b and b >= 48 and b <= 57) then
      -- a number straight after the colon, the common case of a map of amounts
      local _, ne, digits, sep = sfind(str, '^(-?[1-9]%d*)[ \t\r\n]*([,}])', pos)
      if ne and #digits < 19 then
        obj[k] = tonumber(digits)
        if sep == '}' then return obj, ne + 1 end
        pos = skipSpace(str, ne + 1)
        goto continue
      end
    end
    v, pos = decodeValue(str, pos, depth)
    obj[k] = v
    pos = skipSpace(str, pos)
    local c = sbyte(str, pos)
    if c == 125 then return obj, pos + 1 end
    if c ~= 44 then decodeError(str, pos, "expected ',' or '}'") end
    pos = skipSpace(str, pos + 1)
    ::continue::
  end
end

decodeValue = function(str, pos, depth)
  pos = skipSpace(str, pos)
  local b = sbyte(str, pos)
  if b == 34 then return decodeString(str, pos) end -- "
  if b == 123 then return decodeObject(str, pos, depth + 1) end -- {
  if b == 91 then return decodeArray(str, pos, depth + 1) end -- [
  if b == nil then decodeError(str, pos, 'unexpected end of input') end
  if b == 116 and ssub(str, pos, pos + 3) == 'true' then return true, pos + 4 end
  if b == 102 and ssub(str, pos, pos + 4) == 'false' then return false, pos + 5 end
  if b == 110 and ssub(str, pos, pos + 3) == 'null' then return nil, pos + 4 end
  return decodeNumber(str, pos)
end

--- Lua value of a JSON text (null → nil, numbers without fraction/exponent → integers when they fit).
function json.decode(str)
  if rawtype(str) ~= 'string' then error('json.decode: expected a string, got ' .. rawtype(str), 2) end
  local v, pos = decodeValue(str, 1, 0)
  pos = skipSpace(str, pos)
  if pos <= #str then decodeError(str, pos, 'trailing characters after the JSON value') end
  return v
end

loaded.json = json
loaded['.json'] = json
_G.json = json -- aos has it through require('json') only; a global as well does no harm

---------------------------------------------------------------------------------------------------
-- Output: print and the per-message text buffer.
---------------------------------------------------------------------------------------------------
local outbuf = { parts = {}, size = 0, dropped = 0 }

local function resetOutput()
  outbuf.parts, outbuf.size, outbuf.dropped = {}, 0, 0
end

local function appendOutput(text)
  if outbuf.dropped > 0 then outbuf.dropped = outbuf.dropped + #text return end
  local room = LIMITS.output - outbuf.size
  if #text <= room then
    outbuf.parts[#outbuf.parts + 1] = text
    outbuf.size = outbuf.size + #text
    return
  end
  -- cut at a UTF-8 character boundary
  local cut = room
  while cut > 0 do
    local b = sbyte(text, cut + 1)
    if b == nil or b < 0x80 or b >= 0xC0 then break end
    cut = cut - 1
  end
  if cut > 0 then outbuf.parts[#outbuf.parts + 1] = ssub(text, 1, cut) end
  outbuf.size = outbuf.size + cut
  outbuf.dropped = #text - cut
end

local function outputText()
  local text = tconcat(outbuf.parts)
  if outbuf.dropped > 0 then
    text = text .. sformat('\n[output truncated: %d bytes over the %d-byte limit dropped]\n', outbuf.dropped, LIMITS.output)
  end
  return text
end

local function formatResult(v)
  if rawtype(v) == 'string' then return v end
  if rawtype(v) == 'table' and not hasMetafield(v, '__tostring') then
    local ok, text = pcall(json.encode, v)
    if ok then return text end
  end
  return detTostring(v)
end

function print(...)
  local n = select('#', ...)
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    parts[i] = rawtype(v) == 'table' and formatResult(v) or detTostring(v)
  end
  appendOutput(tconcat(parts, '\t') .. '\n')
end

---------------------------------------------------------------------------------------------------
-- utils (a small part of aos's .utils; functions curry like aos's: utils.map(f)(t) == utils.map(f, t))
---------------------------------------------------------------------------------------------------
local utils = { _version = 'verity-1' }

local function curry2(f)
  return function(a, ...)
    if select('#', ...) == 0 then return function(b) return f(a, b) end end
    return f(a, ...)
  end
end

--- Whether a value matches a pattern as aos's matchesPattern: '_' matches anything present, a
--- function is called with (value, msg), a string with Lua pattern characters is a Lua pattern (else
--- an exact match), a table matches when any of its entries does.
function utils.matchesPattern(pattern, value, msg)
  if not pattern then return false end
  if pattern == '_' then return true end
  if rawtype(pattern) == 'function' then
    return pattern(value, msg) and true or false
  end
  if rawtype(pattern) == 'string' then
    if rawtype(value) ~= 'string' then return false end
    if sfind(pattern, '[%^%$%(%)%%%.%[%]%*%+%?]') then
      -- the process's pattern: string.match as the process has it (metered, lua/patterns.lua)
      return string.match(value, pattern) ~= nil
    end
    return value == pattern
  end
  if rawtype(pattern) == 'table' then
    for _, sub in detPairs(pattern) do
      if utils.matchesPattern(sub, value, msg) then return true end
    end
  end
  return false
end

--- Whether a message matches a spec as aos's matchesSpec. A function spec's own result is returned.
function utils.matchesSpec(msg, spec)
  if rawtype(spec) == 'function' then return spec(msg) end
  if rawtype(spec) == 'table' then
    for key, pattern in detPairs(spec) do
      local value = msg[key]
      if value == nil and rawtype(msg.Tags) == 'table' then value = msg.Tags[key] end
      if value == nil then return false end
      if not utils.matchesPattern(pattern, value, msg) then return false end
    end
    return true
  end
  if rawtype(spec) == 'string' then return msg.Action ~= nil and msg.Action == spec end
  return false
end

utils.map = curry2(function(f, t)
  local r = {}
  for i, v in ipairs(t) do r[i] = f(v, i) end
  return r
end)
utils.filter = curry2(function(f, t)
  local r = {}
  for _, v in ipairs(t) do if f(v) then r[#r + 1] = v end end
  return r
end)
utils.find = curry2(function(f, t)
  for _, v in ipairs(t) do if f(v) then return v end end
  return nil
end)
utils.includes = curry2(function(x, t)
  for _, v in ipairs(t) do if v == x then return true end end
  return false
end)
function utils.reduce(f, initial, t)
  if t == nil then return function(tt) return utils.reduce(f, initial, tt) end end
  local acc = initial
  for i, v in ipairs(t) do acc = f(acc, v, i) end
  return acc
end
function utils.keys(t)
  local keys = sortedKeys(t)
  return keys
end
function utils.values(t)
  local keys, n = sortedKeys(t)
  local r = {}
  for i = 1, n do r[i] = t[keys[i]] end
  return r
end
utils.propEq = function(name, value, obj)
  if obj == nil then return function(o) return o[name] == value end end
  return obj[name] == value
end

loaded['.utils'] = utils
Utils = utils

---------------------------------------------------------------------------------------------------
-- Handlers
---------------------------------------------------------------------------------------------------
local handlers = { _version = 'verity-1', list = {}, onceNonce = 0 }

local function findHandler(name)
  for i, h in ipairs(handlers.list) do
    if h.name == name then return i end
  end
  return nil
end

local function checkMaxRuns(maxRuns)
  if maxRuns == nil or maxRuns == 'inf' then return nil end
  if mtype(maxRuns) == nil or maxRuns < 1 then error('Handlers: maxRuns must be a positive number or "inf"', 3) end
  return maxRuns
end

-- (name, pattern, handle, maxRuns), or (name, handle): pattern = name (matches the Action tag)
local function addArgs(name, pattern, handle, maxRuns)
  if rawtype(name) ~= 'string' then error('Handlers: the handler name MUST be a string', 3) end
  if handle == nil and rawtype(pattern) == 'function' then
    handle, pattern = pattern, name
  end
  if rawtype(pattern) ~= 'function' and rawtype(pattern) ~= 'string' and rawtype(pattern) ~= 'table' then
    error('Handlers: the pattern MUST be a function, a string or a table', 3)
  end
  if rawtype(handle) ~= 'function' then error('Handlers: the handle MUST be a function', 3) end
  return { name = name, pattern = pattern, handle = handle, maxRuns = checkMaxRuns(maxRuns) }
end

local function place(entry, where)
  local idx = findHandler(entry.name)
  if idx then
    handlers.list[idx] = entry -- same name: replaced in place
  elseif where == 'front' then
    tinsert(handlers.list, 1, entry)
  else
    handlers.list[#handlers.list + 1] = entry
  end
  return #handlers.list
end

--- Adds a handler at the end (or replaces the one with this name where it stands).
function handlers.add(name, pattern, handle, maxRuns)
  return place(addArgs(name, pattern, handle, maxRuns), 'back')
end
--- Same as add.
function handlers.append(name, pattern, handle, maxRuns)
  return place(addArgs(name, pattern, handle, maxRuns), 'back')
end
--- Adds a handler at the front (or replaces the one with this name where it stands).
function handlers.prepend(name, pattern, handle, maxRuns)
  return place(addArgs(name, pattern, handle, maxRuns), 'front')
end

--- A handler that runs once, then is removed. once(pattern, handle) names it itself. Prepended, as aos does.
function handlers.once(name, pattern, handle)
  if rawtype(name) ~= 'string' then
    handlers.onceNonce = handlers.onceNonce + 1
    name, pattern, handle = '_once_' .. handlers.onceNonce, name, pattern
  end
  return place(addArgs(name, pattern, handle, 1), 'front')
end

local function relative(anchor, offset)
  if rawtype(anchor) ~= 'string' then error('Handlers: the handler name MUST be a string', 3) end
  return {
    add = function(name, pattern, handle, maxRuns)
      local entry = addArgs(name, pattern, handle, maxRuns)
      local existing = findHandler(entry.name)
      if existing then tremove(handlers.list, existing) end
      local idx = findHandler(anchor)
      if idx then tinsert(handlers.list, idx + offset, entry) else handlers.list[#handlers.list + 1] = entry end
      return #handlers.list
    end,
  }
end
--- Handlers.before(name).add(...) inserts just before the named handler (at the end if there is none).
function handlers.before(name) return relative(name, 0) end
--- Handlers.after(name).add(...) inserts just after the named handler (at the end if there is none).
function handlers.after(name) return relative(name, 1) end

function handlers.remove(name)
  if rawtype(name) ~= 'string' then error('Handlers: name MUST be a string', 2) end
  local idx = findHandler(name)
  if idx then tremove(handlers.list, idx) end
end

local function notSupported(what)
  return function()
    error(what .. ' is not available on Verity: a process cannot wait inside a message; add a handler for the reply instead', 2)
  end
end
handlers.receive = notSupported('Handlers.receive')
Receive = notSupported('Receive')

-- The running handler's name, so that an error can say where it happened.
local running = { name = nil }

local function normaliseMatch(match)
  local t = rawtype(match)
  if t == 'boolean' then return match and -1 or 0 end
  if t == 'string' then
    if match == 'continue' then return 1 end
    if match == 'break' then return -1 end
    return 0
  end
  if t == 'number' then return match end
  error('Pattern result is not valid, it MUST be string, number, or boolean', 0)
end

local defaultHandle -- set below (Inbox)

--- Runs the matching handlers in list order: a match of -1 / true / "break" runs the handler and
--- stops, 1 / "continue" runs it and goes on, 0 / false / "skip" skips it. A message no handler
--- handled (broke on) goes to the _default handler: the process's own if it added one, else Inbox.
function handlers.evaluate(msg, env)
  if rawtype(msg) ~= 'table' then error('msg is not valid', 2) end
  if rawtype(env) ~= 'table' then error('env is not valid', 2) end
  local handled = false
  -- A snapshot of the list: handlers added while this message runs wait for the next message;
  -- one removed by an earlier handler of this message does not run.
  local snapshot = { tunpack(handlers.list) }
  for _, h in ipairs(snapshot) do
    local idx = findHandler(h.name)
    if h.name ~= '_default' and idx and handlers.list[idx] == h then
      running.name = h.name
      local match = normaliseMatch(utils.matchesSpec(msg, h.pattern))
      if match ~= 0 then
        if match < 0 then handled = true end
        if h.maxRuns ~= nil then
          h.maxRuns = h.maxRuns - 1
          if h.maxRuns <= 0 then tremove(handlers.list, idx) end
        end
        h.handle(msg, env)
        if match < 0 then break end
      end
    end
  end
  running.name = nil
  if not handled then
    local idx = findHandler('_default')
    running.name = '_default'
    if idx then handlers.list[idx].handle(msg, env) else defaultHandle(msg, env) end
    running.name = nil
  end
end

handlers.utils = {}
function handlers.utils.hasMatchingTag(name, value)
  return function(msg) return rawtype(msg.Tags) == 'table' and msg.Tags[name] == value end
end
function handlers.utils.hasMatchingTagOf(name, values)
  return function(msg)
    for _, v in ipairs(values) do
      if rawtype(msg.Tags) == 'table' and msg.Tags[name] == v then return true end
    end
    return false
  end
end
function handlers.utils.hasMatchingData(value)
  return function(msg) return msg.Data == value end
end
function handlers.utils.reply(input)
  return function(msg)
    if rawtype(input) == 'string' then msg.reply({ Data = input }) else msg.reply(input) end
  end
end
--- Turns a pattern that breaks into one that continues.
function handlers.utils.continue(pattern)
  return function(msg)
    local match = utils.matchesSpec(msg, pattern)
    if match == true or match == -1 or match == 'break' then return 1 end
    return match
  end
end

loaded['.handlers'] = handlers
loaded['.handlers-utils'] = handlers.utils
Handlers = handlers

---------------------------------------------------------------------------------------------------
-- ao
---------------------------------------------------------------------------------------------------
local ao = { _version = 'verity-1', id = '', _module = '', authorities = {}, reference = 0, env = {} }

local function newOutbox()
  return { Messages = {}, Spawns = {}, Assignments = {} }
end
ao.outbox = newOutbox()

local function padZero32(n)
  local s = sformat('%d', n)
  return srep('0', 32 - #s) .. s
end

-- A tag value as the outbox carries it: a string.
local function tagValue(v, name)
  local t = rawtype(v)
  if t == 'string' then return v end
  if t == 'number' then return mtype(v) == 'integer' and sformat('%d', v) or rawtostring(v) end
  if t == 'boolean' then return v and 'true' or 'false' end
  if t == 'table' then return json.encode(v) end
  error('tag ' .. rawtostring(name) .. ' has a ' .. t .. ' value; tag values are strings', 0)
end

local function dataValue(v)
  if v == nil then return nil end
  local t = rawtype(v)
  if t == 'string' then return v end
  if t == 'table' then return json.encode(v) end
  if t == 'number' or t == 'boolean' then return tagValue(v, 'Data') end
  error('Data is a ' .. t .. '; it must be a string (or a table, sent as JSON)', 0)
end

local ROOT_NOT_TAGS = { Target = true, Data = true, Anchor = true, Tags = true, From = true }

-- The tag list of an outgoing message: `first` tags, then the message's own fields that are not
-- Target/Data/Anchor/Tags/From (sorted by name), then msg.Tags (in order when a list, sorted by name when a map).
local function buildTags(msg, first)
  local tags = {}
  for _, t in ipairs(first) do tags[#tags + 1] = t end
  local keys, n = sortedKeys(msg)
  for i = 1, n do
    local k = keys[i]
    local v = rawget(msg, k)
    if rawtype(k) == 'string' and not ROOT_NOT_TAGS[k] and rawtype(v) ~= 'function' then
      tags[#tags + 1] = { name = k, value = tagValue(v, k) }
    end
  end
  local mt = msg.Tags
  if rawtype(mt) == 'table' then
    if #mt > 0 or rawnext(mt) == nil then
      for _, o in ipairs(mt) do
        if rawtype(o) ~= 'table' or rawtype(o.name) ~= 'string' then error('Tags: each entry of a tag list is {name = <string>, value = <string>}', 0) end
        tags[#tags + 1] = { name = o.name, value = tagValue(o.value, o.name) }
      end
    else
      local tkeys, tn = sortedKeys(mt)
      for i = 1, tn do
        local k = tkeys[i]
        if rawtype(k) ~= 'string' then error('Tags: a tag map has string names', 0) end
        tags[#tags + 1] = { name = k, value = tagValue(rawget(mt, k), k) }
      end
    end
  end
  return tags
end

local function cannotWait(what)
  return function() error(what .. ' is not available on Verity: a process cannot wait inside a message; add a handler for the reply (match its X-Reference) instead', 2) end
end

--- Queues a message: {Target = id, Data = text, Tags = {...}, AnyTag = value}. Each send takes the
--- next reference number (a Reference tag; the Anchor is that number zero-padded to 32 digits).
function ao.send(msg)
  if rawtype(msg) ~= 'table' then error('ao.send: msg should be a table', 2) end
  if rawtype(msg.Target) ~= 'string' then error('ao.send: msg.Target must be a process id (a string)', 2) end
  ao.reference = ao.reference + 1
  local ref = sformat('%d', ao.reference)
  local message = {
    Target = msg.Target,
    Data = dataValue(msg.Data) or '',
    Anchor = padZero32(ao.reference),
    Tags = buildTags(msg, { { name = 'Reference', value = ref } }),
  }
  local queued = { Target = message.Target, Data = message.Data, Anchor = message.Anchor, Tags = message.Tags }
  ao.outbox.Messages[#ao.outbox.Messages + 1] = queued
  message.Reference = ref
  message.onReply = cannotWait('onReply')
  message.receive = cannotWait('receive')
  return message
end

--- Queues a spawn of `module` (a module id) with msg's Data and tags; Data defaults to "NODATA" as in aos.
function ao.spawn(module, msg)
  if rawtype(module) ~= 'string' then error('ao.spawn: a module id is required', 2) end
  msg = msg or {}
  if rawtype(msg) ~= 'table' then error('ao.spawn: msg must be a table', 2) end
  ao.reference = ao.reference + 1
  local ref = sformat('%d', ao.reference)
  local spawn = {
    Data = dataValue(msg.Data) or 'NODATA',
    Anchor = padZero32(ao.reference),
    Tags = buildTags(msg, { { name = 'Module', value = module }, { name = 'Reference', value = ref } }),
  }
  ao.outbox.Spawns[#ao.outbox.Spawns + 1] = { Data = spawn.Data, Anchor = spawn.Anchor, Tags = spawn.Tags }
  spawn.Reference = ref
  spawn.onReply = cannotWait('onReply')
  spawn.receive = cannotWait('receive')
  return spawn
end

--- Queues an assignment: {Processes = {id, ...}, Message = id}.
function ao.assign(assignment)
  if rawtype(assignment) ~= 'table' then error('ao.assign: assignment should be a table', 2) end
  if rawtype(assignment.Processes) ~= 'table' then error('ao.assign: Processes should be a table', 2) end
  if rawtype(assignment.Message) ~= 'string' then error('ao.assign: Message should be a string', 2) end
  local processes = {}
  for i, p in ipairs(assignment.Processes) do
    if rawtype(p) ~= 'string' then error('ao.assign: each of Processes is a process id (a string)', 2) end
    processes[i] = p
  end
  ao.outbox.Assignments[#ao.outbox.Assignments + 1] = { Processes = processes, Message = assignment.Message }
end

--- Trusted: sent by the process's owner (From or Owner is Owner), or by one of its Authority tags.
function ao.isTrusted(msg)
  if Owner ~= nil and (msg.From == Owner or msg.Owner == Owner) then return true end
  for _, a in ipairs(ao.authorities) do
    if msg.From == a or msg.Owner == a then return true end
  end
  return false
end

--- Same as print(txt).
function ao.log(txt)
  print(txt)
end

function ao.clearOutbox()
  ao.outbox = newOutbox()
end

--- The outbox so far as aos's ao.result gives it.
function ao.result(result)
  result = result or {}
  if result.Error then return { Error = result.Error } end
  return {
    Output = result.Output or { data = outputText(), prompt = Prompt() },
    Messages = ao.outbox.Messages,
    Spawns = ao.outbox.Spawns,
    Assignments = ao.outbox.Assignments,
  }
end

-- Fields a tag may not overwrite when copied onto the message, and that msg.forward does not carry.
local NON_EXTRACTABLE = {
  ['Data-Protocol'] = true, Variant = true, ['From-Process'] = true, ['From-Module'] = true, Type = true,
  From = true, Owner = true, Anchor = true, Target = true, Data = true, Tags = true, TagArray = true,
  Id = true, Signature = true, Nonce = true, Timestamp = true, ['Block-Height'] = true, ['Hash-Chain'] = true,
  Cron = true, Epoch = true, ['Read-Only'] = true, ['Forwarded-By'] = true, Module = true,
}
local NON_FORWARDABLE = {
  ['Data-Protocol'] = true, Variant = true, ['From-Process'] = true, ['From-Module'] = true, Type = true,
  From = true, Owner = true, Anchor = true, Target = true, Tags = true, TagArray = true, ['Hash-Chain'] = true,
  Timestamp = true, Nonce = true, Epoch = true, Signature = true, ['Forwarded-By'] = true, ['Pushed-For'] = true,
  ['Read-Only'] = true, Cron = true, ['Block-Height'] = true, Reference = true, Id = true, ['Reply-To'] = true,
  Module = true,
}

--- A copy of msg with only what may be forwarded (its tags copied at the root and Data).
function ao.sanitize(msg)
  local copy = {}
  for k, v in detPairs(msg) do
    if rawtype(k) == 'string' and not NON_FORWARDABLE[k] and rawtype(v) ~= 'function' then copy[k] = v end
  end
  return copy
end

-- A name → value table of a tag list: the first value of a repeated name wins (aos's Tab).
local function tagMap(list)
  local map = {}
  if rawtype(list) ~= 'table' then return map end
  for _, o in ipairs(list) do
    if rawtype(o) == 'table' and o.name ~= nil and map[o.name] == nil then map[o.name] = o.value end
  end
  return map
end

--- msg.TagArray keeps the tag list, msg.Tags becomes a name → value map, and each tag is copied onto
--- msg (msg.Action, msg['X-Reference']) unless its name is a message field.
function ao.normalize(msg)
  local list = msg.Tags
  if rawtype(list) ~= 'table' then list = {} end
  msg.TagArray = list
  msg.Tags = tagMap(list)
  for _, o in ipairs(list) do
    if rawtype(o) == 'table' and rawtype(o.name) == 'string' and not NON_EXTRACTABLE[o.name] then
      msg[o.name] = o.value -- the last value of a repeated name wins here, as in aos
    end
  end
  return msg
end

function ao.init(env)
  ao.id = env.Process and env.Process.Id or ''
  ao._module = env.Module and env.Module.Id or ''
  local processTags = env.Process and env.Process.Tags or {}
  env.Process.TagArray = processTags
  env.Process.Tags = tagMap(processTags)
  if env.Module then
    env.Module.TagArray = env.Module.Tags or {}
    env.Module.Tags = tagMap(env.Module.TagArray)
  end
  local authorities = {}
  for _, o in ipairs(processTags) do
    if o.name == 'Authority' then
      for a in string.gmatch(o.value, '[^,%s]+') do authorities[#authorities + 1] = a end
    end
  end
  ao.authorities = authorities
  ao.env = env
end

loaded.ao = ao
loaded['.ao'] = ao
_G.ao = ao

---------------------------------------------------------------------------------------------------
-- Globals aos gives process code.
---------------------------------------------------------------------------------------------------
Inbox = Inbox or {}

function Prompt()
  return 'aos> '
end

-- What Send and Spawn return shows in an Eval's Output as aos's words, not as a table.
local SENT = { __tostring = function() return 'message added to outbox' end }
local SPAWNED = { __tostring = function() return 'spawn process request' end }

function Send(msg)
  return setmetatable(ao.send(msg), SENT)
end

function Spawn(module, msg)
  return setmetatable(ao.spawn(module, msg or {}), SPAWNED)
end

function Assign(assignment)
  ao.assign(assignment)
  return 'assignment added to outbox'
end

local function insertInbox(msg)
  Inbox[#Inbox + 1] = msg
  local over = #Inbox - LIMITS.inbox
  if over > 0 then
    -- drop the oldest: shift down once, not one table.remove per dropped message
    local n = #Inbox
    for i = 1, n - over do Inbox[i] = Inbox[i + over] end
    for i = n, n - over + 1, -1 do Inbox[i] = nil end
  end
end

defaultHandle = function(msg)
  insertInbox(msg)
  local action = msg.Action and (' Action = ' .. detTostring(msg.Action)) or ''
  print('New Message From ' .. detTostring(msg.From) .. ':' .. action)
end

---------------------------------------------------------------------------------------------------
-- The entry point.
---------------------------------------------------------------------------------------------------

-- Two 64-bit integers from a string (FNV-1a with two offsets), for math.randomseed.
local function seedOf(s)
  local a, b = -3750763034362895579, 1469598103934665603 -- 0xcbf29ce484222325 and another offset
  for i = 1, #s do
    local c = sbyte(s, i)
    a = (a ~ c) * 1099511628211
    b = (b ~ c) * 1099511628211 + i
  end
  return a, b
end

local function errorText(e)
  if rawtype(e) == 'string' then return e end
  if rawtype(e) == 'table' then
    local ok, text = pcall(json.encode, e)
    if ok then return text end
  end
  return detTostring(e)
end

--- Runs Lua text as the owner's Eval does: as an expression first (its value is shown), else as a chunk.
local function evalLua(code, chunkname)
  if rawtype(code) ~= 'string' then error('Eval: Data must be Lua source text', 0) end
  local fn = load('return ' .. code, chunkname, 't', _G)
  if not fn then
    local err
    fn, err = load(code, chunkname, 't', _G)
    if not fn then error(err, 0) end
  end
  local results = table.pack(fn())
  if results.n > 0 and results[1] ~= nil then appendOutput(formatResult(results[1])) end
end

local function isOwner(msg)
  return Owner ~= nil and msg.From == Owner
end

local function handleMessage(messageJson, envJson)
  local msg = json.decode(messageJson)
  local env = json.decode(envJson)
  if rawtype(msg) ~= 'table' or rawtype(env) ~= 'table' or rawtype(env.Process) ~= 'table' then
    error('__verity_handle: the message and env must be JSON objects', 0)
  end
  current.timestamp = msg.Timestamp or 0
  math.randomseed(seedOf(rawtype(msg['Hash-Chain']) == 'string' and msg['Hash-Chain'] or (msg.Id or '')))
  -- What the module printed as it loaded is the first message's (the spawn's) Output, as aos shows it.
  if ao._booted then resetOutput() end
  ao.clearOutbox()
  ao.init(env)
  if not ao._booted then
    ao._booted = true
    if Owner == nil then Owner = env.Process.Owner end
    if Name == nil then Name = env.Process.Tags.Name or 'aos' end
  end

  ao.normalize(msg)
  msg.reply = function(replyMsg)
    if rawtype(replyMsg) ~= 'table' then error('msg.reply: the reply should be a table', 2) end
    replyMsg.Target = msg['Reply-To'] or replyMsg.Target or msg.From
    replyMsg['X-Reference'] = msg['X-Reference'] or msg.Reference
    replyMsg['X-Origin'] = msg['X-Origin']
    return ao.send(replyMsg)
  end
  msg.forward = function(target, overrides)
    local copy = ao.sanitize(msg)
    for k, v in detPairs(overrides or {}) do copy[k] = v end
    copy.Target = target
    copy['Reply-To'] = msg['Reply-To'] or msg.From
    copy['X-Reference'] = msg['X-Reference'] or msg.Reference
    copy['X-Origin'] = msg['X-Origin'] or msg.From
    copy.reply, copy.forward = nil, nil
    return ao.send(copy)
  end

  if msg.Id ~= nil and msg.Id == ao.id then
    -- Slot 0: the process's own spawn message. With On-Boot = Data, its Data is run as Lua (aos's
    -- boot loader); nothing else runs and nothing is replied.
    if msg.Tags['On-Boot'] == 'Data' then evalLua(msg.Data, 'Boot') end
    return
  end
  if msg.Action == 'Eval' then
    if not isOwner(msg) then error('Eval is only for the process owner', 0) end
    evalLua(msg.Data, 'Eval')
    return
  end
  handlers.evaluate(msg, ao.env)
end

local function traceback(e)
  local where = running.name
  running.name = nil
  local text = errorText(e)
  if where then text = "handler '" .. where .. "': " .. text end
  return text
end

--- The runtime's entry point: one message in, one outcome JSON out.
function __verity_handle(messageJson, envJson)
  running.name = nil
  local ok, err = xpcall(handleMessage, traceback, messageJson, envJson)
  local outcome = {
    Messages = ok and ao.outbox.Messages or {},
    Spawns = ok and ao.outbox.Spawns or {},
    Assignments = ok and ao.outbox.Assignments or {},
    Output = { data = outputText(), prompt = Prompt() },
  }
  if not ok then
    -- one readable line
    local text = sgsub(rawtostring(err), '[\r\n]+', ' ')
    -- Lua's allocation failure (the runtime's memory limit), named as the runtime names it
    if text == 'not enough memory' then text = 'memory limit: not enough memory' end
    outcome.Error = text
  end
  ao.clearOutbox()
  resetOutput()
  local encoded, text = pcall(json.encode, outcome)
  if encoded then return text end
  return json.encode({ Messages = {}, Spawns = {}, Assignments = {}, Output = { data = '', prompt = Prompt() }, Error = 'outcome: ' .. errorText(text) })
end

return true
