"""Kubernetes delivery: sidecar injection.

- :mod:`proxy.kube.sidecar`    pure: pod + settings → JSONPatch, or reasons to skip
- :mod:`proxy.kube.inject`     ``llm-sidecar inject``: the same mutation applied to YAML offline
- :mod:`proxy.kube.webhook`    ``llm-sidecar webhook``: AdmissionReview v1 over TLS
- :mod:`proxy.kube.namespaces` keeps the sidecar ConfigMap and keys Secret in opted-in namespaces
  (the only importer of the ``kubernetes`` client; only the webhook imports it)
"""
