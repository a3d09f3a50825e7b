-- verity: the Verity client for Lua (aos) processes. `local verity = require('verity')`.
--
-- A dApp process asks Verity's coordinator for inference and gets the verified answer back in a
-- callback, in the style of Apus's Lua client:
--
--   verity.configure({ coordinator = '<id>', token = '<id>' })   -- or spawn tags Verity-Coordinator / Verity-Token
--   verity.deposit('5000', function(err, res) ... end)           -- token Transfer to the coordinator, X-Action=Deposit
--   local ref = verity.infer('Once upon a time', { max_tokens = 64, temperature = 0, seed = 7 }, function(err, res)
--     if err then print(err.code .. ' ' .. err.message) return end
--     print(res.data)                                             -- the text (res.result is the same)
--   end)
--   verity.getBalance(function(err, res) print(res.balance) end)
--   verity.getTaskStatus(ref, function(err, view) print(view.status) end)
--
-- The vocabulary (docs/network.md, docs/lua.md "The verity Lua client"): Infer → Infer-Accepted,
-- then Infer-Response (Status pending, then final; or Code/Message when refused or failed);
-- Balance → Balance-Response; Task → Task-Response / Task-Error; a deposit is a token Transfer
-- answered by the token's Debit-Notice (or Transfer-Error) and the coordinator's Deposit-Notice.
-- Every answer is matched by its X-Reference and taken only From the configured coordinator
-- (or token): a reply from anyone else never reaches a callback.
local json = require('json')

local verity = { _version = '1' }

--- Bounds: requests awaiting an answer, and ended requests kept for getTaskStatus.
verity.limits = { pending = 1000, recent = 1000 }

-- Kept in a global so that the pending callbacks survive the module being loaded again (an Eval
-- of the bundle): a Lua process's memory is kept between messages, closures included.
Verity_Client = Verity_Client or {
  config = {},
  counter = 0,
  pending = {},   -- X-Reference → { kind, callback, at, ... }
  count = 0,      -- entries in pending
  recent = {},    -- X-Reference → the last record of an ended infer request
  order = {},     -- X-Reference of recent entries, oldest first
  first = 1,
}
local S = Verity_Client

local ID = '^[A-Za-z0-9_-]+$'

local function isId(v)
  return type(v) == 'string' and #v == 43 and v:match(ID) ~= nil
end

local function processTag(name)
  local env = ao and ao.env
  local tags = env and env.Process and env.Process.Tags
  if type(tags) == 'table' then return tags[name] end
  return nil
end

--- The coordinator's process id: configured, else the process's Verity-Coordinator spawn tag.
function verity.coordinator()
  return S.config.coordinator or processTag('Verity-Coordinator')
end

--- The token's process id: configured, else the process's Verity-Token spawn tag.
function verity.token()
  return S.config.token or processTag('Verity-Token')
end

--- Sets the coordinator and token process ids, and optionally max_pending (1 .. 1000000).
function verity.configure(options)
  assert(type(options) == 'table', 'verity.configure: expected a table')
  for key in pairs(options) do
    if key ~= 'coordinator' and key ~= 'token' and key ~= 'max_pending' then error('verity.configure: unknown option ' .. tostring(key), 2) end
  end
  if options.coordinator ~= nil then
    if not isId(options.coordinator) then error('verity.configure: coordinator must be a process id (43 characters)', 2) end
    S.config.coordinator = options.coordinator
  end
  if options.token ~= nil then
    if not isId(options.token) then error('verity.configure: token must be a process id (43 characters)', 2) end
    S.config.token = options.token
  end
  if options.max_pending ~= nil then
    local n = options.max_pending
    if math.type(n) ~= 'integer' or n < 1 or n > 1000000 then error('verity.configure: max_pending must be an integer in 1..1000000', 2) end
    verity.limits.pending = n
    S.config.max_pending = n
  end
  return verity
end
if S.config.max_pending then verity.limits.pending = S.config.max_pending end

local function need(which)
  local id = which == 'coordinator' and verity.coordinator() or verity.token()
  if not isId(id) then
    error('verity: no ' .. which .. ' process: call verity.configure({ ' .. which .. ' = id }) or spawn with a Verity-' .. (which == 'coordinator' and 'Coordinator' or 'Token') .. ' tag', 3)
  end
  return id
