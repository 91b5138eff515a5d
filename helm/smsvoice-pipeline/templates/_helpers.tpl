{{/*
Names and labels.
*/}}
{{- define "smsvoice-pipeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "smsvoice-pipeline.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "smsvoice-pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smsvoice-pipeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "smsvoice-pipeline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "smsvoice-pipeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: stream-processor
{{- end }}

{{- define "smsvoice-pipeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "smsvoice-pipeline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The HTTP port, from config.http.listen ("host:port"). The render fails when
the server is off or listens on loopback only: the probes, the Service and
Prometheus reach the pod on its own address.
*/}}
{{- define "smsvoice-pipeline.httpPort" -}}
{{- $listen := dig "http" "listen" "127.0.0.1:9464" .Values.config | toString }}
{{- if eq $listen "" }}
{{- fail "config.http.listen is empty (HTTP server off): the chart's probes need it; use \"0.0.0.0:9464\"" }}
{{- end }}
{{- if not (regexMatch "^(\\[[0-9A-Fa-f:.]+\\]|[0-9.]+):[0-9]+$" $listen) }}
{{- fail (printf "config.http.listen %q is not IP:port (e.g. \"0.0.0.0:9464\")" $listen) }}
{{- end }}
{{- if or (hasPrefix "127." $listen) (hasPrefix "[::1]" $listen) }}
{{- fail (printf "config.http.listen %q is loopback only: probes and Prometheus cannot reach it in a pod; use \"0.0.0.0:%s\"" $listen (regexFind "[0-9]+$" $listen)) }}
{{- end }}
{{- $port := regexFind "[0-9]+$" $listen | atoi }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "config.http.listen %q: the port must be 1-65535 in a pod (0 picks a random one)" $listen) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
terminationGracePeriodSeconds: longer than [kafka] shutdown_grace_ms (the
time smsvoice takes after SIGTERM to finish the in-flight batch, commit and
leave the group). Derived as ceil(shutdown_grace_ms / 1000) +
terminationGraceMarginSeconds unless set; a value set that is not longer
than the shutdown grace fails the render.
*/}}
{{- define "smsvoice-pipeline.terminationGracePeriodSeconds" -}}
{{- $ms := dig "kafka" "shutdown_grace_ms" 30000 .Values.config | float64 }}
{{- $grace := divf $ms 1000 | ceil | int }}
{{- $set := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $set }}
{{- add $grace (int .Values.terminationGraceMarginSeconds) }}
{{- else if le (int $set) $grace }}
{{- fail (printf "terminationGracePeriodSeconds %d must be longer than config.kafka.shutdown_grace_ms (%d ms = %d s) plus time to exit: Kubernetes would SIGKILL smsvoice before it commits; leave it unset (derived: shutdown grace + terminationGraceMarginSeconds) or raise it" (int $set) (int $ms) $grace) }}
{{- else }}
{{- int $set }}
{{- end }}
{{- end }}

{{/*
TOML rendering of .Values.config. Helm reads every number of the values as
a float64, and toToml writes 6 as "6.0" (and 604800000 as "6.048e+08"),
which smsvoice refuses for its integer keys. These templates write a whole
number as an integer, any other number as a float, strings as TOML basic
strings (JSON escaping is valid TOML), maps as [tables], lists of maps as
[[arrays of tables]], and skip null (so that `key: null` in an override
removes a default).
*/}}
{{- define "smsvoice-pipeline.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "smsvoice-pipeline.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (floor $v) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "smsvoice-pipeline.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- $first := true }}{{ range $k := keys $v | sortAlpha }}{{ $e := index $v $k }}{{ if not (kindIs "invalid" $e) }}{{ if not $first }},{{ end }} {{ include "smsvoice-pipeline.tomlKey" $k }} = {{ include "smsvoice-pipeline.tomlValue" $e }}{{ $first = false }}{{ end }}{{ end }} }
{{- else }}
{{- fail (printf "config: a value of kind %s cannot be written as TOML" (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* A list whose first element is a map: an array of tables. */}}
{{- define "smsvoice-pipeline.tomlIsTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}{{ if kindIs "map" (first .) }}true{{ end }}{{ end }}
{{- end }}

{{/* dict "path" (list of quoted keys) "table" (map) "array" (bool: an element of [[path]]) */}}
{{- define "smsvoice-pipeline.tomlTable" -}}
{{- $path := .path }}
{{- $t := .table }}
{{- $scalars := 0 }}
{{- range $k, $v := $t }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "smsvoice-pipeline.tomlIsTableArray" $v)) }}
{{- $scalars = add1 $scalars }}
{{- end }}
{{- end }}
{{- /* A table holding only tables needs no header of its own (an element of an array of tables does). */}}
{{- if and $path (or .array (gt $scalars 0) (eq (len $t) 0)) }}
{{ if .array }}[[{{ join "." $path }}]]{{ else }}[{{ join "." $path }}]{{ end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := index $t $k }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "smsvoice-pipeline.tomlIsTableArray" $v)) }}
{{ include "smsvoice-pipeline.tomlKey" $k }} = {{ include "smsvoice-pipeline.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := index $t $k }}
{{- $sub := append $path (include "smsvoice-pipeline.tomlKey" $k) }}
{{- if kindIs "map" $v }}
{{ include "smsvoice-pipeline.tomlTable" (dict "path" $sub "table" $v "array" false) }}
{{- else if include "smsvoice-pipeline.tomlIsTableArray" $v }}
{{- range $e := $v }}
{{- if not (kindIs "map" $e) }}
{{- fail (printf "config.%s: a list mixing tables and other values cannot be written as TOML" (join "." $sub)) }}
{{- end }}
{{ include "smsvoice-pipeline.tomlTable" (dict "path" $sub "table" $e "array" true) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "smsvoice-pipeline.configToml" -}}
# Rendered by the smsvoice-pipeline Helm chart from .Values.config
# (README.md "Configuration" documents every key). Secrets are not here:
# they come from mounted Secret files through SMSVOICE_..._FILE variables.
{{- include "smsvoice-pipeline.tomlTable" (dict "path" (list) "table" .Values.config "array" false) }}
{{- end }}
