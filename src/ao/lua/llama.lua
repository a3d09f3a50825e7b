-- aos-llama: text generated inside a process's own evaluation, the same on every CU.
--   local llama = require('llama')
--   llama.load(modelId)        -- a model of the store, by id (checked against the id)
--   llama.setPrompt(text)      -- the context: BOS and the prompt's tokens
--   llama.run(n)               -- up to n more tokens (greedy); returns their text
--   llama.next()               -- one more token's text
--   llama.text()               -- all the text so far, the prompt's included (what `verity run` prints)
-- The context lives in the process (its memory image keeps it); each call hands it to the CU's host
-- functions (llama.info / llama.encode / llama.generate), which are pure functions of it and
-- charge the work against the message's compute limit. A module gets them with `Extension: Llama`.
package.preload['llama'] = function()
  local json = require('json')
  local llama = {}
  local current = nil

  local function call(name, argument)
    return json.decode(__verity_host(name, json.encode(argument)))
  end

  local function loaded()
    if current == nil then error('llama: load a model first (llama.load(modelId))', 3) end
    return current
  end

  function llama.load(modelId)
    if type(modelId) ~= 'string' then error('llama.load: a model id (64 hex characters)', 2) end
    local info = call('llama.info', { model = modelId })
    current = { model = modelId, info = info, tokens = { info.bos }, text = '' }
    return info
  end

  function llama.setPrompt(text)
    local c = loaded()
    if type(text) ~= 'string' then error('llama.setPrompt: text', 2) end
    local encoded = call('llama.encode', { model = c.model, text = text })
    c.tokens, c.text = encoded.tokens, encoded.text
  end

  function llama.run(n)
    local c = loaded()
    n = n or 1
    if math.type(n) ~= 'integer' or n < 1 then error('llama.run: n must be a whole number of tokens, 1 or more', 2) end
    local out = call('llama.generate', { model = c.model, tokens = c.tokens, n = n })
    for _, token in ipairs(out.tokens) do c.tokens[#c.tokens + 1] = token end
    c.text = c.text .. out.text
    return out.text
  end

  function llama.next() return llama.run(1) end

  function llama.text() return loaded().text end

  function llama.tokens()
    local copy = {}
    for i, t in ipairs(loaded().tokens) do copy[i] = t end
    return copy
  end

  return llama
end
