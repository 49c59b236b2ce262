-- The soak's mixed traffic (bench/soak.py): each request is, at random, a session check
-- (GET /api/user), an admin read (GET /api/admin/users?limit=20), a sign-in (POST /api/login
-- with a fresh nonce cookie and ID token) or a logout (POST /api/logout of a live session).
--
-- wrk <base>/api/user -s soak.lua -- <dir> <threads> <origin> <cookie name> <window s>
--     <start, epoch s> <login share> <logout share> <admin share>
--
-- In <dir>: sessions.txt (the session tokens checks use) and admin.txt (the admin's), written
-- before wrk starts; pairs-<k>.txt ("cookie token" sign-in pairs) and revoke-<k>.txt (session
-- tokens to log out) for each window k of <window s> seconds from <start>, each written whole
-- before its window begins. Thread i of T takes lines i, i+T, ... of each file, so nothing is
-- sent twice. A window's file replaces what is left of the previous one: a nonce cookie is
-- refused 10 minutes after its stamp, so pairs must not linger. When a feed is empty the
-- request becomes a session check, counted in `short`.
--
-- Two limits of wrk shape this script. response() is not told which request it answers (a
-- thread's connections interleave), so each answer is classified by what it is: a 204 is a
-- logout, a body starting {"user": a sign-in, {"results": an admin page, {"id": a session
-- check; anything else is a failure, and more answers of a kind than requests sent of it are
-- counted by bench/soak.py as errors too. And wrk keeps only the last of repeated headers: a
-- sign-in's last Set-Cookie deletes the nonce cookie, so the new session cannot be captured
-- here, which is why bench/soak.py signs in the sessions that logouts revoke.

-- report.lua's done() prints the BENCH_RESULT line bench/wrk.py parses: reuse it.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local print_result = done

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local function lines_of(path)
  local file = io.open(path, "r")
  if file == nil then
    return nil -- not written yet
  end
  local lines = {}
  for line in file:lines() do
    lines[#lines + 1] = line
  end
  file:close()
  return lines
end

local function get(path, token)
  return wrk.format("GET", path, { ["Host"] = wrk.host, ["Cookie"] = cookie_name .. "=" .. token })
end

local function sign_in(line)
  local cookie, token = line:match("^(%S+)%s+(%S+)$")
  return wrk.format("POST", "/api/login", {
    ["Host"] = wrk.host,
    ["Cookie"] = cookie,
    ["Origin"] = origin,
    ["Content-Type"] = "application/json",
  }, '{"credential": "' .. token .. '"}')
end

local function log_out(token)
  return wrk.format("POST", "/api/logout", {
    ["Host"] = wrk.host,
    ["Cookie"] = cookie_name .. "=" .. token,
    ["Origin"] = origin,
  })
end

local function new_feed(name, build)
  return { name = name, build = build, window = -1, queue = {}, next = 1 }
end

-- The next request of a feed, from the current window's file once it is there; nil if none.
local function take(feed)
  local window = math.floor((os.time() - started) / window_seconds)
  if window > feed.window then
    local lines = lines_of(string.format("%s/%s-%d.txt", dir, feed.name, window))
    if lines ~= nil then
      feed.window, feed.queue, feed.next = window, {}, 1
      for index = thread_index + 1, #lines, total_threads do
        feed.queue[#feed.queue + 1] = feed.build(lines[index])
      end
    end
  end
  local request = feed.queue[feed.next]
  if request ~= nil then
    feed.queue[feed.next] = nil
    feed.next = feed.next + 1
  end
  return request
end

function init(args)
  dir, total_threads, origin, cookie_name = args[1], tonumber(args[2]), args[3], args[4]
  window_seconds, started = tonumber(args[5]), tonumber(args[6])
  login_share, logout_share, admin_share = tonumber(args[7]), tonumber(args[8]), tonumber(args[9])
  math.randomseed(started * 16 + thread_index)
  checks = {}
  for _, token in ipairs(lines_of(dir .. "/sessions.txt")) do
    checks[#checks + 1] = get("/api/user", token)
  end
  next_check = thread_index -- the threads start at different sessions
  admin_page = get("/api/admin/users?limit=20", lines_of(dir .. "/admin.txt")[1])
  feeds = { login = new_feed("pairs", sign_in), logout = new_feed("revoke", log_out) }
  sent = { check = 0, admin = 0, login = 0, logout = 0 }
  answered = { check = 0, admin = 0, login = 0, logout = 0 }
  short = { login = 0, logout = 0 }
  statuses = {}
  failures = {} -- "status error_code": count, for answers that are none of the four kinds
  first_failure = ""
end

function request()
  local draw, kind, next_request = math.random(), "check", nil
  if draw < login_share then
    kind, next_request = "login", take(feeds.login)
  elseif draw < login_share + logout_share then
    kind, next_request = "logout", take(feeds.logout)
  elseif draw < login_share + logout_share + admin_share then
    kind, next_request = "admin", admin_page
  end
  if next_request == nil then
    if kind ~= "check" then
      short[kind] = short[kind] + 1
    end
    kind, next_request = "check", checks[next_check % #checks + 1]
    next_check = next_check + 1
  end
  sent[kind] = sent[kind] + 1
  return next_request
end

-- Which kind of request an answer is the expected answer to; nil for any other answer.
local function kind_of(status, body)
  if status == 204 then
    return "logout"
  elseif status ~= 200 then
    return nil
  elseif body:sub(1, 9) == '{"user": ' then
    return "login"
  elseif body:sub(1, 12) == '{"results": ' then
    return "admin"
  elseif body:sub(1, 7) == '{"id": ' then
    return "check"
  end
  return nil
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  body = body or ""
  local kind = kind_of(status, body)
  if kind ~= nil then
    answered[kind] = answered[kind] + 1
    return
  end
  local failure = key .. " " .. (body:match('"error": "([%w_]+)"') or "?")
  failures[failure] = (failures[failure] or 0) + 1
  if first_failure == "" then
    first_failure = failure .. ": " .. body:gsub("[\r\n]", " "):sub(1, 300)
  end
end

-- A flat table of counts as a JSON object (its keys are statuses, kinds and error codes).
local function json_object(counts)
  local parts = {}
  for name, count in pairs(counts) do
    parts[#parts + 1] = string.format('"%s": %d', name, count)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function add_up(name)
  local sums = {}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get(name)) do
      sums[key] = (sums[key] or 0) + count
    end
  end
  return sums
end

function done(summary, latency, requests)
  print_result(summary, latency, requests)
  local fields = {}
  for _, name in ipairs({ "sent", "answered", "short", "statuses", "failures" }) do
    fields[#fields + 1] = string.format('"%s": %s', name, json_object(add_up(name)))
  end
  io.write("BENCH_SOAK {" .. table.concat(fields, ", ") .. "}\n")
  for _, thread in ipairs(threads) do
    local failure = thread:get("first_failure")
    if failure ~= "" then
      io.write("BENCH_FIRST_FAILURE " .. failure .. "\n")
      break
    end
  end
end
