"""Limiters, token buckets, wake-ups, worker threads and task-group helpers.

The only layer that knows which event loop (asyncio, uvloop, Trio) it runs on.
"""
