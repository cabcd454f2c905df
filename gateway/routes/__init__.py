"""The gateway's routers, one module per group of endpoints.

``predict`` (one slice), ``study`` (a series), ``health`` (liveness, readiness, models,
metrics), ``page`` (the web page) and ``admin`` (the served version); ``gateway.app``
includes them all.
"""
