-- wrk: POST unique DSMR 5 telegrams (phases, gas, ~750 bytes, valid CRC-16/ARC) to the v1 API.
-- Env: TPL (telegram template), TS_BASE (first P1 time as an epoch of the meter's winter wall clock,
-- i.e. UTC + 3600), METER (equipment id; one per run keeps runs apart), AUTHKEY, NTHREADS (= wrk -t).
-- Each request is the next second of the meter; threads interleave so no timestamp repeats.
local bit = require("bit")
local f = io.open(os.getenv("TPL"), "rb"); local TPL = f:read("*a"); f:close()
local BASE = tonumber(os.getenv("TS_BASE"))
local KEY = os.getenv("AUTHKEY")
local NTHREADS = tonumber(os.getenv("NTHREADS") or "1")
local METER_HEX = (os.getenv("METER") or "BENCH"):gsub(".", function(c) return string.format("%02X", c:byte()) end)

local CRC = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if bit.band(c, 1) == 1 then c = bit.bxor(bit.rshift(c, 1), 0xA001) else c = bit.rshift(c, 1) end
  end
  CRC[i] = c
end
local function crc16(s)
  local c = 0
  for i = 1, #s do c = bit.bxor(CRC[bit.band(bit.bxor(c, s:byte(i)), 0xFF)], bit.rshift(c, 8)) end
  return c
end
local function urlencode(s)
  return (s:gsub("[^%w]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

local threads = {}
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid); next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args) n = 0; statuses = {} end

function request()
  local seq = tid + n * NTHREADS
  n = n + 1
  local t = BASE + seq
  local tel = TPL:gsub("@ID@", METER_HEX)
    :gsub("@TS@", os.date("!%y%m%d%H%M%S", t) .. "W")
    :gsub("@GTS@", os.date("!%y%m%d%H%M", t - (t % 300)) .. "00W")
    :gsub("@E1@", string.format("%010.3f", 1000 + seq * 0.001))
    :gsub("@E2@", string.format("%010.3f", 2000 + seq * 0.0005))
    :gsub("@R1@", string.format("%010.3f", 10.0)):gsub("@R2@", string.format("%010.3f", 20.0))
    :gsub("@CD@", string.format("%06.3f", 1.0 + (seq % 1000) / 1000))
  tel = tel .. string.format("%04X", crc16(tel)) .. "\r\n"
  return wrk.format("POST", "/api/v1/datalogger/dsmrreading",
    {["X-AUTHKEY"] = KEY, ["Content-Type"] = "application/x-www-form-urlencoded"}, "telegram=" .. urlencode(tel))
end

function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end

function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do counts[k] = (counts[k] or 0) + v end
  end
  io.write("STATUS")
  for k, v in pairs(counts) do io.write(string.format(" %s=%d", k, v)) end
  io.write("\n")
  io.write(string.format("RESULT requests=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f errors=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout))
end
