-- wrk script: send requests from a file, "<path>\t<json body>" per line, each thread its own slice, in a
-- loop; every request carries the Authorization header given as the second argument (ingest needs it,
-- callbacks ignore it).
local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local file, auth = args[1], args[2]
  requests = {}
  local n = 0
  for line in io.lines(file) do
    local path, body = line:match("^([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format(
      "POST", path, {["Content-Type"] = "application/json", ["Authorization"] = auth}, body
    )
    n = n + 1
  end
  position = 0
end

function request()
  position = position % #requests + 1
  return requests[position]
end
