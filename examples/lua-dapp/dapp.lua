-- A small dApp on Verity: anyone asks a question, the dApp pays the coordinator for a verified
-- answer from its own deposit, keeps it, and sends it back to whoever asked.
--
--   Ask    (anyone)      Data = the prompt; optional tags Max-Tokens, Temperature, Seed.
--                        → Ask-Accepted { Ref } at once, then Ask-Response { Ref, Task, Status } Data = the text
--                          (or Ask-Error { Ref, Code, Message }).
--   Fund   (owner only)  Quantity = how much of the dApp's tokens to deposit with the coordinator
--                        (send the dApp tokens first: a token Transfer with Recipient = the dApp).
--                        → Fund-Response { Quantity, Balance } or Fund-Error { Code, Message }.
--   Answer (dry-run)     Ref = an Ask's Ref → Answer-Response, Data = JSON { text, task, status, receipt }
--                        or { error = { code, message } }; Status = pending / final / error / unknown.
--
-- Spawn it bundled with the client (package.preload['verity']) and tags Verity-Coordinator and
-- Verity-Token naming the network's processes.
local verity = require('verity')
local json = require('json')

Answers = Answers or {}   -- Ref → { text, task, status, receipt } or { error = { code, message } }
AnswerOrder = AnswerOrder or { first = 1, last = 0 } -- Refs in Answers, oldest first
Received = Received or { count = 0 } -- token Credit-Notices: how many, and the last { sender, quantity }

local MAX_TOKENS = 64
-- Anyone may Ask, so the answers kept are bounded: the oldest are forgotten first.
local MAX_ANSWERS = 1000

local function keep(ref, answer)
  if Answers[ref] == nil then
    AnswerOrder.last = AnswerOrder.last + 1
    AnswerOrder[AnswerOrder.last] = ref
    while AnswerOrder.last - AnswerOrder.first + 1 > MAX_ANSWERS do
      Answers[AnswerOrder[AnswerOrder.first]] = nil
      AnswerOrder[AnswerOrder.first] = nil
      AnswerOrder.first = AnswerOrder.first + 1
    end
  end
  Answers[ref] = answer
end

local function number(value, default)
  if value == nil then return default end
  return math.tointeger(tonumber(value)) or tonumber(value) or default
end

Handlers.add('Ask', function(msg)
  local prompt = msg.Data
  if type(prompt) ~= 'string' or prompt == '' then
    msg.reply({ Action = 'Ask-Error', Code = '400', Message = 'the prompt (Data) is empty' })
    return
  end
  local asker = msg.From
  local options = { max_tokens = number(msg['Max-Tokens'], MAX_TOKENS), temperature = number(msg.Temperature, 0) }
  if msg.Seed ~= nil then options.seed = number(msg.Seed, 0) end
  local ref = verity.infer(prompt, options, function(err, res)
    if err then
      keep(err.reference, { error = { code = err.code, message = err.message } })
      Send({ Target = asker, Action = 'Ask-Error', Ref = err.reference, Code = tostring(err.code), Message = tostring(err.message) })
      return
    end
    keep(res.reference, { text = res.data, task = res.task, status = res.status, receipt = res.receipt })
    Send({ Target = asker, Action = 'Ask-Response', Ref = res.reference, Task = res.task, Status = res.status, Data = res.data })
  end)
  if ref then
    if Answers[ref] == nil then keep(ref, { status = 'pending' }) end
    msg.reply({ Action = 'Ask-Accepted', Ref = ref })
  end
end)

Handlers.add('Fund', function(msg)
  if msg.From ~= Owner then
    msg.reply({ Action = 'Fund-Error', Code = '403', Message = 'only the owner funds the dApp' })
    return
  end
  verity.deposit(msg.Quantity, function(err, res)
    if err then
      Send({ Target = Owner, Action = 'Fund-Error', Code = tostring(err.code), Message = tostring(err.message) })
      return
    end
    Send({ Target = Owner, Action = 'Fund-Response', Quantity = res.quantity, Balance = res.balance })
  end)
end)

Handlers.add('Answer', function(msg)
  local answer = Answers[msg.Ref or '']
  local status = answer == nil and 'unknown' or answer.error and 'error' or answer.status or 'pending'
  msg.reply({ Action = 'Answer-Response', Ref = msg.Ref, Status = status, Data = answer and json.encode(answer) or '' })
end)

-- Tokens sent to the dApp (the owner's Transfer): kept, from the token only.
Handlers.add('Credit-Notice', function(msg)
  if msg.From ~= verity.token() then return end
  Received.count = Received.count + 1
  Received.last = { sender = msg.Sender, quantity = msg.Quantity }
end)

-- The token's answers to the dApp's own transfers (the client already took the ones it asked for).
Handlers.add('Debit-Notice', function() end)
