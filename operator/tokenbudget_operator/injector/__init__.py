"""The pod injector: the mutating admission webhook that adds the sidecar to opted-in pods.

handlers.py (kopf startup and the admission handler) → injection.py (the pure decision and JSON patch),
server.py + certs.py (the TLS listener and its rotating certificate), webhookconfig.py (the
MutatingWebhookConfiguration it may own), metrics.py. Never imports the reconciler.
"""
