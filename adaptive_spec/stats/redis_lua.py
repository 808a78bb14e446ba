"""The flush script: how a batch of counters is merged into Redis, atomically, for every writer alike.

Per key it mirrors :meth:`Counters.absorb` (tests compare the two): check the stored hash with the same rules as
:meth:`Counters.from_fields` (replace it if invalid), decay it by the batch's tokens and the server time since
its last update, using the half-lives stored in the key (set by its first writer), add the batch, refresh the
TTL. The writer's sequence number makes a resent batch a no-op.
"""

from __future__ import annotations

# KEYS: writer key, then one key per batch entry.
# ARGV: schema, seq, ttl_ms, then per key: half_life_tokens (0: none), half_life_seconds (0: none),
#       field count, field, value, field, value, ...
# Returns {1, {}, {}} for a sequence number already applied, else {0, replaced, mismatched} with the 1-based
# positions of keys whose stored value was invalid (and replaced) or whose stored half-lives differ from ours.
FLUSH_LUA = r"""
local function num(s)
  if type(s) ~= 'string' then return nil end
  if not (string.match(s, '^%d+%.?%d*$') or string.match(s, '^%d+%.?%d*[eE][%+%-]?%d+$')) then return nil end
  local x = tonumber(s)
  if x == nil or x ~= x or x == math.huge then return nil end
  return x
end
local function not_decayed(name)
  return name == 'updated_at' or name == 'half_life_tokens' or name == 'half_life_seconds'
    or string.sub(name, 1, 6) == 'total_'
end
local function at_most(h, small, big)
  local s, b = h[small] or 0, h[big] or 0
  return s <= b * (1 + 1e-6) + 1e-6
end
local function consistent(h)
  if not (at_most(h, 'empty_rounds', 'rounds') and at_most(h, 'accepted_tokens', 'draft_tokens')
      and at_most(h, 'request_alpha_sum', 'requests')
      and at_most(h, 'request_alpha_sq_sum', 'request_alpha_sum') and at_most(h, 'request_inv_tokens_sum', 'requests')
      and at_most(h, 'total_accepted_tokens', 'total_draft_tokens')) then return false end
  if (h['requests_low'] or 0) + (h['requests_high'] or 0) > (h['requests'] or 0) * (1 + 1e-6) + 1e-6 then
    return false
  end
  for j = 1, 64 do
    if not at_most(h, 'accepted_' .. j, 'tried_' .. j) then return false end
  end
  return true
end

local schema, seq, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local wtype = redis.call('TYPE', KEYS[1]).ok
if wtype == 'string' then
  local last = num(redis.call('GET', KEYS[1]))
  if last ~= nil and last >= seq then return {1, {}, {}} end
elseif wtype ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local replaced, mismatched = {}, {}
local i = 4
for k = 2, #KEYS do
  local key = KEYS[k]
  local batch = {}
  local my_hlt, my_hls, nf = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  for _ = 1, nf do batch[ARGV[i]] = tonumber(ARGV[i + 1]); i = i + 2 end
  local old, valid, stored_schema = {}, true, nil
  local ktype = redis.call('TYPE', key).ok
  if ktype == 'hash' then
    local flat = redis.call('HGETALL', key)
    for j = 1, #flat, 2 do
      local name, text = flat[j], flat[j + 1]
      if name == 'schema' then
        stored_schema = text
      else
        local x = num(text)
        if x == nil then valid = false else old[name] = x end
      end
    end
    if stored_schema ~= schema or old['updated_at'] == nil or not consistent(old) then valid = false end
  elseif ktype ~= 'none' then
    valid = false
  end
  if not valid then
    redis.call('DEL', key)
    old = {}
    table.insert(replaced, k - 1)
  end
  local hlt, hls = my_hlt, my_hls
  if old['updated_at'] ~= nil then
    hlt, hls = old['half_life_tokens'] or 0, old['half_life_seconds'] or 0
    if hlt ~= my_hlt or hls ~= my_hls then table.insert(mismatched, k - 1) end
    local e = 0
    if hlt > 0 then e = e + (batch['total_tokens'] or 0) / hlt end
    if hls > 0 and now > old['updated_at'] then e = e + (now - old['updated_at']) / hls end
    if e > 0 then
      local f = 2 ^ (-e)
      for name, x in pairs(old) do
        if not not_decayed(name) then old[name] = x * f end
      end
    end
    if old['updated_at'] > now then now = old['updated_at'] end
  end
  for name, x in pairs(batch) do old[name] = (old[name] or 0) + x end
  old['updated_at'], old['half_life_tokens'], old['half_life_seconds'] = now, hlt, hls
  local args = {'schema', schema}
  for name, x in pairs(old) do
    args[#args + 1] = name
    args[#args + 1] = string.format('%.15g', x)
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttl)
end
redis.call('SET', KEYS[1], seq, 'PX', ttl)
return {0, replaced, mismatched}
"""