end

-- The next counter value that no waiting request uses (a request may have chosen its own reference).
local function nextReference()
  repeat S.counter = S.counter + 1 until S.pending[tostring(S.counter)] == nil
  return tostring(S.counter)
end

local function failNow(callback, code, message, reference)
  if callback then callback({ code = code, message = message, reference = reference }, nil) end
  return nil
end

--- Adds a pending entry; false when the table is full.
local function track(reference, entry)
  if S.count >= verity.limits.pending then return false end
  entry.at = os.time()
  S.pending[reference] = entry
  S.count = S.count + 1
  return true
end

local function untrack(reference)
  if S.pending[reference] ~= nil then
    S.pending[reference] = nil
    S.count = S.count - 1
  end
end

local function remember(reference, record)
  if S.recent[reference] == nil then S.order[#S.order + 1] = reference end
  S.recent[reference] = record
  while #S.order - S.first + 1 > verity.limits.recent do
    S.recent[S.order[S.first]] = nil
    S.order[S.first] = nil
    S.first = S.first + 1
  end
end

local function full(callback, reference)
  return failNow(callback, 429, 'verity: ' .. verity.limits.pending .. ' requests are waiting for an answer (verity.limits.pending)', reference)
end

--- Number of requests waiting for an answer.
function verity.pending()
  return S.count
end

local function errorOf(msg, reference)
  return {
    code = tonumber(msg.Code) or msg.Code,
    message = msg.Message or msg.Status or 'refused',
    reference = reference,
    task = msg.Task,
    status = msg.Status,
    session = msg['X-Session'],
  }
end

local INFER_OPTIONS = { max_tokens = true, temperature = true, top_p = true, seed = true }
local REQUEST_OPTIONS = { model = true, redundancy = true, nodes = true, session = true, reference = true, wait = true, on_pending = true }

--- Sends an Infer to the coordinator; callback(err, res) once, with the final answer (or with the
--- first one when options.wait == 'pending'). Returns the request's reference (X-Reference), or
--- nil when it could not be sent (the callback then got the error already).
function verity.infer(prompt, options, callback)
  if type(options) == 'function' and callback == nil then options, callback = nil, options end
  options = options or {}
  if type(prompt) ~= 'string' or prompt == '' then error('verity.infer: the prompt must be a non-empty string', 2) end
  if type(options) ~= 'table' then error('verity.infer: options must be a table', 2) end
  if callback ~= nil and type(callback) ~= 'function' then error('verity.infer: callback must be a function', 2) end
  local x = json.object({})
  for key, value in pairs(options) do
    if INFER_OPTIONS[key] then x[key] = value
    elseif not REQUEST_OPTIONS[key] then error('verity.infer: unknown option ' .. tostring(key), 2) end
  end
  if options.wait ~= nil and options.wait ~= 'final' and options.wait ~= 'pending' then error("verity.infer: wait is 'final' or 'pending'", 2) end
  if options.on_pending ~= nil and type(options.on_pending) ~= 'function' then error('verity.infer: on_pending must be a function', 2) end
  local coordinator = need('coordinator')
  local reference = options.reference and tostring(options.reference) or nextReference()
  if S.pending[reference] ~= nil then error('verity.infer: request ' .. reference .. ' is already waiting for an answer', 2) end
  local entry = { kind = 'infer', callback = callback, wait = options.wait or 'final', on_pending = options.on_pending, session = options.session }
  if not track(reference, entry) then return full(callback, reference) end
  local msg = { Target = coordinator, Action = 'Infer', Data = prompt, ['X-Reference'] = reference, ['X-Options'] = json.encode(x) }
  if options.model then msg.Model = tostring(options.model) end
  if options.redundancy then msg.Redundancy = tostring(options.redundancy) end
  if options.nodes then msg.Nodes = type(options.nodes) == 'table' and table.concat(options.nodes, ',') or tostring(options.nodes) end
  if options.session then msg['X-Session'] = tostring(options.session) end
  ao.send(msg)
  remember(reference, { reference = reference, status = 'sent' })
  return reference
end

--- Moves `quantity` of the token from this process to its deposit at the coordinator (a token
--- Transfer with X-Action=Deposit); callback(err, { quantity, balance }) once the coordinator
--- counted it (its Deposit-Notice), or with the token's Transfer-Error.
function verity.deposit(quantity, callback)
  if math.type(quantity) == 'integer' then quantity = tostring(quantity) end
  if type(quantity) ~= 'string' or not quantity:match('^[1-9][0-9]*$') or #quantity > 38 then error('verity.deposit: quantity must be a whole number > 0 (at most 38 digits)', 2) end
  if callback ~= nil and type(callback) ~= 'function' then error('verity.deposit: callback must be a function', 2) end
  local token = need('token')
  local coordinator = need('coordinator')
  local reference = nextReference()
  if not track(reference, { kind = 'deposit', callback = callback, quantity = quantity }) then return full(callback, reference) end
  ao.send({ Target = token, Action = 'Transfer', Recipient = coordinator, Quantity = quantity, ['X-Action'] = 'Deposit', ['X-Reference'] = reference })
  return reference
end

--- This process's account at the coordinator: callback(err, { balance, earnings, stake, locked, account }),
--- amounts as decimal strings. `account` (optional) asks for another account.
function verity.getBalance(callback, account)
  if type(callback) ~= 'function' then error('verity.getBalance: callback must be a function', 2) end
  local coordinator = need('coordinator')
  local reference = nextReference()
  if not track(reference, { kind = 'balance', callback = callback }) then return full(callback, reference) end
  local msg = { Target = coordinator, Action = 'Balance', ['X-Reference'] = reference }
  if account then msg.Tags = { Target = tostring(account) } end
  ao.send(msg)
  return reference
end

--- The coordinator's view of an infer request (its TaskView: status, result, receipt, ...):
--- callback(err, view). An ended request is answered at once from what the client kept.
function verity.getTaskStatus(reference, callback)
  if type(callback) ~= 'function' then error('verity.getTaskStatus: callback must be a function', 2) end
  reference = tostring(reference)
  local record = S.recent[reference]
  local entry = S.pending[reference]
  if record == nil and entry ~= nil and entry.kind == 'infer' then record = { reference = reference, status = entry.task and 'accepted' or 'sent', task = entry.task } end
  if record == nil then return failNow(callback, 404, 'verity: no request ' .. reference .. ' is known to this client', reference) end
  if record.view ~= nil and (record.status == 'final' or record.status == 'failed' or record.status == 'rejected') then
    callback(nil, record.view)
    return reference
  end
  if record.status == 'rejected' or record.status == 'failed' or record.task == nil then
    -- Not accepted yet (or refused): the coordinator has no task to show.
    callback(nil, { reference = reference, status = record.status, task = record.task, code = record.code, message = record.message })
    return reference
  end
  local coordinator = need('coordinator')
  local query = nextReference()
  if not track(query, { kind = 'status', callback = callback, of = reference }) then return full(callback, query) end
  ao.send({ Target = coordinator, Action = 'Task', Task = record.task, ['X-Reference'] = query })
  return query
end

-- ---- answers ----

local function resultOf(msg, reference, view)
  local text = view and view.result or nil
  return {
    data = text,
    result = text,
    reference = reference,
    task = msg.Task or (view and view.task),
    status = msg.Status or (view and view.status),
    session = msg['X-Session'],
    model = view and view.model,
    receipt = view and view.receipt,
    attestation = view and view.receipt,
    usage = view and view.usage,
    audited = view and view.audited,
    corrected = (msg.Corrected == 'true') or (view and view.corrected) or false,
    view = view,
  }
end

local function decodeView(data)
  if type(data) ~= 'string' or data == '' then return nil end
  local ok, view = pcall(json.decode, data)
  if ok and type(view) == 'table' then return view end
  return nil
end

-- What answers each kind of request, per party: Action → { kind of request, handle }.
local ON = { coordinator = {}, token = {} }

ON.coordinator['Infer-Accepted'] = { kind = 'infer', handle = function(msg, reference, entry)
  entry.task = msg.Task
  remember(reference, { reference = reference, status = 'accepted', task = msg.Task, escrow = msg.Escrow })
end }

ON.coordinator['Infer-Response'] = { kind = 'infer', handle = function(msg, reference, entry)
  if msg.Code ~= nil then
    untrack(reference)
    local err = errorOf(msg, reference)
    remember(reference, { reference = reference, status = msg.Status or 'failed', task = msg.Task or entry.task, code = err.code, message = err.message, view = decodeView(msg.Data) })
    if entry.callback then entry.callback(err, nil) end
    return
  end
  local view = decodeView(msg.Data)
  local res = resultOf(msg, reference, view)
  remember(reference, { reference = reference, status = res.status, task = res.task, view = view })
  if msg.Status == 'pending' and entry.wait ~= 'pending' then
    if entry.on_pending and not entry.answered then
      entry.answered = true
      entry.on_pending(res)
    end
    return
  end
  untrack(reference)
  if entry.callback then entry.callback(nil, res) end
end }

ON.coordinator['Balance-Response'] = { kind = 'balance', handle = function(msg, reference, entry)
  untrack(reference)
  entry.callback(nil, { balance = msg.Balance or '0', earnings = msg.Earnings or '0', stake = msg.Stake or '0', locked = msg.Locked or '0', account = msg.Account, reference = reference })
end }

ON.coordinator['Task-Response'] = { kind = 'status', handle = function(msg, reference, entry)
  untrack(reference)
  entry.callback(nil, decodeView(msg.Data) or { task = msg.Task, status = msg.Status })
end }

ON.coordinator['Task-Error'] = { kind = 'status', handle = function(msg, reference, entry)
  untrack(reference)
  -- The task ended between the question and the answer: its last Infer-Response is here already.
  local record = S.recent[entry.of]
  if record and record.view then entry.callback(nil, record.view) else entry.callback(errorOf(msg, entry.of), nil) end
end }

ON.coordinator['Deposit-Notice'] = { kind = 'deposit', handle = function(msg, reference, entry)
  untrack(reference)
  if entry.callback then entry.callback(nil, { quantity = msg.Quantity, balance = msg.Balance, reference = reference }) end
end }

ON.token['Debit-Notice'] = { kind = 'deposit', handle = function(_, _, entry)
  entry.debited = true
end }

ON.token['Transfer-Error'] = { kind = 'deposit', handle = function(msg, reference, entry)
  untrack(reference)
  if entry.callback then entry.callback(errorOf(msg, reference), nil) end
end }

-- Any other refusal (Code, Action *-Error) from the coordinator to one of this client's requests.
local function otherError(msg, reference, entry)
  untrack(reference)
  if entry.callback then entry.callback(errorOf(msg, reference), nil) end
end

--- What handles `msg` as an answer from `party` (the coordinator or the token) to a request of this
--- client: only a message From that process, with the X-Reference of a pending request of the kind
--- its Action answers. Returns handle, reference, entry; or nil.
local function route(msg, party)
  local reference = msg['X-Reference']
  if type(reference) ~= 'string' then return nil end
  local entry = S.pending[reference]
  if entry == nil then return nil end
  local from = party == 'coordinator' and verity.coordinator() or verity.token()
  if from == nil or msg.From ~= from then return nil end
  local on = ON[party][msg.Action]
  if on ~= nil then
    if on.kind ~= entry.kind then return nil end
    -- Once accepted, only answers about that task count.
    if entry.kind == 'infer' and entry.task ~= nil and msg.Task ~= entry.task then return nil end
    return on.handle, reference, entry
  end
  if party == 'coordinator' and msg.Code ~= nil and type(msg.Action) == 'string' and msg.Action:match('%-Error$') then
    return otherError, reference, entry
  end
  return nil
end

local function register(party)
  Handlers.prepend('verity.' .. party, function(msg)
    return route(msg, party) ~= nil and 'break' or false
  end, function(msg)
    local handle, reference, entry = route(msg, party)
    if handle then handle(msg, reference, entry) end
  end)
end

register('token')
register('coordinator')

return verity
