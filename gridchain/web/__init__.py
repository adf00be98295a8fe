"""The operator's web dashboard, Prometheus metrics and alerts of one node.

``server`` answers HTTP on the operator listener (the page, a JSON API, server-sent events,
``/metrics``) from a view of the node, as gridchain.api does for the msgpack operator API;
``metrics`` is the node's prometheus_client registry and the calls that feed it; ``alerts``
decides, from observations with the time as an argument, which alerts are raised and
cleared. The node builds them and mounts them; nothing here imports the node.
"""
