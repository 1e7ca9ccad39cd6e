--[[ deadletter_trim: enforce the retention of jobs:dead_letter.

Entries are newest first, so the oldest are at the tail. This walks up to
ARGV[2] entries from the tail, drops those failed before ARGV[1] and stops
at the first younger one. Entries whose age cannot be read (not JSON, no
failed_at) are kept, in their order, and returned: the caller moves them to
the quarantine. Then the list is capped at ARGV[3] entries (the oldest
beyond the cap go).

KEYS[1]  jobs:dead_letter
ARGV[1]  cutoff (epoch seconds): entries that failed before it are expired
ARGV[2]  most entries to examine in this call
ARGV[3]  most entries the list keeps
Returns  {expired removed, removed by the cap, "1" if the walk stopped early at ARGV[2],
          the unreadable entries walked past ...}
]]
local function epoch_of(iso)
  if type(iso) ~= "string" then return nil end
  local y, m, d, hh, mm, ss = string.match(iso, "^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
  if not y then return nil end
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  -- days from civil (proleptic Gregorian), 1970-01-01 = 0
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end

local cutoff, budget, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local len = redis.call("LLEN", KEYS[1])
local kept = {}     -- unreadable entries passed on the way, oldest first
local walked = 0    -- entries from the tail that are expired or unreadable
local expired = 0
local more = "0"
while walked < len do
  if walked >= budget then more = "1"; break end
  local raw = redis.call("LINDEX", KEYS[1], -1 - walked)
  local ok, entry = pcall(cjson.decode, raw)
  local at = nil
  if ok and type(entry) == "table" then at = epoch_of(entry.failed_at) end
  if at == nil then
    table.insert(kept, raw)
  elseif at < cutoff then
    expired = expired + 1
  else
    break
  end
  walked = walked + 1
end
if expired > 0 then
  redis.call("LTRIM", KEYS[1], 0, -1 - walked)
  for i = #kept, 1, -1 do
    redis.call("RPUSH", KEYS[1], kept[i])
  end
end

local capped = 0
len = redis.call("LLEN", KEYS[1])
if len > cap then
  redis.call("LTRIM", KEYS[1], 0, cap - 1)
  capped = len - cap
end
local out = {expired, capped, more}
for _, raw in ipairs(kept) do
  table.insert(out, raw)
end
return out
