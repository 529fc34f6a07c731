"""Pure data: steps, expressions, tools, policies, errors, paths, results, events.

Nothing here knows about an event loop; every other layer builds on it.
"""
