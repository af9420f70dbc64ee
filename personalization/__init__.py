"""Core: what every layer shares. API keys and access, errors, the Redis client, its keys and the one Lua script
mechanism, embedded servers, health, the registry of process caches, and the run command.
"""
