-- login.lua at a fixed offered rate: each thread sends its share of <rate> sign-ins a second on
-- a schedule of its own, whatever the answers take (an open loop, as a crowd signing in is),
-- with at most one request in flight per connection.
--
-- wrk <url> -s login_paced.lua -- <pairs file> <threads> <origin> <rate per second>
--
-- wrk asks delay() before each request, without saying for which connection: each call takes
-- the thread's next slot (every T/<rate> s) and waits until it. When every connection is busy
-- at a slot, that request goes late, as soon as one is free; how many went more than 5 ms late
-- is reported, since wrk times a request from its sending, not from its slot.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "login.lua")
local login_setup, login_init, login_done = setup, init, done
local threads = {}

function setup(thread)
  login_setup(thread)
  table.insert(threads, thread)
end

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local LATE_MS = 5
local clock = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

function init(args)
  login_init({ args[1], args[2], args[3] })
  local total_threads = tonumber(args[2])
  rate = tonumber(args[4])
  spacing_ms = 1000 * total_threads / rate
  -- The threads' schedules interleave rather than coincide.
  next_slot = now_ms() + spacing_ms * thread_index / total_threads
  slots, late, max_late_ms = 0, 0, 0
end

function delay()
  local now, slot = now_ms(), next_slot
  next_slot = next_slot + spacing_ms
  slots = slots + 1
  if slot >= now then
    return math.floor(slot - now + 0.5)
  end
  if now - slot > LATE_MS then
    late = late + 1
  end
  max_late_ms = math.max(max_late_ms, now - slot)
  return 0
end

function done(summary, latency, requests)
  login_done(summary, latency, requests)
  local offered, slots_total, late_total, max_late = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    offered = thread:get("rate")
    slots_total = slots_total + thread:get("slots")
    late_total = late_total + thread:get("late")
    max_late = math.max(max_late, thread:get("max_late_ms"))
  end
  io.write(string.format(
    'BENCH_PACED {"rate": %.1f, "slots": %d, "late_over_%dms": %d, "max_late_ms": %.1f}\n',
    offered, slots_total, LATE_MS, late_total, max_late))
end
