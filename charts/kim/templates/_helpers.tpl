{{/* Release-scoped name: the release name, with "-kim" appended unless it already says kim. */}}
{{- define "kim.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kim.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kim.labels" -}}
{{ include "kim.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kim.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "kim.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kim.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

{{/* Name of the Secret holding the Redis URL for MatchingIndexes (key "url"). */}}
{{- define "kim.redisSecret" -}}
{{- default (printf "%s-redis" (include "kim.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}

{{/* The Redis URL the chart writes into its Secret: redis.url, else the demo Redis. */}}
{{- define "kim.redisURL" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.deploy -}}
{{- printf "redis://%s-redis.%s.svc:6379" (include "kim.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Fails the render with a clear message on contradictory values (types, ranges and unknown
    keys are checked by values.schema.json before any template runs). */}}
{{- define "kim.validate" -}}
{{- if and .Values.redis.existingSecret .Values.redis.url -}}
{{- fail "set at most one of redis.url and redis.existingSecret" -}}
{{- end -}}
{{- if and .Values.redis.url (not (regexMatch "^rediss?://" .Values.redis.url)) -}}
{{- fail (printf "redis.url must start with redis:// or rediss://, got %q" .Values.redis.url) -}}
{{- end -}}
{{- end -}}
