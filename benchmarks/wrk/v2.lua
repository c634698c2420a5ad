-- wrk: POST v2 JSON readings (all DSMR 5 fields, as a datalogger sends them) to the v2 API.
-- Env: TS_BASE (UTC epoch of the first reading), METER, AUTHKEY, NTHREADS (= wrk -t).
local BASE = tonumber(os.getenv("TS_BASE"))
local KEY = os.getenv("AUTHKEY")
local METER = os.getenv("METER") or "BENCH"
local NTHREADS = tonumber(os.getenv("NTHREADS") or "1")
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
  local body = string.format('{"meter":"%s","timestamp":"%s","electricity_currently_delivered":"%.3f",'
    .. '"electricity_currently_returned":"0.000","electricity_delivered_1":"%.3f","electricity_returned_1":"10.000",'
    .. '"electricity_delivered_2":"%.3f","electricity_returned_2":"20.000","phase_currently_delivered_l1":"0.401",'
    .. '"phase_currently_delivered_l2":"0.402","phase_currently_delivered_l3":"0.403","phase_voltage_l1":"230.1",'
    .. '"phase_voltage_l2":"230.2","phase_voltage_l3":"230.3","phase_power_current_l1":1,"phase_power_current_l2":2,'
    .. '"phase_power_current_l3":3,"extra_device_timestamp":"%s","extra_device_delivered":"%.3f"}',
    METER, os.date("!%Y-%m-%dT%H:%M:%SZ", t), 1.0 + (seq % 1000) / 1000, 1000 + seq * 0.001, 2000 + seq * 0.0005,
    os.date("!%Y-%m-%dT%H:%M:00Z", t - (t % 300)), 500 + seq * 0.0001)
  return wrk.format("POST", "/api/v2/datalogger/dsmrreading",
    {["X-AUTHKEY"] = KEY, ["Content-Type"] = "application/json"}, body)
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
