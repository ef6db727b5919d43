-- Save a new version of a reply policy, keeping the newest ones.
-- KEYS: the policy's hash. ARGV: the version's document (JSON), how many versions to keep.
-- Returns the new version's number.
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], tostring(version), ARGV[1])
local oldest = version - tonumber(ARGV[2])
if oldest >= 1 then redis.call('HDEL', KEYS[1], tostring(oldest)) end
return version
