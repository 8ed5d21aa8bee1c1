-- wrk script: replays pre-generated, pre-signed fal webhooks in file order (one wrk thread).
-- Usage: wrk -t1 -s bench/webhooks.lua URL -- REQUESTS_FILE
-- Each line of REQUESTS_FILE: path <TAB> request id <TAB> timestamp <TAB> signature <TAB> body
-- Prints "BENCH sent=N accepted=N duplicate=N other=N" at the end.

local requests = {}
local threads = {}
sent, accepted, duplicate, other = 0, 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local path, rid, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {
      ["Content-Type"] = "application/json",
      ["X-Fal-Webhook-Request-Id"] = rid,
      ["X-Fal-Webhook-User-Id"] = "avatar-api-simulator",
      ["X-Fal-Webhook-Timestamp"] = ts,
      ["X-Fal-Webhook-Signature"] = sig,
    }
    requests[#requests + 1] = wrk.format("POST", path, headers, body)
  end
end

function request()
  sent = sent + 1
  return requests[((sent - 1) % #requests) + 1]
end

function response(status, headers, body)
  if status == 200 and body:find('"accepted"', 1, true) then
    accepted = accepted + 1
  elseif status == 200 and body:find('"duplicate"', 1, true) then
    duplicate = duplicate + 1
  else
    other = other + 1
  end
end

function done(summary, latency, reqs)
  for _, t in ipairs(threads) do
    print(string.format("BENCH sent=%d accepted=%d duplicate=%d other=%d",
      t:get("sent"), t:get("accepted"), t:get("duplicate"), t:get("other")))
  end
end
