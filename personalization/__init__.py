"""Core: what every layer shares. API keys and access, errors, the Redis client and keys, the one Lua script
mechanism, the hot path's item type, live-update topics, embedded servers, health, the process caches' registry.
"""
