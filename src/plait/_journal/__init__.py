"""Durable runs: the stores that keep a journal of a run's tool calls.

A store only reads and writes records; the engine decides when (see
:mod:`plait._calls._durable` for a run's side and :mod:`plait._calls._journal`
for the layer of the call pipeline). Every store method blocks and is called
on a worker thread, never on the event loop.
"""
