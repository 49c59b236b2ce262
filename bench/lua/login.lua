-- POST /api/login with a fresh (nonce secret, ID token) pair per request, as a browser would:
-- the secret in a login_nonce_* cookie, the token (whose nonce claim is the secret's hash) in
-- the body, and the service's own Origin.
--
-- wrk <url> -s login.lua -- <pairs file> <threads> <origin> [<first address>]
-- The file has one "cookie token" pair per line (cookie: login_nonce_<id>=<secret>); thread i
-- takes lines i, i+T, i+2T, ... so no pair is sent twice. A thread that runs out stops and
-- reports it (the run is then invalid). With <first address> (a number), line n also carries
-- X-Forwarded-For: the (<first address> + n)th address of 10.0.0.0/8, so each sign-in comes
-- from a client address of its own through a trusted proxy.

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local function address(n)
  n = n % 16777216
  return string.format("10.%d.%d.%d", math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
end

function init(args)
  local path, total, origin = args[1], tonumber(args[2]), args[3]
  local first_address = tonumber(args[4] or "")
  pending = {}
  local line_number = 0
  for line in io.lines(path) do
    if line_number % total == thread_index then
      local cookie, token = line:match("^(%S+)%s+(%S+)$")
      local headers = {
        ["Host"] = wrk.host,
        ["Cookie"] = cookie,
        ["Origin"] = origin,
        ["Content-Type"] = "application/json",
      }
      if first_address ~= nil then
        headers["X-Forwarded-For"] = address(first_address + line_number)
      end
      pending[#pending + 1] =
        wrk.format("POST", "/api/login", headers, '{"credential": "' .. token .. '"}')
    end
    line_number = line_number + 1
  end
  available = #pending
  sent = 0
  exhausted = 0
  statuses = {}
  first_failure = ""
end

function request()
  if sent >= available then
    exhausted = exhausted + 1
    wrk.thread:stop()
    return pending[available]
  end
  sent = sent + 1
  return pending[sent]
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status ~= 200 and first_failure == "" then
    first_failure = key .. " " .. (body or ""):gsub("[\r\n]", " "):sub(1, 300)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, '
      .. '"read": %d, "write": %d, "timeout": %d, "status": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
  local counts, sent_total, available_total, exhausted_total, failure = {}, 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
    sent_total = sent_total + thread:get("sent")
    available_total = available_total + thread:get("available")
    exhausted_total = exhausted_total + thread:get("exhausted")
    if failure == "" then failure = thread:get("first_failure") end
  end
  local parts = {}
  for status, count in pairs(counts) do
    parts[#parts + 1] = string.format('"%s": %d', status, count)
  end
  io.write(string.format(
    'BENCH_LOGIN {"statuses": {%s}, "sent": %d, "available": %d, "exhausted": %d}\n',
    table.concat(parts, ", "), sent_total, available_total, exhausted_total))
  if failure ~= "" then
    io.write("BENCH_FIRST_FAILURE " .. failure .. "\n")
  end
end
