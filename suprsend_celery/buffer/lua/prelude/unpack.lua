-- UNPACK_MAX: Lua's unpack() has a stack limit, so variadic calls take at most this many
local UNPACK_MAX = 1000
