"""The foundation every feature builds on; it imports no feature.

Errors, settings, the bound app, key names, the Redis client and its Lua
scripts, connection state, the observer guard, deadlines, redaction, small
strategies.
"""
