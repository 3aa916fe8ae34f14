{{/* Contradictions in values fail the render with a message that says how to fix them. */}}
{{- define "llm-sidecar.validate" -}}
{{- $v := .Values -}}
{{- if and $v.redis.enabled $v.redis.url -}}
{{- fail "redis.enabled (in-chart Redis) and redis.url (external Redis) contradict each other: set only one" -}}
{{- end -}}
{{- if and $v.keys.existingSecret $v.keys.create -}}
{{- fail "keys.existingSecret and keys.create contradict each other: name an existing Secret or list keys to create, not both" -}}
{{- end -}}
{{- if and (eq $v.keys.mode "passthrough") (or $v.keys.existingSecret $v.keys.create) -}}
{{- fail "keys.mode=passthrough uses the apps' own credentials: remove keys.existingSecret / keys.create, or set keys.mode to env or files" -}}
{{- end -}}
{{- if eq (int $v.sidecar.proxyPort) (int $v.sidecar.adminPort) -}}
{{- fail "sidecar.proxyPort and sidecar.adminPort must differ" -}}
{{- end -}}
{{- range $name, $group := $v.config.modelGroups -}}
{{- if and $group.discover $group.discover.service (not $v.discovery.clientNamespaces) (not $v.gateway.enabled) -}}
{{- fail (printf "config.modelGroups.%s.discover reads EndpointSlices: list the namespaces of the pods that use it in discovery.clientNamespaces (their service accounts get read access), or use discover.dns" $name) -}}
{{- end -}}
{{- end -}}
{{- if and (not $v.injector.enabled) (not $v.gateway.enabled) -}}
{{- fail "injector.enabled and gateway.enabled are both false: nothing would route calls; enable one of them" -}}
{{- end -}}
{{- if and $v.gateway.enabled $v.gateway.autoscaling.enabled (gt (int $v.gateway.autoscaling.minReplicas) (int $v.gateway.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling.minReplicas is greater than maxReplicas" -}}
{{- end -}}
{{- if and $v.gateway.enabled $v.gateway.pdb.enabled (not $v.gateway.autoscaling.enabled) (ge (int $v.gateway.pdb.minAvailable) (int $v.gateway.replicas)) -}}
{{- fail "gateway.pdb.minAvailable must be lower than gateway.replicas, or no node could ever be drained" -}}
{{- end -}}
{{- if and (eq $v.webhook.failurePolicy "Fail") (lt (int $v.injector.replicas) 2) -}}
{{- fail "webhook.failurePolicy=Fail with a single injector replica blocks every pod creation while it restarts: set injector.replicas >= 2 or keep failurePolicy Ignore" -}}
{{- end -}}
{{- if and $v.webhook.certManager.issuerRef (not $v.webhook.certManager.enabled) -}}
{{- fail "webhook.certManager.issuerRef is set but webhook.certManager.enabled is false: enable cert-manager or remove the issuerRef" -}}
{{- end -}}
{{- if $v.indexJob.enabled -}}
{{- $vector := list -}}
{{- range $name, $corpus := (($v.config.extra.retrieval | default dict).corpora | default dict) -}}
{{- if and (kindIs "map" $corpus) (has $corpus.mode (list "dense" "hybrid")) -}}{{- $vector = append $vector $name -}}{{- end -}}
{{- end -}}
{{- if not $vector -}}
{{- fail "indexJob.enabled: the sidecar config has no corpus to index; give config.extra.retrieval.corpora.NAME mode dense or hybrid (and a vector_store), or disable the Job" -}}
{{- end -}}
{{- range $v.indexJob.corpora -}}
{{- if not (has . $vector) -}}
{{- fail (printf "indexJob.corpora: %s is not a dense or hybrid corpus of config.extra.retrieval.corpora (those are: %s)" . (join ", " $vector)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $v.redis.storage (not $v.redis.enabled) -}}
{{- fail "redis.storage only applies to the in-chart Redis: set redis.enabled=true or remove redis.storage" -}}
{{- end -}}
{{- end -}}
