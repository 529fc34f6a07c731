"""plait's private implementation; import from :mod:`plait` instead."""
