-- Argo CD health of a tokenbudget.io ThinkTier, from the conditions its operator writes
-- (operator/tokenbudget_operator/reconciler/thinktier_status.py). Lua 5.1, as Argo CD runs it (gopher-lua).
--   Progressing  no status yet, an older generation observed, or sidecars still taking the new tiers
--   Degraded     Ready=False for a misconfiguration (TierAboveProviderMax, TierAboveOutputCap, ...)
--   Healthy      measuring; TruncationHigh and UnderUsed are advice (a recommendation in status), named in
--                the message, not a failure of the resource
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local generation = obj.metadata.generation
local observed = obj.status ~= nil and obj.status.observedGeneration or nil
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator's Ready condition"
  return hs
end
if ready.status ~= "True" then
  if ready.reason == "SyncInProgress" then
    hs.status = "Progressing"
  elseif ready.reason == "NoPodsSelected" then
    hs.status = "Healthy"
  else
    hs.status = "Degraded"
  end
  hs.message = text(ready)
  return hs
end

hs.status = "Healthy"
hs.message = text(ready)
for _, kind in ipairs({"TruncationHigh", "UnderUsed"}) do
  local advice = condition(kind)
  if advice ~= nil and advice.status == "True" then
    hs.message = hs.message .. "; " .. kind .. " " .. text(advice)
  end
end
return hs
