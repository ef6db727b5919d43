-- wrk script: send pre-signed callbacks from a file, each exactly once per run (threads take disjoint
-- slices). Lines: "<path with hwSecret/hwTime>\t<json body>".
local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local file, count, auth = args[1], tonumber(args[2]), args[3]
  local headers = {["Content-Type"] = "application/json"}
  if auth then
    headers["Authorization"] = auth  -- a third argument: the header ingest needs (benchmarks/redis_ha)
  end
  requests = {}
  local n = 0
  for line in io.lines(file) do
    if n % count == index then
      local path, body = line:match("^([^\t]*)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", path, headers, body)
    end
    n = n + 1
  end
  position = 0
end

function request()
  position = position + 1
  if position > #requests then
    wrapped = true
    position = 1
  end
  return requests[position]
end
