-- wrk script for loadtests.http_bench: POST pre-made JSON bodies, count what the server says.
--
--   wrk -t T -c C -d D -s payments.lua URL -- BODIES_PREFIX MODE T
--
-- Thread i (0-based) reads BODIES_PREFIX .. "." .. i: one JSON request body per line.
-- MODE:
--   trivial  the file holds one body, sent again and again (the trivial endpoint keeps nothing);
--            a 200 whose body has "result":"ok" counts as ok.
--   single   one signed payment per line, each sent once, in order; the body of a 200 must have
--            "result":"ok","replayed":false to count as ok ("replayed":true counts as replayed,
--            any other result as refused).
--   batch    {"payments": [...]} per line, each sent once; every item of the answer is counted
--            (ok, replayed, refused), so ok is in payments, not requests.
-- A thread that has sent every body it has stops: signed payments are never reused to pad the
-- figures (the request in hand when it stops repeats its last body and, if answered, is counted
-- as replayed; exhausted_threads says it happened).
--
-- done() prints one line "HTTP_BENCH_JSON {...}" that loadtests.http_bench parses: requests,
-- duration, latency percentiles (microseconds) and the counts summed over the threads.

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("tid", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

-- per-thread globals (read by done() through thread:get)
ok = 0
replayed = 0
refused = 0
non200 = 0
exhausted = 0
sent = 0

local bodies = {}
local count = 0
local index = 0
local mode = "single"
local headers = { ["Content-Type"] = "application/json" }
local OK_MARK = '"result":"ok","replayed":false'

function init(args)
   local prefix = args[1]
   mode = args[2] or "single"
   local file = assert(io.open(prefix .. "." .. tid, "r"))
   for line in file:lines() do
      if #line > 0 then
         count = count + 1
         bodies[count] = line
      end
   end
   file:close()
   assert(count > 0, "no bodies for thread " .. tid)
end

function request()
   index = index + 1
   if index > count then
      if mode == "trivial" then
         index = 1
      else
         exhausted = 1
         index = count
         wrk.thread:stop()
      end
   end
   sent = sent + 1
   local body = bodies[index]
   if mode ~= "trivial" and index < count then
      bodies[index] = nil -- each body goes once; free it (the last stays, see above)
   end
   return wrk.format("POST", nil, headers, body)
end

local function count_plain(text, mark)
   local n, start = 0, 1
   while true do
      local at = string.find(text, mark, start, true)
      if at == nil then
         return n
      end
      n = n + 1
      start = at + #mark
   end
end

function response(status, _, body)
   if status ~= 200 then
      non200 = non200 + 1
      return
   end
   if mode == "trivial" then
      if string.find(body, '"result":"ok"', 1, true) then
         ok = ok + 1
      else
         refused = refused + 1
      end
   elseif mode == "single" then
      if string.find(body, OK_MARK, 1, true) then
         ok = ok + 1
      elseif string.find(body, '"replayed":true', 1, true) then
         replayed = replayed + 1
      else
         refused = refused + 1
      end
   else
      local items = count_plain(body, '"result":"')
      local good = count_plain(body, OK_MARK)
      local again = count_plain(body, '"replayed":true')
      ok = ok + good
      replayed = replayed + again
      refused = refused + items - good - again
   end
end

function done(summary, latency, _)
   local totals = { ok = 0, replayed = 0, refused = 0, non200 = 0, exhausted = 0, sent = 0 }
   for _, thread in ipairs(threads) do
      for name, _ in pairs(totals) do
         totals[name] = totals[name] + (thread:get(name) or 0)
      end
   end
   local e = summary.errors
   io.write(string.format(
      'HTTP_BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"ok":%d,"replayed":%d,"refused":%d,"non200":%d,"exhausted_threads":%d,'
         .. '"sent":%d,"threads":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout,
      totals.ok, totals.replayed, totals.refused, totals.non200, totals.exhausted,
      totals.sent, #threads))
end
