{{/* Names ------------------------------------------------------------------ */}}
{{- define "llm-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-sidecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "llm-sidecar.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "llm-sidecar.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.injector" -}}{{ include "llm-sidecar.fullname" . | trunc 54 | trimSuffix "-" }}-injector{{- end -}}
{{- define "llm-sidecar.gateway" -}}{{ include "llm-sidecar.fullname" . | trunc 55 | trimSuffix "-" }}-gateway{{- end -}}
{{- define "llm-sidecar.indexJob" -}}{{ include "llm-sidecar.fullname" . | trunc 57 | trimSuffix "-" }}-index{{- end -}}
{{- define "llm-sidecar.redis" -}}{{ include "llm-sidecar.fullname" . | trunc 57 | trimSuffix "-" }}-redis{{- end -}}
{{/* The sidecar's ConfigMap and keys Secret keep fixed names: the injector copies them into app namespaces under the same names. */}}
{{- define "llm-sidecar.configMap" -}}llm-sidecar-config{{- end -}}
{{- define "llm-sidecar.keysSecret" -}}{{ .Values.keys.existingSecret | default "llm-sidecar-keys" }}{{- end -}}
{{- define "llm-sidecar.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "llm-sidecar.indexImage" -}}{{ .Values.indexJob.image.repository | default .Values.image.repository }}:{{ .Values.indexJob.image.tag | default .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "llm-sidecar.injectorImage" -}}{{ .Values.injector.image.repository }}:{{ .Values.injector.image.tag | default .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{/* Labels ----------------------------------------------------------------- */}}
{{- define "llm-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "llm-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "llm-sidecar.selector" -}}
app.kubernetes.io/name: {{ include "llm-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The cache section: Redis when configured, else as given. */}}
{{- define "llm-sidecar.cache" -}}
{{- $cache := deepCopy .Values.config.cache -}}
{{- if .Values.redis.url -}}
{{- $_ := set $cache "backend" "redis" -}}{{- $_ := set $cache "redis_url" .Values.redis.url -}}
{{- else if .Values.redis.enabled -}}
{{- $_ := set $cache "backend" "redis" -}}
{{- $_ := set $cache "redis_url" (printf "redis://%s.%s.svc:6379/0" (include "llm-sidecar.redis" .) .Release.Namespace) -}}
{{- end -}}
{{- toYaml $cache -}}
{{- end -}}

{{/* The sidecar configuration file; host is 127.0.0.1 for the sidecar, 0.0.0.0 for the gateway. */}}
{{- define "llm-sidecar.configFile" -}}
{{- $root := index . 0 -}}{{- $host := index . 1 -}}
{{- $server := deepCopy $root.Values.config.server -}}
{{- $_ := set $server "host" $host -}}
{{- $_ := set $server "port" (int $root.Values.sidecar.proxyPort) -}}
{{- $_ := set $server "admin_host" "0.0.0.0" -}}
{{- $_ := set $server "admin_port" (int $root.Values.sidecar.adminPort) -}}
{{- $groups := deepCopy $root.Values.config.modelGroups -}}
{{- if eq $root.Values.keys.mode "files" -}}
{{- range $g := values $groups -}}
{{- $endpoints := $g.endpoints | default list -}}
{{- if and $g.discover $g.discover.endpoint -}}{{- $endpoints = append $endpoints $g.discover.endpoint -}}{{- end -}}
{{- range $e := $endpoints -}}
{{- if hasKey $e "api_key_env" -}}
{{- $_ := set $e "api_key_file" (printf "/var/run/secrets/llm-sidecar/keys/%s" $e.api_key_env) -}}
{{- $_ := unset $e "api_key_env" -}}
{{- end -}}
{{- end -}}{{- end -}}
{{- end -}}
{{- $file := dict "server" $server "model_groups" $groups "cache" (include "llm-sidecar.cache" $root | fromYaml) "telemetry" $root.Values.config.telemetry -}}
{{- toYaml (merge $file $root.Values.config.extra) -}}
{{- end -}}

{{/* The sidecar settings the injector uses (SidecarSettings.from_mapping). */}}
{{- define "llm-sidecar.injectorSettings" -}}
sidecar:
  image: {{ include "llm-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  configMap: {{ include "llm-sidecar.configMap" . }}
  keysMode: {{ .Values.keys.mode }}
  keysSecret: {{ include "llm-sidecar.keysSecret" . }}
  proxyPort: {{ .Values.sidecar.proxyPort }}
  adminPort: {{ .Values.sidecar.adminPort }}
  nativeSidecar: {{ .Values.sidecar.nativeSidecar }}
  resources: {{- toYaml .Values.sidecar.resources | nindent 4 }}
  runAsUser: {{ .Values.sidecar.runAsUser }}
  setBaseUrls: {{ .Values.sidecar.setBaseUrls }}
  scrapeAnnotations: {{ .Values.sidecar.scrapeAnnotations }}
  extraEnv: {{- toYaml .Values.sidecar.extraEnv | nindent 4 }}
  ownNamespace: {{ .Release.Namespace }}
  allowImageOverride: {{ .Values.sidecar.allowImageOverride }}
{{- end -}}

{{- define "llm-sidecar.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.sidecar.runAsUser }}
runAsGroup: {{ .Values.sidecar.runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
